"""``export_bundle``: from a NAT run (or an Arch and a supernet) to a verified, self-describing deployment bundle.

The subnet is extracted with the run's adapted weights, its BN statistics recalibrated on training images at
the Arch's resolution, converted through natdeploy.convert (the path the latency tables measured), checked for
fp32 parity against PyTorch on real validation images, its int8 accuracy measured, its latency measured on the
run's devices next to the prediction, and only then published (folder and zip) in one rename.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from natdeploy import __version__
from natdeploy.convert import onnx_bytes, tflite_bytes
from natdeploy.data import ImageData
from natdeploy.devices import DeviceSpec
from natdeploy.export import verify
from natdeploy.export.errors import ExportError
from natdeploy.export.latency_check import check_latency
from natdeploy.export.options import FORMATS, ExportOptions, parse_formats
from natdeploy.export.package import check_target, publish, sha256
from natdeploy.export.readme import render_readme
from natdeploy.export.source import Source, from_arch, from_run
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.space import Arch, madds, params
from natdeploy.supernet import MobileNetV3Subnet, recalibrate_bn

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "natdeploy.bundle"
BN_BATCH = 256  # the batch size the search's evaluate_arch recalibrates with
PIXELS_PER_BATCH = 256 * 64 * 64  # caps CPU batches at larger resolutions (256 images of 224 px thrash memory)


def batch_size_for(resolution: int, largest: int = BN_BATCH) -> int:
    """A batch size that keeps one batch's pixels bounded: ``largest`` up to 64 px, fewer images above."""
    return max(8, min(largest, PIXELS_PER_BATCH // (resolution * resolution)))


@dataclass
class ExportResult:
    """A published bundle: its folder, zip, the Arch, the metadata written, warnings raised and step timings."""

    out_dir: Path
    zip_path: Path
    arch: Arch
    metadata: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return sorted(p.name for p in self.out_dir.iterdir())


def _check_options(formats: list[str], opts: ExportOptions) -> None:
    int8, int8_io, calibration_images = opts.int8, opts.int8_io, opts.calibration_images
    parity_images, bn_images, opset = opts.parity_images, opts.bn_images, opts.opset
    if int8 and "tflite" not in formats:
        raise ExportError("--int8 quantises the TFLite model; add tflite to the formats (ONNX ships as fp32)")
    if int8_io and not int8:
        raise ExportError("--int8-io needs --int8: int8 inputs and outputs exist only in a quantised model")
    if int8 and calibration_images < 1:
        raise ExportError(f"int8 export needs calibration data, but --calibration-images is {calibration_images}; "
                          "give at least 1 (a few hundred is typical)")
    if parity_images < 1:
        raise ExportError(f"--parity-images must be at least 1, got {parity_images}")
    if bn_images is not None and bn_images < 1:
        raise ExportError(f"--bn-images must be at least 1, got {bn_images}")
    if opts.val_limit is not None and opts.val_limit < 1:
        raise ExportError(f"--val-limit must be at least 1, got {opts.val_limit}")
    if opset < verify.MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} is too old; use {verify.MIN_OPSET} or newer")


def _resolve(source: str | Path | Arch, arch: Arch | str | None, budget: float | Mapping[str, float] | None,
             supernet: str | Path | None, data: ImageData | None, devices: Sequence[str] | None) -> Source:
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return from_run(source, arch=arch, budget=budget, data=data, devices=devices)
    if isinstance(source, (str, Path)) and Path(source).exists():
        raise ExportError(f"{source} is a file; give a run folder, or an Arch string with a supernet checkpoint")
    if isinstance(source, Arch):
        spec = source
    else:
        try:
            spec = Arch.parse(str(source))
        except ValueError as exc:
            raise ExportError(f"{source!r} is neither a run folder nor an Arch string ({exc})") from None
    if arch is not None:
        raise ExportError("give the Arch once: as the source, or with --arch together with a run folder")
    if supernet is None:
        raise ExportError(f"exporting Arch {spec} without a run needs the supernet checkpoint: pass --supernet PATH")
    return from_arch(spec, supernet, data=data, budget=budget, devices=devices or ())


def _default_out(src: Source) -> Path:
    base = src.run.run_dir if src.run is not None else Path.cwd()
    return base / f"bundle-{src.arch}"


def build_subnet(src: Source, bn_images: int | None = None) -> MobileNetV3Subnet:
    """The static subnet (eval mode, channels_last) with the supernet's weights and BN statistics recalibrated
    on ``bn_images`` training images at the Arch's resolution (default: the search's bn_batches x 256)."""
    # channels_last: measured 1.5-7x faster on CPU for these nets (DESIGN.md); the converters read values only.
    sub = src.supernet.extract_subnet(src.arch).to(memory_format=torch.channels_last)
    if src.data is not None:
        # The search's image count (bn_batches x 256), in smaller batches where images are large: with
        # cumulative BN averaging the statistics barely depend on the split.
        total = bn_images if bn_images is not None else src.bn_batches * BN_BATCH
        batch = min(batch_size_for(src.arch.r), total)
        n_batches = -(-total // batch)
        rng = np.random.default_rng(src.seed)
        recalibrate_bn(sub, src.data.batches("train", batch, src.arch.r, rng=rng), n_batches)
    return sub.eval()


def _onnx(sub: MobileNetV3Subnet, shape: tuple[int, ...], opset: int, dynamic_batch: bool, x_ref: np.ndarray,
          ref: np.ndarray, inputs: str, step: Callable[[str, float], None]) -> tuple[bytes, dict, dict]:
    """The ONNX bytes, their structure check and their parity with PyTorch (raises when off)."""
    t0 = time.perf_counter()
    model = onnx_bytes(sub, shape, opset=opset, dynamic_batch=dynamic_batch)
    step("onnx_export", t0)
    info = verify.check_onnx(model, shape[-1], dynamic_batch)
    res = verify.parity(verify.run_onnx(model, x_ref), ref, inputs)
    verify.require_parity("model.onnx", res)
    return model, info, res.to_dict()


def _int8(sub: MobileNetV3Subnet, src: Source, calibration_images: int, int8_io: bool, fp32_pred: np.ndarray,
          labels: np.ndarray, val_limit: int | None, step: Callable[[str, float], None]) -> tuple[bytes, dict]:
    """The int8 TFLite bytes, calibrated on training images, and their validation accuracy and agreement."""
    assert src.data is not None  # checked before any work
    r = src.arch.r
    t0 = time.perf_counter()
    calib = verify.calibration_batches(src.data, r, calibration_images, src.seed)
    n_calib = sum(len(b) for b in calib)
    if n_calib < 1:
        raise ExportError("int8 export needs calibration data, but the training split is empty")
    model = tflite_bytes(sub, (1, 3, r, r), int8=True, calibration=calib, int8_io=int8_io)
    step("tflite_int8_convert", t0)
    report = verify.int8_report(model, src.data, r, fp32_pred, labels, val_limit, n_calib, batch_size_for(r, 128))
    return model, report


def export_bundle(source: str | Path | Arch, out: str | Path | None = None, options: ExportOptions | None = None,
                  *, predictors: Mapping[str, LatencyPredictor] | None = None,
                  device_specs: Mapping[str, DeviceSpec] | None = None,
                  on_event: Callable[[str], None] | None = None, **changes: Any) -> ExportResult:
    """Export one subnet as a verified bundle folder ``out`` plus ``out.zip``; returns what was written.

    ``source`` is a run folder (the Arch is ``options.arch``, else the most accurate archive entry within
    ``options.budget``), or an Arch (string) together with ``options.supernet`` and optional ``options.data``.
    ``changes`` are :class:`ExportOptions` fields that replace those of ``options`` (``formats="onnx"``).
    ``predictors`` and ``device_specs`` replace the ones loaded by device name (tests pass tiny ones).
    Raises :class:`ExportError` for bad input or a failed check; nothing is left at ``out`` then.
    """
    opts = replace(options or ExportOptions(), **changes)
    say = on_event or (lambda msg: None)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    fmts = parse_formats(opts.formats)
    _check_options(fmts, opts)
    if out is not None:
        check_target(Path(out), opts.overwrite)  # before the slow work; checked again at publication
    src = _resolve(source, opts.arch, opts.budget, opts.supernet, opts.data, opts.devices)
    if opts.int8 and src.data is None:
        raise ExportError("int8 export needs calibration data, and none was given: pass --data (an ImageFolder) "
                          "or export from a run folder, whose data is reloaded")
    out_dir = Path(out) if out is not None else _default_out(src)
    check_target(out_dir, opts.overwrite)
    r = src.arch.r
    shape = (1, 3, r, r)

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)

    say(f"extracting {src.arch} and recalibrating BN at {r} px")
    t0 = time.perf_counter()
    bn_total = opts.bn_images if opts.bn_images is not None else src.bn_batches * BN_BATCH
    sub = build_subnet(src, bn_total)
    accuracy: dict[str, Any] = {}
    fp32_pred = labels = None
    if src.data is not None:
        fp32_pred, labels = verify.torch_predictions(sub, src.data, r, opts.val_limit, batch_size_for(r, 128))
        accuracy = {"val_top1_fp32": float((fp32_pred == labels).mean()), "n_images": int(len(labels)),
                    "model": "PyTorch fp32 (the exported weights)",
                    "bn_recalibrated_on": f"{min(bn_total, len(src.data.train_y))} training images at {r} px"}
    if src.archive_entry is not None:
        accuracy["search_accuracy"] = src.archive_entry.get("accuracy")
    step("subnet_and_accuracy", t0)
    x_ref, inputs = verify.reference_inputs(src.data, r, opts.parity_images, src.seed)
    ref = verify.torch_outputs(sub, x_ref)
    files: dict[str, bytes] = {}
    checks: dict[str, Any] = {"parity": {}}
    io: dict[str, Any] = {}
    if "onnx" in fmts:
        say("exporting ONNX and checking parity")
        files["onnx"], io["onnx"], checks["parity"]["onnx"] = _onnx(sub, shape, opts.opset, opts.dynamic_batch,
                                                                    x_ref, ref, inputs, step)
    if "tflite" in fmts:
        say("converting to TFLite fp32 and checking parity")
        t0 = time.perf_counter()
        fp32 = tflite_bytes(sub, shape)
        step("tflite_fp32_convert", t0)
        res = verify.parity(verify.run_tflite(fp32, x_ref), ref, inputs)
        verify.require_parity("model.tflite (fp32)", res)
        checks["parity"]["tflite_fp32"] = res.to_dict()
        files["tflite"] = fp32
        if opts.int8:
            say(f"quantising to int8 with {opts.calibration_images} calibration images, then checking accuracy")
            files["tflite"], checks["int8"] = _int8(sub, src, opts.calibration_images, opts.int8_io, fp32_pred,
                                                    labels, opts.val_limit, step)
        io["tflite"] = verify.tflite_io(files["tflite"])
    precision = {"onnx": "fp32", "tflite": "int8" if opts.int8 else "fp32"}
    warnings: list[str] = []
    latency: dict[str, Any] = {}
    if opts.measure_latency and src.devices:
        say(f"measuring latency on {', '.join(src.devices)}")
        t0 = time.perf_counter()
        latency, warnings = check_latency(src.arch, src.n_classes, src.devices, files, src.budgets, predictors,
                                          device_specs, precision)
        step("latency", t0)
    meta = build_metadata(src, fmts, files, io, precision, accuracy, checks, latency, opts.int8_io,
                          opts.dynamic_batch)
    meta["warnings"] = warnings + src.notes
    named = {f"model.{fmt}": files[fmt] for fmt in fmts}
    named["labels.txt"] = ("\n".join(src.classes) + "\n").encode()
    named["metadata.json"] = (json.dumps(meta, indent=1) + "\n").encode()
    named["README.md"] = render_readme(meta).encode()
    out_dir, zip_path = publish(named, out_dir, opts.overwrite)
    timings["total"] = round(time.perf_counter() - t_all, 3)
    return ExportResult(out_dir, zip_path, src.arch, meta, warnings, timings)


def build_metadata(src: Source, fmts: list[str], files: Mapping[str, bytes], io: Mapping[str, Any],
                   precision: Mapping[str, str], accuracy: dict[str, Any], checks: dict[str, Any],
                   latency: dict[str, Any], int8_io: bool, dynamic_batch: bool) -> dict[str, Any]:
    """metadata.json: how to feed the model, what it is, how it was checked, how fast it ran, where it came from."""
    arch, r, n = src.arch, src.arch.r, src.n_classes
    mean = list(src.data.mean) if src.data is not None else [0.0, 0.0, 0.0]
    std = list(src.data.std) if src.data is not None else [1.0, 1.0, 1.0]
    inp: dict[str, Any] = {"name": "input", "resolution": r, "preprocessing": {
        "color_order": "RGB", "value_scale": "0..1", "mean": mean, "std": std,
        "formula": "x = (pixel / 255 - mean[c]) / std[c], per RGB channel c",
        "resize": "centre square crop, bilinear resize", "normalisation_from": "the run's training data"
        if src.data is not None else "none given (identity)"}}
    output: dict[str, Any] = {"name": "logits", "n_classes": n, "labels_file": "labels.txt",
                              "meaning": f"{n} unnormalised class scores (logits); index i is line i of labels.txt; "
                                         "apply softmax for probabilities"}
    if "onnx" in io:
        batch = "batch" if dynamic_batch else 1
        inp["onnx"] = {"shape": [batch, 3, r, r], "layout": "NCHW", "dtype": "float32"}
        output["onnx"] = {"shape": [batch, n], "dtype": "float32"}
    if "tflite" in io:
        ti, to = io["tflite"]["input"], io["tflite"]["output"]
        inp["tflite"] = {"shape": ti["shape"], "layout": "NHWC", "dtype": ti["dtype"],
                         "quantization": ti["quantization"] if int8_io else None}
        output["tflite"] = {"shape": to["shape"], "dtype": to["dtype"],
                            "quantization": to["quantization"] if int8_io else None}
    file_info = {}
    for fmt in fmts:
        info: dict[str, Any] = {"bytes": len(files[fmt]), "sha256": sha256(files[fmt]), "precision": precision[fmt]}
        if fmt == "onnx":
            info.update(opset=io["onnx"]["opset"], dynamic_batch=dynamic_batch, constant_folding=True,
                        checker="onnx.checker full_check passed", ops=io["onnx"]["ops"])
        else:
            info.update(int8_io=int8_io, converter="natdeploy.convert.tflite (torch -> Keras NHWC -> TFLite)")
        file_info[f"model.{fmt}"] = info
    # Table summaries move to one top-level key: several devices may share a table, and it is long.
    tables = {d: v.pop("table") for d, v in latency.items() if v.get("table")}
    for v in latency.values():
        v.pop("table", None)
    return {
        "format": BUNDLE_FORMAT, "version": 1, "natdeploy_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "arch": {"string": str(arch), "dict": arch.to_dict(), "resolution": r, "width": arch.w,
                 "madds": madds(arch, n), "params": params(arch, n)},
        "input": inp, "output": output, "files": file_info, "accuracy": accuracy, "verification": checks,
        "latency": latency, "budgets_ms": dict(src.budgets), "table_provenance": tables,
        "source": {"run": str(src.run.run_dir) if src.run else None,
                   "supernet": str(src.supernet_path) if src.supernet_path else None,
                   "archive_entry": src.archive_entry,
                   "data": src.run.state.data if src.run else (src.data.describe() if src.data else None)},
    }
