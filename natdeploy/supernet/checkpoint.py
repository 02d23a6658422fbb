"""Supernet checkpoints: natdeploy's own format, and Once-for-All's published files."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from natdeploy.errors import CheckpointError
from natdeploy.fileio import atomic_write_bytes
from natdeploy.space import WIDTHS, stage_widths
from natdeploy.supernet.network import OFAMobileNetV3Supernet

log = logging.getLogger(__name__)

FORMAT = "natdeploy.supernet"
FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "natdeploy.train_state"

# Key spellings that OFA's own loader maps onto each other (older releases named blocks' convs
# "mobile_inverted_conv" and wrapped dynamic layers one level more or less deep).
_ALTERNATES = ((".bn.bn.", ".bn."), (".conv.conv.weight", ".conv.weight"), (".linear.linear.", ".linear."),
               (".linear.", ".linear.linear."), ("bn.", "bn.bn."), ("conv.weight", "conv.conv.weight"))


def cpu_copy(obj: Any) -> Any:
    """A copy of nested dicts, lists and tuples with every tensor copied to the CPU (detached), so that a snapshot
    neither follows later in-place updates nor depends on the device it was taken on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def _write(path: Path, payload: Any) -> Path:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_supernet(supernet: OFAMobileNetV3Supernet, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a natdeploy supernet checkpoint atomically (temporary file, then rename).

    Tensors are stored on the CPU whatever device the supernet is on, so the file loads on any machine.
    """
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "config": supernet.config,
               "state_dict": cpu_copy(supernet.state_dict()), "extra": extra or {}}
    return _write(Path(path), payload)


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a mid-phase training state (``train_epochs``' ``on_checkpoint`` argument) atomically, on the CPU."""
    return _write(Path(path), cpu_copy(state))


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state` (onto the CPU; ``train_epochs`` moves it to its device)."""
    path = Path(path)
    obj = _read(path)
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not a natdeploy training state; it is written by save_training_state")
    return obj


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path to a natdeploy or OFA .pth file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        # torch's own text may advise weights_only=False, which would run the file's code: never relay it
        raise CheckpointError(f"checkpoint {path} could not be read as a PyTorch checkpoint of tensors "
                              f"({type(exc).__name__}); it is truncated, corrupt, or not a .pth/.pt weights file: "
                              "re-download or re-save it") from exc


def checkpoint_extra(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` dict saved with a natdeploy supernet checkpoint ({} for other checkpoints)."""
    obj = _read(Path(path))
    return dict(obj.get("extra") or {}) if isinstance(obj, dict) and obj.get("format") == FORMAT else {}


def load_supernet(path: str | os.PathLike, n_classes: int | None = None,
                  device: str | torch.device | None = None) -> OFAMobileNetV3Supernet:
    """Load a supernet from natdeploy's checkpoint format or from an OFA MobileNetV3 checkpoint.

    When ``n_classes`` differs from the checkpoint's head, the classifier is re-initialised (logged as a warning).
    The file is read onto the CPU (whatever device wrote it), then the supernet moves to ``device`` if given.
    """
    path = Path(path)
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has format version {obj.get('version')}; "
                                  f"this natdeploy reads version {FORMAT_VERSION}")
        cfg, state = dict(obj["config"]), obj["state_dict"]
        ckpt_classes = cfg["n_classes"]
    else:
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"checkpoint {path} holds no state dict of tensors; "
                                  "expected a natdeploy supernet or an OFA MobileNetV3 checkpoint")
        state = _ofa_to_natdeploy_keys(path, state)
        cfg = {"width": _infer_width(path, state), "dropout_rate": 0.1}
        ckpt_classes = _classifier_classes(path, state)
    cfg["n_classes"] = ckpt_classes if n_classes is None else n_classes
    net = OFAMobileNetV3Supernet(**cfg)
    if cfg["n_classes"] != ckpt_classes:
        log.warning("checkpoint %s has a %d-class head; re-initialised the classifier for %d classes",
                    path, ckpt_classes, cfg["n_classes"])
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        state.update({k: v for k, v in net.state_dict().items() if k.startswith("classifier.")})
    _load_into(path, net, state)
    return net if device is None else net.to(device)


def _classifier_classes(path: Path, state: dict[str, torch.Tensor]) -> int:
    w = state.get("classifier.linear.weight")
    if w is None:
        raise CheckpointError(f"checkpoint {path} has no classifier.linear.weight; it is not an OFA MobileNetV3")
    return int(w.shape[0])


def _infer_width(path: Path, state: dict[str, torch.Tensor]) -> float:
    stem = state.get("first_conv.conv.weight")
    by_stem = {stage_widths(w)[0]: w for w in WIDTHS}
    if stem is None or stem.shape[0] not in by_stem:
        found = None if stem is None else tuple(stem.shape)
        raise CheckpointError(f"checkpoint {path}: stem weight {found} matches no OFA MobileNetV3 width "
                              f"(stem channels {by_stem})")
    return by_stem[int(stem.shape[0])]


def _ofa_to_natdeploy_keys(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    known = set(OFAMobileNetV3Supernet(n_classes=1).state_dict())
    out = {}
    for key, value in state.items():
        new = key.replace(".mobile_inverted_conv.", ".conv.")
        if new not in known and not new.startswith("classifier."):
            for old, repl in _ALTERNATES:
                cand = new.replace(old, repl)
                if old in new and cand in known:
                    new = cand
                    break
        out[new] = value
    return out


def _load_into(path: Path, net: OFAMobileNetV3Supernet, state: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    if unexpected or missing:
        raise CheckpointError(
            f"checkpoint {path} does not fit an OFA MobileNetV3 supernet (k357, e346, d234, w{net.width}): "
            f"{len(missing)} missing keys (first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}; "
                                  "is it a k357/e346/d234 MobileNetV3 supernet?")
    net.load_state_dict(state, strict=False)
