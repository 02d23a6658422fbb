"""``natdeploy export``: parse the flags, call :func:`natdeploy.export.export_bundle`, print what it did.

natdeploy.cli is imported inside the functions only: cli.py imports this module, and a top-level import back
would be circular.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = ("Export one subnet as a verified bundle (model.tflite / model.onnx, labels.txt, metadata.json, "
               "README.md, and DIR.zip): fp32 parity with PyTorch, int8 accuracy, measured vs predicted latency.")


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on the top-level sub-command parsers; returns its parser."""
    from natdeploy.cli import _examples

    p = subparsers.add_parser(
        "export", help=DESCRIPTION, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("natdeploy export runs/cpu-small-s0",
                         "natdeploy export runs/cpu-small-s0 --budget 2ms --format tflite --int8 --out bundles/fast",
                         "natdeploy export runs/cpu-small-s0 --arch w1.0-r32-3333-3333-3333-3333-3333 --format onnx",
                         "natdeploy export runs/pixel4-ofa-s0 --budget pixel4=30ms --int8 --int8-io",
                         "natdeploy export w1.0-r224-3354-7376-3333-5566-7777 --supernet ofa_mbv3_d234_e346_k357_w1.0 "
                         "--data ./flowers --device cpu --out bundles/flowers"))
    p.add_argument("source", metavar="RUN_DIR|ARCH_SPEC",
                   help="a finished run folder, or an Arch string / JSON dict (then --supernet is required)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--budget", nargs="+", metavar="MS",
                      help="pick the most accurate archive Arch within this budget: 30ms for every device of the "
                           "run, or DEVICE=30ms (default: the run's own budgets)")
    pick.add_argument("--arch", help="export this Arch (string or JSON dict) from the run instead")
    p.add_argument("--format", default="tflite,onnx", help="comma list of tflite, onnx (default tflite,onnx)")
    p.add_argument("--int8", action="store_true", help="quantise model.tflite to int8 (post-training, calibrated)")
    p.add_argument("--int8-io", action="store_true", help="with --int8: int8 input and output tensors too")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="training images for int8 calibration (default 200)")
    p.add_argument("--parity-images", type=int, default=50,
                   help="validation images for the fp32 parity check (default 50)")
    p.add_argument("--bn-images", type=int,
                   help="training images for BN recalibration (default: the run's bn_batches x 256)")
    p.add_argument("--val-limit", type=int, help="use at most this many validation images for accuracy")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: symbolic batch dimension")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, the least allowed)")
    p.add_argument("--out", help="bundle folder (default <RUN_DIR>/bundle-<arch>, or ./bundle-<arch>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder and zip")
    p.add_argument("--supernet", help="supernet checkpoint (natdeploy or OFA) for an ARCH_SPEC export")
    p.add_argument("--data", help="ImageFolder directory, or 'digits', for BN recalibration, calibration and "
                                  "validation (default: the run's own data; none for ARCH_SPEC)")
    p.add_argument("--data-size", type=int, help="storage size for --data images (default: the run's, else the "
                                                 "Arch's resolution)")
    p.add_argument("--device", action="append",
                   help="device to measure and predict (repeatable; default: the run's devices)")
    p.add_argument("--no-latency", action="store_true", help="skip latency prediction and measurement")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_export)
    return p


def _budget(values: list[str] | None) -> float | dict[str, float] | None:
    """``30ms`` -> 30.0 (every device); ``cpu=30ms pixel4=20ms`` -> a mapping."""
    from natdeploy.cli import parse_latency_ms
    from natdeploy.errors import ConfigError

    if not values:
        return None
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise ConfigError("mix of DEVICE=budget and plain budgets in --budget; use one form")
    if named:
        return {dev: parse_latency_ms(val) for dev, val in (v.split("=", 1) for v in named)}
    if len(values) != 1:
        raise ConfigError(f"{len(values)} plain --budget values; give one (every device) or DEVICE=budget each")
    return parse_latency_ms(values[0])


def _data(args: argparse.Namespace) -> Any:
    """The ImageData named by --data, stored at --data-size (else the run's storage size, else the Arch's r)."""
    from natdeploy.data import load_digits_data, load_image_folder
    from natdeploy.export import read_run
    from natdeploy.space import Arch

    if not args.data:
        return None
    size = args.data_size
    if size is None:
        if Path(args.source).is_dir():
            size = int(read_run(args.source).state.data.get("storage_size", 0)) or None
        if size is None:
            size = Arch.parse(args.arch or args.source).r
    if args.data == "digits":
        return load_digits_data(size=size)
    return load_image_folder(args.data, size=size)


def _fmt_ms(v: Any) -> str:
    return f"{v:.3f} ms" if isinstance(v, (int, float)) else str(v)


def cmd_export(args: argparse.Namespace) -> int:
    """Run an export from parsed flags and print a summary; warnings go to stderr."""
    from natdeploy.export import export_bundle

    say = None if args.quiet else (lambda msg: print(f"[natdeploy] {msg}", file=sys.stderr, flush=True))
    res = export_bundle(args.source, args.out, formats=args.format, arch=args.arch, budget=_budget(args.budget),
                        supernet=args.supernet, data=_data(args), devices=args.device, int8=args.int8,
                        int8_io=args.int8_io, calibration_images=args.calibration_images,
                        parity_images=args.parity_images, bn_images=args.bn_images,
                        dynamic_batch=args.dynamic_batch, opset=args.opset,
                        overwrite=args.overwrite, val_limit=args.val_limit, measure_latency=not args.no_latency,
                        on_event=say)
    meta = res.metadata
    print(f"exported {res.arch} -> {res.out_dir} ({', '.join(res.files)}) and {res.zip_path}")
    acc = meta["accuracy"].get("val_top1_fp32")
    if acc is not None:
        print(f"  validation top-1 (fp32): {100 * acc:.2f}% on {meta['accuracy']['n_images']} images")
    for name, p in meta["verification"]["parity"].items():
        print(f"  parity {name}: max-abs {p['max_abs_diff']:.3g} = {p['relative_diff']:.3g} of the output range "
              f"(limit {p['tolerance']:g})")
    q = meta["verification"].get("int8")
    if q:
        print(f"  int8: top-1 {100 * q['top1_fp32']:.2f}% -> {100 * q['top1_int8']:.2f}%, agreement with fp32 "
              f"{100 * q['agreement_with_fp32']:.2f}% ({q['calibration_images']} calibration images)")
    for device, d in meta["latency"].items():
        meas = (f"not measured ({d['not_measured']})" if d.get("not_measured")
                else f"measured {_fmt_ms(d['measured_ms'])}")
        if d.get("measured_at_table_speed_ms") is not None:
            meas += f" ({_fmt_ms(d['measured_at_table_speed_ms'])} at the table's machine speed)"
        pred = f"predicted {_fmt_ms(d['predicted_ms'])}" if d.get("predicted_ms") is not None else d["not_predicted"]
        budget = f", budget {d['budget_ms']:g} ms" if d.get("budget_ms") is not None else ""
        notes = "".join(f"; note: {n}" for n in d.get("notes") or [])
        print(f"  {device}: {meas}, {pred}{budget}{notes}")
    for w in meta.get("warnings", []):
        print(f"WARNING: {w}", file=sys.stderr)
    return 0
