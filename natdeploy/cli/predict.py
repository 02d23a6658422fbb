"""``natdeploy predict``: the predicted latency of Archs on a device, with the parts of the prediction."""

from __future__ import annotations

import argparse

import sys

from natdeploy.cli.parsing import RESOLUTION_HELP, add_command, examples, positive_int, read_arch

HELP = "Predict the latency of Archs on a device, with the parts of the prediction."


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", HELP, examples(
        "natdeploy predict --device cpu --arch w1.0-r32-3333-3333-3333-3333-3333",
        "natdeploy predict --device cpu-litert --arch w1.0-r32-3333-3333-3333-3333-3333 "
        "w1.0-r48-7676-7676-7676-7676-7676"))
    p.add_argument("--device", required=True)
    p.add_argument("--arch", required=True, nargs="+", help="Arch string(s), JSON dict(s) or OFA net.config path(s)")
    p.add_argument("--resolution", type=positive_int, help=RESOLUTION_HELP)
    p.add_argument("--table", help="table path of --device (default: the device's table; see --tables)")
    p.add_argument("--n-classes", type=positive_int, help="classifier width (default: the table's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natdeploy.latency.store import predictor_for

    archs = [read_arch(a, args.resolution) for a in args.arch]  # before the (slower) table load
    predictor = predictor_for(args.device, table=args.table)
    for arch, p in zip(archs, predictor.predict_parts(archs, args.n_classes)):
        print(f"{arch}: {p.latency_ms:.3f} ms  (ops sum {p.lut_ms:.3f} ms over {p.n_ops} ops, {p.n_missing} "
              f"estimated by XGBoost = {p.estimated_ms:.3f} ms; whole-network factor {p.residual_factor:.3f})")
        warning = predictor.coverage_warning([arch], args.n_classes)
        if warning:
            print(f"WARNING: {warning}", file=sys.stderr)
    return 0
