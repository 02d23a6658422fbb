"""``natdeploy export``: build :class:`ExportOptions` from the flags, call ``export_bundle``, print what it did."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from natdeploy.cli.parsing import (RESOLUTION_HELP, add_command, add_table_flag, examples, looks_like_path, parse_budget,
                                   positive_int, read_arch, table_files)
from natdeploy.errors import ConfigError
from natdeploy.export.options import ExportOptions

HELP = ("Export one subnet as a verified bundle (model.tflite / model.onnx, labels.txt, metadata.json, "
        "README.md, and DIR.zip): fp32 parity with PyTorch, int8 accuracy, measured vs predicted latency.")


def register(sub: argparse._SubParsersAction) -> None:
    d = ExportOptions.default
    formats = d("formats")
    p = add_command(sub, "export", HELP, examples(
        "natdeploy export runs/cpu-small-s0 --format onnx --parity-images 4 --no-latency",
        "natdeploy export runs/cpu-small-s0 --max-latency 2ms --format tflite --int8 --calibration-images 8 "
        "--out bundles/fast",
        "natdeploy export runs/cpu-small-s0 --arch w1.0-r32-3333-3333-3333-3333-3333 --format onnx "
        "--out bundles/smallest",
        "natdeploy export runs/pixel4-ofa-s0 --budget pixel4=30ms --int8 --int8-io",
        "natdeploy export w1.0-r224-3354-7376-3333-5476-7473 --supernet ofa_mbv3_d234_e346_k357_w1.0 "
        "--data ./flowers --device cpu --out bundles/flowers"))
    p.add_argument("source", metavar="RUN_DIR|ARCH_SPEC",
                   help="a finished run folder, or an Arch string / JSON dict / OFA net.config path (then "
                        "--supernet is required)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--max-latency", "--budget", dest="budget", nargs="+", metavar="MS",
                      help="pick the most accurate archive Arch within this budget: 30ms for every device of the "
                           "run, or DEVICE=30ms (default: the run's own budgets)")
    pick.add_argument("--arch", help="export this Arch (string, JSON dict or OFA net.config path) from the run instead")
    p.add_argument("--resolution", type=positive_int, help=RESOLUTION_HELP)
    p.add_argument("--format", default=formats if isinstance(formats, str) else ",".join(formats),
                   help="comma list of tflite, onnx (default %(default)s)")
    p.add_argument("--int8", action="store_true", help="quantise model.tflite to int8 (post-training, calibrated)")
    p.add_argument("--int8-io", action="store_true", help="with --int8: int8 input and output tensors too")
    p.add_argument("--calibration-images", type=positive_int, default=d("calibration_images"),
                   help="training images for int8 calibration (default %(default)s)")
    p.add_argument("--parity-images", type=positive_int, default=d("parity_images"),
                   help="validation images for the fp32 parity check (default %(default)s)")
    p.add_argument("--bn-images", type=positive_int, default=d("bn_images"),
                   help="training images for BN recalibration (default: the run's bn_batches x 256)")
    p.add_argument("--val-limit", type=positive_int, default=d("val_limit"),
                   help="use at most this many validation images for accuracy")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: symbolic batch dimension")
    p.add_argument("--opset", type=positive_int, default=d("opset"), help="ONNX opset (default %(default)s, the least allowed)")
    p.add_argument("--out", help="bundle folder (default <RUN_DIR>/bundle-<arch>, or ./bundle-<arch>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder and zip")
    p.add_argument("--supernet", help="supernet checkpoint (natdeploy or OFA) for an ARCH_SPEC export")
    p.add_argument("--data", help="ImageFolder directory, or 'digits', for BN recalibration, calibration and "
                                  "validation (default: the run's own data; none for ARCH_SPEC)")
    p.add_argument("--data-size", type=positive_int, help="storage size for --data images (default: the run's, else the "
                                                 "Arch's resolution)")
    p.add_argument("--device", action="append",
                   help="device to measure and predict (repeatable; default: the run's devices)")
    p.add_argument("--no-latency", action="store_true", help="skip latency prediction and measurement")
    add_table_flag(p)
    p.set_defaults(func=run)


def validate(args: argparse.Namespace) -> None:
    """Refuse what cannot work before any slow work: a missing source, data or supernet file."""
    source = Path(args.source)
    if not source.is_dir() and looks_like_path(args.source) and not source.exists():
        raise ConfigError(f"{args.source} does not exist; give a run folder that `natdeploy search` wrote, or an "
                          "Arch string with --supernet")
    if args.data and args.data != "digits" and not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data} is not a folder; give an ImageFolder directory, or 'digits'")
    if args.data_size is not None and not args.data:
        raise ConfigError("--data-size applies only with --data, which is not given")
    if args.supernet and looks_like_path(args.supernet) and not Path(args.supernet).is_file():
        raise ConfigError(f"--supernet {args.supernet} does not exist; give a checkpoint file or an OFA name "
                          "(`natdeploy supernets` lists them)")
    args.table_files = table_files(args.table, args.device)


def _check_devices(devices: list[str] | None) -> None:
    """Each --device must be a known spec or have a table: a typo must not export with latency "not measured"."""
    from natdeploy.devices import known_devices
    from natdeploy.latency.store import has_table, missing_table_message

    for device in devices or ():
        if device not in known_devices() and not has_table(device):
            raise ConfigError(f"--device: {missing_table_message(device)}")


def _data(args: argparse.Namespace) -> Any:
    """The ImageData named by --data, stored at --data-size (else the run's storage size, else the Arch's r)."""
    from natdeploy.data import load_digits_data, load_image_folder
    from natdeploy.export import read_run
    if not args.data:
        return None
    size = args.data_size
    if size is None:
        if Path(args.source).is_dir():
            size = int(read_run(args.source).state.data.get("storage_size", 0)) or None
        if size is None:
            size = read_arch(args.arch or args.source, args.resolution).r
    if args.data == "digits":
        return load_digits_data(size=size)
    return load_image_folder(args.data, size=size)


def options(args: argparse.Namespace) -> ExportOptions:
    """The :class:`ExportOptions` the flags ask for."""
    budget = parse_budget(args.budget, "--max-latency/--budget")
    arch = str(read_arch(args.arch, args.resolution)) if args.arch else None
    return ExportOptions(formats=args.format, arch=arch, budget=budget,
                         supernet=args.supernet, data=_data(args), devices=args.device, int8=args.int8,
                         int8_io=args.int8_io, calibration_images=args.calibration_images,
                         parity_images=args.parity_images, bn_images=args.bn_images,
                         dynamic_batch=args.dynamic_batch, opset=args.opset, overwrite=args.overwrite,
                         val_limit=args.val_limit, measure_latency=not args.no_latency)


def _fmt_ms(v: Any) -> str:
    return f"{v:.3f} ms" if isinstance(v, (int, float)) else str(v)


def run(args: argparse.Namespace) -> int:
    """Run an export from parsed flags and print a summary; warnings go to stderr."""
    from natdeploy.export import export_bundle

    quiet = getattr(args, "quiet", False)  # absent when the parser lacks the common flags (tests build their own)
    say = None if quiet else (lambda msg: print(f"[natdeploy] {msg}", file=sys.stderr, flush=True))
    _check_devices(args.device)
    source = args.source if Path(args.source).is_dir() else str(read_arch(args.source, args.resolution))
    res = export_bundle(source, args.out, options(args), on_event=say)
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
        pred = (f"predicted {_fmt_ms(d['predicted_ms'])}" if d.get("predicted_ms") is not None
                else d["not_predicted"])
        budget = f", budget {d['budget_ms']:g} ms" if d.get("budget_ms") is not None else ""
        notes = "".join(f"; note: {n}" for n in d.get("notes") or [])
        print(f"  {device}: {meas}, {pred}{budget}{notes}")
    for w in meta.get("warnings", []):
        print(f"WARNING: {w}", file=sys.stderr)
    return 0
