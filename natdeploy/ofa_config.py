"""OFA's ``net.config``: the JSON that Once-for-All writes for a static MobileNetV3 subnet, in both of its layouts.

OFA has written two layouts over its history. The current one names a block ``ResidualBlock`` with its MBConv
under ``conv`` (an ``MBConvLayer``). The older one, in which OFA's published specialised subnets
(``ofa_specialized/<name>/net.config``) are written, names it ``MobileInvertedResidualBlock`` with the MBConv
under ``mobile_inverted_conv`` (an ``MBInvertedConvLayer``). Both describe the same network; this module writes
the current layout and reads either.

It works on plain Arch fields (``ks``, ``e``, ``d``, ``r``, ``w``), so that it imports only ``natdeploy.layout``
and ``natdeploy.errors``; ``natdeploy.space.Arch`` wraps it (``to_ofa_config``, ``from_ofa_config``,
``from_ofa_file``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from natdeploy.errors import ArchError, ConfigError
from natdeploy.layout import (BLOCK0_KERNEL, EXPANDS, KERNELS, MAX_DEPTH, N_BLOCKS, N_STAGES, WIDTHS, BlockSlot,
                              mid_channels, stage_widths, supernet_plan)

# Block name -> the key that holds its MBConv, in each of OFA's layouts (current first).
BLOCK_LAYOUTS = {"ResidualBlock": "conv", "MobileInvertedResidualBlock": "mobile_inverted_conv"}
MBCONV_NAMES = ("MBConvLayer", "MBInvertedConvLayer")
# A block whose conv is one of these (or null) is an identity: OFA's forward passes its input through.
_EMPTY_CONV_NAMES = ("ZeroLayer",)


# ----- writing (the current layout) ----------------------------------------------------------------------------
def _conv_layer_config(cin: int, cout: int, k: int, stride: int, act: str | None, bias: bool = False,
                       use_bn: bool = True) -> dict[str, Any]:
    return {"name": "ConvLayer", "kernel_size": k, "stride": stride, "dilation": 1, "groups": 1, "bias": bias,
            "has_shuffle": False, "use_se": False, "in_channels": cin, "out_channels": cout, "use_bn": use_bn,
            "act_func": act, "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _ofa_act(act: str) -> str:
    return "h_swish" if act == "hswish" else act


def _mbconv_config(cin: int, cout: int, k: int, stride: int, e: int, mid: int | None, act: str,
                   se: bool) -> dict[str, Any]:
    return {"name": "MBConvLayer", "in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride,
            "expand_ratio": e, "mid_channels": mid, "act_func": _ofa_act(act), "use_se": se, "groups": None}


def _identity_config(c: int) -> dict[str, Any]:
    return {"name": "IdentityLayer", "in_channels": c, "out_channels": c, "use_bn": False, "act_func": None,
            "dropout_rate": 0, "ops_order": "weight_bn_act"}


def build_config(w: float, blocks: Sequence[tuple[int, int, int]], n_classes: int = 1000,
                 dropout_rate: float = 0.1, bn_momentum: float = 0.1, bn_eps: float = 1e-5) -> dict[str, Any]:
    """OFA's ``MobileNetV3.config`` at width ``w`` with the given ``(slot index, kernel, expand)`` blocks."""
    plan = supernet_plan(w)

    def block(slot: BlockSlot, k: int, e: int, mid: int | None) -> dict[str, Any]:
        conv = _mbconv_config(slot.in_c, slot.out_c, k, slot.stride, e, mid, slot.act, slot.se)
        return {"name": "ResidualBlock", "conv": conv, "shortcut": _identity_config(slot.in_c) if slot.skip else None}

    out = [block(plan.block0, BLOCK0_KERNEL, 1, None)]
    out += [block(plan.blocks[i], k, e, mid_channels(plan.blocks[i].in_c, e)) for i, k, e in blocks]
    return {
        "name": "MobileNetV3",
        "bn": {"momentum": bn_momentum, "eps": bn_eps, "ws_eps": None},
        "first_conv": _conv_layer_config(3, plan.stem_c, 3, 2, "h_swish"),
        "blocks": out,
        "final_expand_layer": _conv_layer_config(plan.last_c, plan.final_expand_c, 1, 1, "h_swish"),
        "feature_mix_layer": _conv_layer_config(plan.final_expand_c, plan.feature_mix_c, 1, 1, "h_swish", bias=False,
                                                use_bn=False),
        "classifier": {"name": "LinearLayer", "in_features": plan.feature_mix_c, "out_features": n_classes,
                       "bias": True, "use_bn": False, "act_func": None, "dropout_rate": dropout_rate,
                       "ops_order": "weight_bn_act"},
    }


# ----- reading (either layout) ---------------------------------------------------------------------------------
def _field(layer: Any, key: str, where: str) -> Any:
    if not isinstance(layer, dict) or key not in layer:
        raise ArchError(f"{where} has no '{key}'")
    return layer[key]


def _block_conv(block: Any, n: int) -> dict[str, Any] | None:
    """The MBConv of block ``n`` in either layout; None for an identity block (no conv, or a ZeroLayer)."""
    where = f"net.config block {n}"
    if not isinstance(block, dict):
        raise ArchError(f"{where} is not a JSON object")
    name = block.get("name")
    keys = [BLOCK_LAYOUTS[name]] if name in BLOCK_LAYOUTS else [k for k in BLOCK_LAYOUTS.values() if k in block]
    if (name is not None and name not in BLOCK_LAYOUTS) or len(keys) != 1 or keys[0] not in block:
        raise ArchError(f"{where} is a {name or 'nameless block'} with keys {sorted(block)}; expected one of "
                         "OFA's layouts: ResidualBlock with 'conv', or MobileInvertedResidualBlock with "
                         "'mobile_inverted_conv'")
    conv = block[keys[0]]
    if conv is None or isinstance(conv, dict) and conv.get("name") in _EMPTY_CONV_NAMES:
        return None
    if not isinstance(conv, dict) or conv.get("name", MBCONV_NAMES[0]) not in MBCONV_NAMES:
        found = conv.get("name") if isinstance(conv, dict) else type(conv).__name__
        raise ArchError(f"{where} holds a {found}; expected one of {list(MBCONV_NAMES)}")
    return conv


def _check_slot(conv: dict[str, Any], slot: BlockSlot, n: int, s: int) -> tuple[int, int]:
    """Check block ``n``'s MBConv against the supernet slot it fills; returns its (kernel, expand)."""
    where = f"net.config block {n} (stage {s})"
    k, e = _field(conv, "kernel_size", where), _field(conv, "expand_ratio", where)
    if k not in KERNELS:
        raise ArchError(f"{where} has kernel_size {k!r}; allowed: {list(KERNELS)}")
    if e not in EXPANDS:
        raise ArchError(f"{where} has expand_ratio {e!r}; allowed: {list(EXPANDS)}")
    expected = {"in_channels": slot.in_c, "stride": slot.stride, "act_func": _ofa_act(slot.act)}
    for key, want in expected.items():
        got = _field(conv, key, where)
        if got != want:
            raise ArchError(f"{where} has {key} {got!r} where OFA's MobileNetV3 has {want!r}")
    if bool(conv.get("use_se", False)) != slot.se:
        raise ArchError(f"{where} has use_se {conv.get('use_se')!r} where OFA's MobileNetV3 has {slot.se}")
    mid = conv.get("mid_channels")
    if mid is not None and mid != mid_channels(slot.in_c, e):
        raise ArchError(f"{where} has mid_channels {mid}, but expand ratio {e} of {slot.in_c} channels "
                         f"gives {mid_channels(slot.in_c, e)}")
    return k, e


def parse_config(config: Any, resolution: int | None = None) -> dict[str, Any]:
    """Arch fields ``{ks, e, d, r, w}`` of an OFA MobileNetV3 ``net.config`` in either layout; ValueError if not one.

    The file holds no resolution: pass ``resolution``, or give the config a top-level ``resolution`` or
    ``image_size`` key. Blocks are checked against the supernet's stage plan (channels, stride, activation, SE).
    """
    if not isinstance(config, dict) or "blocks" not in config or "first_conv" not in config:
        raise ArchError("not an OFA MobileNetV3 net.config: it needs 'first_conv' and 'blocks'")
    name = config.get("name", "MobileNetV3")
    if name != "MobileNetV3":
        raise ArchError(f"net.config describes a {name}, not an OFA MobileNetV3 subnet")
    r = resolution if resolution is not None else config.get("resolution", config.get("image_size"))
    if r is None:
        raise ArchError("OFA's net.config records no resolution; pass resolution=... (the input size in pixels)")
    stem = _field(config["first_conv"], "out_channels", "net.config first_conv")
    by_stem = {stage_widths(w)[0]: w for w in WIDTHS}
    if stem not in by_stem:
        raise ArchError(f"net.config stem width {stem} matches no width multiplier; known stems: {by_stem}")
    w = by_stem[stem]
    plan, widths = supernet_plan(w), stage_widths(w)
    blocks = config["blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise ArchError("net.config 'blocks' is not a non-empty list")
    first = _block_conv(blocks[0], 0)
    if first is None or _field(first, "out_channels", "net.config block 0") != plan.block0.out_c:
        raise ArchError(f"net.config block 0 is not OFA's first block (k{BLOCK0_KERNEL}, e1, "
                         f"{plan.block0.out_c} channels at w{w})")
    ks, e, d = [KERNELS[0]] * N_BLOCKS, [EXPANDS[0]] * N_BLOCKS, [0] * N_STAGES
    stage = 0
    for n, block in enumerate(blocks[1:], start=1):
        conv = _block_conv(block, n)
        if conv is None:
            continue
        out_c = _field(conv, "out_channels", f"net.config block {n}")
        stages = [s for s in range(N_STAGES) if widths[2 + s] == out_c]
        if not stages:
            raise ArchError(f"net.config block {n} has {out_c} output channels, "
                             f"which is no stage width of w{w}: {list(widths[2:7])}")
        s = stages[0]
        if s < stage:
            raise ArchError(f"net.config block {n} ({out_c} channels) comes after a block of a later stage")
        stage = s
        if d[s] >= MAX_DEPTH:
            raise ArchError(f"net.config has more than {MAX_DEPTH} blocks in stage {s}")
        i = s * MAX_DEPTH + d[s]
        ks[i], e[i] = _check_slot(conv, plan.blocks[i], n, s)
        d[s] += 1
    return {"ks": ks, "e": e, "d": d, "r": r, "w": w}


def _run_config_resolution(path: Path) -> int | None:
    """``image_size`` from the ``run.config`` OFA publishes beside a specialised subnet's net.config, if any."""
    run_config = path.with_name("run.config")
    try:
        size = json.loads(run_config.read_text(encoding="utf-8")).get("image_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def read_net_config(path: str | os.PathLike, resolution: int | None = None) -> dict[str, Any]:
    """Arch fields of the ``net.config`` file at ``path`` (either OFA layout); a clear ConfigError naming the file.

    The resolution is ``resolution`` if given, else one recorded in the file, else the ``image_size`` of a
    ``run.config`` beside it (as OFA publishes its specialised subnets).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"net.config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"net.config file {path} could not be read ({type(exc).__name__}: {exc})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}); expected OFA's net.config "
                          "of a MobileNetV3 subnet") from None
    if resolution is None and isinstance(config, dict) and "resolution" not in config and "image_size" not in config:
        resolution = _run_config_resolution(path)
    try:
        return parse_config(config, resolution)
    except ValueError as exc:
        msg = str(exc)
        if "records no resolution" in msg:
            msg = "records no resolution and has no run.config beside it; pass the input size (resolution=...)"
        raise ConfigError(f"{path}: {msg}") from None
