"""The ``natdeploy`` command line: each command parses its flags and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from natdeploy import __version__
from natdeploy.errors import ConfigError, NatDeployError

log = logging.getLogger("natdeploy")
_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "": 1.0}


def parse_latency_ms(text: str) -> float:
    """``30ms``, ``0.03s``, ``30000us`` or a plain ``30`` (milliseconds) -> milliseconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(ms|s|us)?\s*", str(text), re.I)
    if not m:
        raise ConfigError(f"cannot read latency {text!r}; write it like 30ms, 0.03s, 30000us or 30 (milliseconds)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if value <= 0:
        raise ConfigError(f"latency {text!r} must be positive")
    return value


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser(name: str, sub: argparse._SubParsersAction, help_: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_, epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# ----- commands -------------------------------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace) -> int:
    from natdeploy.devices import known_devices, load_device, tables_dir

    for name in known_devices():
        spec = load_device(name)
        has = "table" if (tables_dir() / f"{name}.json").exists() else "no table"
        print(f"{name:12s} {spec.transport:6s} {spec.runtime:12s} {has:9s} {spec.description}")
    return 0


def cmd_arch(args: argparse.Namespace) -> int:
    from natdeploy.space import Arch, SearchSpace, madds, params

    arch = Arch.parse(args.arch)
    info = {"string": str(arch), "dict": arch.to_dict(), "madds": madds(arch, args.n_classes),
            "params": params(arch, args.n_classes)}
    if args.space:
        info["genome"] = SearchSpace.preset(args.space).encode(arch).tolist()
    print(json.dumps(info, indent=1))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from natdeploy.devices import load_device
    from natdeploy.latency.profiler import profile_device
    from natdeploy.space import SearchSpace

    spec = load_device(args.device)
    adb_flags = [f for f, v in (("--serial", args.serial), ("--benchmark-binary", args.benchmark_binary),
                                ("--keep-remote", args.keep_remote)) if v]
    if adb_flags and spec.transport != "adb":
        raise ConfigError(f"{', '.join(adb_flags)} only apply to phones (transport adb); device {spec.name!r} uses "
                          f"transport {spec.transport!r}")
    binary = str(Path(args.benchmark_binary).expanduser().resolve()) if args.benchmark_binary else None
    spec = spec.with_overrides(threads=args.threads, cpu_mask=args.cpu_mask, serial=args.serial,
                               benchmark_binary=binary,
                               extra={**spec.extra, "keep_remote": True} if args.keep_remote else None)
    space = SearchSpace.preset(args.space or spec.space)
    res = profile_device(spec, space, resolutions=args.resolutions, e2e_samples=args.e2e_samples,
                         n_classes=args.n_classes, out=args.out, force=args.force, seed=args.seed, quiet=args.quiet)
    print(f"{res.table_path}: {res.n_ops} ops ({res.n_ops_measured_now} measured now), {res.n_e2e} whole subnets, "
          f"reference drift {100 * res.drift:.1f}%")
    print(f"{res.model_path}: fitted latency models")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from natdeploy.latency.profiler import predictor_for
    from natdeploy.space import Arch

    predictor = predictor_for(args.device, table=args.table)
    archs = [Arch.parse(a) for a in args.arch]
    for arch, p in zip(archs, predictor.predict_parts(archs, args.n_classes)):
        print(f"{arch}: {p.latency_ms:.3f} ms  (ops sum {p.lut_ms:.3f} ms over {p.n_ops} ops, {p.n_missing} "
              f"estimated by XGBoost = {p.estimated_ms:.3f} ms; whole-network factor {p.residual_factor:.3f})")
    return 0


def cmd_tables_import_ofa(args: argparse.Namespace) -> int:
    from natdeploy.devices import tables_dir
    from natdeploy.latency.ofa_import import import_ofa_tables
    from natdeploy.latency.predictor import LatencyPredictor

    out = Path(args.out) if args.out else tables_dir() / f"{args.device}.json"
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it or --out for another path")
    table = import_ofa_tables(args.folder, args.device)
    table.save(out)
    LatencyPredictor.fit(table).save(out.with_suffix(".xgb.json"))
    print(f"{out}: {len(table.ops)} ops at resolutions {table.provenance['resolutions']}")
    return 0


def cmd_tables_refit(args: argparse.Namespace) -> int:
    from natdeploy.devices import known_devices, load_device, tables_dir
    from natdeploy.latency.predictor import fit_table
    from natdeploy.latency.table import LatencyTable

    path = Path(args.table) if args.table else tables_dir() / f"{args.device}.json"
    table = LatencyTable.load(path)
    elasticity = args.elasticity
    if elasticity is None:  # the device spec's setting, where the table's device has one
        elasticity = (load_device(table.device).speed_elasticity if table.device in known_devices()
                      else "auto")
    elif elasticity != "auto":
        try:
            elasticity = float(elasticity)
        except ValueError:
            raise ConfigError(f"--elasticity must be 'auto' or a number, got {elasticity!r}") from None
    models = fit_table(table, path, args.seed, elasticity)
    print(f"{path}: speed elasticity {table.speed_elasticity:+.2f}; models refitted in {models}")
    return 0


def _budgets(devices: list[str], values: list[str] | None) -> dict[str, float]:
    """``--max-latency 30ms`` (every device), one value per device in order, or ``DEVICE=30ms``."""
    if not values:
        return {}
    named = [v for v in values if "=" in v]
    if named:
        if len(named) != len(values):
            raise ConfigError("mix of DEVICE=budget and plain budgets in --max-latency; use one form")
        out = {}
        for v in named:
            dev, val = v.split("=", 1)
            if dev not in devices:
                raise ConfigError(f"--max-latency names {dev!r}, which is not a --device of this search {devices}")
            out[dev] = parse_latency_ms(val)
        return out
    if len(values) == 1:
        return {d: parse_latency_ms(values[0]) for d in devices}
    if len(values) != len(devices):
        raise ConfigError(f"{len(values)} --max-latency values for {len(devices)} devices; give one, one per "
                          "device in order, or DEVICE=budget")
    return {d: parse_latency_ms(v) for d, v in zip(devices, values)}


class _Progress:
    """Prints phases; a tqdm bar for training steps and evaluations (off when quiet or not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        from natdeploy.latency.profiler import progress_enabled

        self.enabled, self.quiet, self.bar, self.kind = progress_enabled(quiet), quiet, None, None

    def __call__(self, kind: str, info: dict) -> None:
        from tqdm.auto import tqdm

        if kind == "phase":
            self.close()
            if not self.quiet:
                print(f"[natdeploy] {info['name']}", file=sys.stderr, flush=True)
        elif kind == "iteration" and not self.quiet:
            self.close()
            print(f"[natdeploy] iteration {info['iteration']} done: archive {info['archive']}, surrogate Kendall "
                  f"tau on the new candidates {info['kendall_tau_unseen']}, cross-validated on the archive "
                  f"{info.get('kendall_tau_cv')}", file=sys.stderr, flush=True)
        elif kind in ("step", "evaluated") and self.enabled:
            total = info["total"]
            if self.bar is None or self.kind != kind or self.bar.total != total:
                self.close()
                self.bar = tqdm(total=total, unit="step" if kind == "step" else "subnet", leave=False)
                self.kind = kind
            self.bar.n = info.get("step", info.get("done"))
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_search(args: argparse.Namespace) -> int:
    from natdeploy.data import load_digits_data, load_image_folder
    from natdeploy.latency.profiler import predictor_for
    from natdeploy.search import NATConfig, run_search
    from natdeploy.space import SearchSpace

    devices = list(dict.fromkeys(args.device))
    budgets = _budgets(devices, args.max_latency)
    space = SearchSpace.preset(args.space, resolutions=args.resolutions)
    if args.data:
        data = load_image_folder(args.data, val=args.val, size=max(space.resolutions), seed=args.seed,
                                 limit_per_class=args.train_per_class, val_limit_per_class=args.val_per_class)
    else:
        data = load_digits_data(size=max(space.resolutions), seed=args.seed)
        print("note: no --data given; searching on scikit-learn's bundled digits (the embedded default)",
              file=sys.stderr)
    predictors = {d: predictor_for(d) for d in devices}
    overrides = {k: v for k, v in {
        "iterations": args.iterations, "epochs_per_iter": args.epochs_per_iter, "warmup_epochs": args.warmup_epochs,
        "initial_archs": args.initial_archs, "population": args.population, "generations": args.generations,
        "candidates_per_iter": args.candidates, "surrogate": args.surrogate, "batch_size": args.batch_size,
        "objectives": tuple(args.objectives.split(",")) if args.objectives else None, "seed": args.seed,
    }.items() if v is not None}
    config = NATConfig.quick(**overrides) if args.settings == "quick" else NATConfig(**overrides)
    name = args.name or f"{'-'.join(devices)}-{args.space}-s{args.seed}"
    run_dir = Path(args.out) / name
    progress = _Progress(args.quiet)
    try:
        record = run_search(run_dir, data, predictors, budgets, space, config, supernet=args.supernet,
                            resume=args.resume, on_event=progress, extend=args.iterations is not None)
    finally:
        progress.close()
    print(record["summary"])
    best = record["best"]
    if best:
        lat = ", ".join(f"{d} {v:.3f} ms" for d, v in best["latency_ms"].items())
        print(f"\nbest within budget: {best['arch']}  accuracy {100 * best['accuracy']:.2f}%  ({lat})")
    else:
        print("\nno evaluated subnet meets every budget")
    print(f"outputs in {run_dir}: archive.jsonl pareto.json pareto.png best.json supernet.pt")
    return 0


# ----- wiring ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="natdeploy", description="Hardware-aware Neural Architecture Transfer.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=_examples("natdeploy devices", "natdeploy profile --device cpu",
                                                  "natdeploy predict --device cpu --arch w1.0-r32-3333-3333-3333-3333-3333"))
    ap.add_argument("--version", action="version", version=f"natdeploy {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _parser("devices", sub, "List the device specs and whether each has a latency table.",
                _examples("natdeploy devices"))
    p.set_defaults(func=cmd_devices)

    p = _parser("arch", sub, "Describe an Arch: MAdds, params, dict, genome.",
                _examples("natdeploy arch w1.0-r224-3354-7376-3333-5566-7777 --space ofa",
                          "natdeploy arch '{\"ks\": [3,...], \"e\": [...], \"d\": [2,2,2,2,2], \"r\": 224}'"))
    p.add_argument("arch", help="Arch string or JSON dict")
    p.add_argument("--n-classes", type=int, default=1000)
    p.add_argument("--space", help="also print the genome in this search-space preset (nat, ofa, small)")
    p.set_defaults(func=cmd_arch)

    p = _parser("profile", sub, "Measure a device's op latencies and whole subnets into latency_tables/<device>.json.",
                _examples("natdeploy profile --device cpu", "natdeploy profile --device cpu-litert --resolutions 32 48",
                          "natdeploy profile --device cpu --space ofa --resolutions 160 224 --e2e-samples 50",
                          "natdeploy profile --device pixel4 --serial 192.168.1.20:5555 "
                          "--benchmark-binary ./benchmark_model",
                          "natdeploy profile --device pixel4 --threads 4 --cpu-mask f0 "
                          "--out latency_tables/pixel4-4t.json"))
    p.add_argument("--device", required=True, help="device name (see `natdeploy devices`) or path to a .yaml")
    p.add_argument("--space", help="search-space preset (default: the device spec's)")
    p.add_argument("--resolutions", type=int, nargs="+", help="resolutions to profile (default: spec's, else space's)")
    p.add_argument("--e2e-samples", type=int, default=30, help="random whole subnets to measure (default 30)")
    p.add_argument("--threads", type=int, help="override the spec's thread count")
    p.add_argument("--cpu-mask", help="override the spec's CPU affinity mask (hex): taskset on a phone, this "
                   "process's affinity on a local CPU spec")
    p.add_argument("--serial", help="phones: ADB serial, host:port for Wi-Fi debugging or a USB serial (default: "
                                    "the spec's, else the only USB device)")
    p.add_argument("--benchmark-binary", help="phones: path to TFLite's benchmark_model built for the phone "
                                              "(default: the spec's benchmark_binary)")
    p.add_argument("--keep-remote", action="store_true", help="phones: leave the pushed binary and models on the "
                                                              "phone (default: remove them at the end)")
    p.add_argument("--n-classes", type=int, default=1000, help="classifier width to profile (default 1000)")
    p.add_argument("--out", help="table path (default latency_tables/<device>.json)")
    p.add_argument("--force", action="store_true", help="add to a table measured under other conditions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_profile)

    p = _parser("predict", sub, "Predict the latency of Archs on a device, with the parts of the prediction.",
                _examples("natdeploy predict --device cpu --arch w1.0-r32-3333-3333-3333-3333-3333"))
    p.add_argument("--device", required=True)
    p.add_argument("--arch", required=True, nargs="+", help="Arch string(s) or JSON dict(s)")
    p.add_argument("--table", help="table path (default latency_tables/<device>.json)")
    p.add_argument("--n-classes", type=int, help="classifier width (default: the table's)")
    p.set_defaults(func=cmd_predict)

    p = _parser("search", sub, "Run NAT: adapt the supernet to your data while searching subnets for the devices.",
                _examples("natdeploy search --device cpu --max-latency 1.5ms --settings quick",
                          "natdeploy search --device cpu --max-latency 30ms --data ./flowers --space ofa",
                          "natdeploy search --device pixel4 --device cpu --max-latency pixel4=30ms cpu=8ms --data ./flowers",
                          "natdeploy search --device cpu --max-latency 2ms --settings quick --resume"))
    p.add_argument("--device", action="append", required=True, help="device to search for (repeatable)")
    p.add_argument("--max-latency", nargs="+", help="budget: 30ms, one per device, or DEVICE=30ms")
    p.add_argument("--data", help="ImageFolder directory (default: scikit-learn's bundled digits)")
    p.add_argument("--val", help="validation ImageFolder (default: a seeded 20%% split of --data)")
    p.add_argument("--train-per-class", type=int, help="use a seeded subset of this many training images per class")
    p.add_argument("--val-per-class", type=int, help="use at most this many validation images per class")
    p.add_argument("--supernet", default="scratch", help="OFA or natdeploy checkpoint path, or 'scratch' (default)")
    p.add_argument("--space", default="small", help="search-space preset: small (default), ofa, nat")
    p.add_argument("--resolutions", type=int, nargs="+", help="override the preset's resolutions")
    p.add_argument("--objectives", help="comma list from error,latency,madds,params (default error,latency)")
    p.add_argument("--settings", choices=["paper", "quick"], default="paper",
                   help="paper: NAT's reference settings (default); quick: a few-minute demo run")
    p.add_argument("--iterations", type=int)
    p.add_argument("--epochs-per-iter", type=int)
    p.add_argument("--warmup-epochs", type=int, help="sandwich-rule epochs before searching from scratch")
    p.add_argument("--initial-archs", type=int)
    p.add_argument("--population", type=int)
    p.add_argument("--generations", type=int)
    p.add_argument("--candidates", type=int, help="subnets evaluated per iteration")
    p.add_argument("--surrogate", choices=["rbf", "gp", "cart", "rf", "mlp", "as"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="parent folder of the run (default runs/)")
    p.add_argument("--name", help="run name (default <devices>-<space>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out/--name")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_search)

    from natdeploy.export.cli_command import add_export_parser

    add_export_parser(sub)

    p = _parser("tables", sub, "Manage latency tables.", _examples(
        "natdeploy tables import-ofa ../shared/data/ofa_note10_lut --device note10"))
    tsub = p.add_subparsers(dest="tables_command", metavar="SUBCOMMAND", required=True)
    q = _parser("import-ofa", tsub, "Import OFA's published <r>_lookup_table.yaml files as a natdeploy table.",
                _examples("natdeploy tables import-ofa ../shared/data/ofa_note10_lut --device note10"))
    q.add_argument("folder")
    q.add_argument("--device", required=True, help="name for the imported table")
    q.add_argument("--out", help="table path (default latency_tables/<device>.json)")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=cmd_tables_import_ofa)
    q = _parser("refit", tsub, "Re-calibrate a table's speed elasticity and refit its XGBoost models (what "
                "`natdeploy profile` does at the end), e.g. after editing or merging a table by hand.",
                _examples("natdeploy tables refit --device cpu",
                          "natdeploy tables refit --table latency_tables/cpu-2t.json"))
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", help="the table latency_tables/<device>.json")
    which.add_argument("--table", help="a table path")
    q.add_argument("--elasticity", help="'auto' (fit it) or a number; default: the device spec's speed_elasticity "
                   "(auto for a table of no known device)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_tables_refit)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (NatDeployError, ValueError) as exc:
        if os.environ.get("NATDEPLOY_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
