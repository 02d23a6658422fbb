"""``natdeploy search``: run NAT, adapting the supernet to the data while searching subnets for the devices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from natdeploy import settings
from natdeploy.cli.parsing import (add_command, add_table_flag, check_resolutions, examples, int_at_least,
                                   looks_like_path, non_negative_int, parse_budget, per_device, positive_int, seed_int,
                                   table_files)
from natdeploy.errors import ConfigError

HELP = "Run NAT: adapt the supernet to your data while searching subnets for the devices."
# A run of seconds, not minutes: no warm-up, one iteration of one epoch, few subnets, 32 px.
_TINY = ("--settings quick --resolutions 32 --iterations 1 --warmup-epochs 0 --initial-archs 4 --population 8 "
         "--generations 2 --candidates 2")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "search", HELP, examples(
        "natdeploy search --device cpu --max-latency 1.5ms --settings quick",
        f"natdeploy search --device cpu --max-latency 2ms {_TINY}",
        "natdeploy search --device cpu --max-latency 30ms --data ./flowers --space ofa",
        "natdeploy search --device pixel4 --device cpu --max-latency pixel4=30ms cpu=8ms --data ./flowers",
        "natdeploy search --device cpu --max-latency 2ms --settings quick --resume"))
    p.add_argument("--device", action="append", required=True, help="device to search for (repeatable)")
    p.add_argument("--max-latency", nargs="+", help="budget: 30ms, one per device, or DEVICE=30ms")
    p.add_argument("--data", help="ImageFolder directory (default: scikit-learn's bundled digits)")
    p.add_argument("--val", help="validation ImageFolder (default: a seeded 20%% split of --data)")
    p.add_argument("--train-per-class", type=positive_int, help="use a seeded subset of this many training images per class")
    p.add_argument("--val-per-class", type=positive_int, help="use at most this many validation images per class")
    p.add_argument("--supernet", default="scratch", help="'scratch' (default), an OFA or natdeploy checkpoint path, or an OFA name such as "
                   "ofa_mbv3_d234_e346_k357_w1.0 (fetched once into the cache; `natdeploy supernets` lists them)")
    p.add_argument("--space", default="small", help="search-space preset: small (default), ofa, nat")
    p.add_argument("--resolutions", type=positive_int, nargs="+", help="override the preset's resolutions")
    p.add_argument("--objectives", help="comma list from error,latency,madds,params (default error,latency)")
    p.add_argument("--settings", choices=["paper", "quick"], default="paper",
                   help="paper: NAT's reference settings (default); quick: a few-minute demo run")
    p.add_argument("--iterations", type=positive_int)
    p.add_argument("--epochs-per-iter", type=positive_int)
    p.add_argument("--warmup-epochs", type=non_negative_int, help="sandwich-rule epochs before searching from scratch")
    p.add_argument("--initial-archs", type=int_at_least(2), help="subnets of the initial archive (at least 2: "
                   "the smallest and the largest)")
    p.add_argument("--population", type=int_at_least(2))
    p.add_argument("--generations", type=positive_int)
    p.add_argument("--candidates", type=positive_int, help="subnets evaluated per iteration")
    p.add_argument("--surrogate", choices=["rbf", "gp", "cart", "rf", "mlp", "as"])
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default="runs", help="parent folder of the run (default runs/)")
    p.add_argument("--name", help="run name (default <devices>-<space>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out/--name")
    add_table_flag(p)
    p.set_defaults(func=run)


def parse_objectives(text: str | None) -> tuple[str, ...] | None:
    """``error,latency,madds`` -> a tuple of known objectives (None: the config's default)."""
    from natdeploy.search.problem import OBJECTIVES

    if not text:
        return None
    objectives = tuple(text.split(","))
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown objective {unknown[0]!r}; allowed: {list(OBJECTIVES)}")
    return objectives


class Progress:
    """Prints phases; a tqdm bar for training steps and evaluations (off when quiet or not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.disable, self.quiet, self.bar, self.kind = settings.progress_disable(quiet), quiet, None, None

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
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
        elif kind in ("step", "evaluated"):
            total = info["total"]
            if self.bar is None or self.kind != kind or self.bar.total != total:
                self.close()
                self.bar = tqdm(total=total, unit="step" if kind == "step" else "subnet", leave=False,
                                disable=self.disable)
                self.kind = kind
            self.bar.n = info.get("step", info.get("done"))
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    from natdeploy.data import load_digits_data, load_image_folder
    from natdeploy.latency.store import predictor_for
    from natdeploy.search import NATConfig, run_search
    from natdeploy.space import SearchSpace

    devices = list(dict.fromkeys(args.device))
    budgets = per_device(parse_budget(args.max_latency, "--max-latency", devices), devices)
    objectives = parse_objectives(args.objectives)
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
        "objectives": objectives, "seed": args.seed,
    }.items() if v is not None}
    config = NATConfig.quick(**overrides) if args.settings == "quick" else NATConfig(**overrides)
    name = args.name or f"{'-'.join(devices)}-{args.space}-s{args.seed}"
    run_dir = Path(args.out) / name
    progress = Progress(args.quiet)
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


def validate(args: argparse.Namespace) -> None:
    """Check the search's flags together before any slow work (and before a run folder exists); make paths
    absolute, so that the run records where its data and supernet are wherever it is exported from."""
    devices = list(dict.fromkeys(args.device))
    parse_budget(args.max_latency, "--max-latency", devices)
    parse_objectives(args.objectives)
    from natdeploy.space import SearchSpace

    SearchSpace.preset(args.space)  # an unknown preset is named before anything else
    check_resolutions(args.space, args.resolutions)
    image_folder_only = [f for f, v in (("--val", args.val), ("--train-per-class", args.train_per_class),
                                        ("--val-per-class", args.val_per_class)) if v is not None]
    if image_folder_only and not args.data:
        raise ConfigError(f"{', '.join(image_folder_only)} apply only with --data, which is not given (the default data, "
                          "scikit-learn's digits, has its own split)")
    for flag, value in (("--data", args.data), ("--val", args.val)):
        if value is not None:
            if not Path(value).is_dir():
                raise ConfigError(f"{flag} {value} is not a folder; give an ImageFolder directory (one sub-folder "
                                  "per class)")
            setattr(args, flag[2:], str(Path(value).resolve()))
    if args.supernet != "scratch" and looks_like_path(args.supernet):
        if not Path(args.supernet).is_file():
            raise ConfigError(f"--supernet {args.supernet} does not exist; give a checkpoint file, 'scratch', or an "
                              "OFA name (`natdeploy supernets` lists them)")
        args.supernet = str(Path(args.supernet).resolve())
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; give the folder that holds run folders")
    if args.name is not None and (not args.name.strip() or Path(args.name).name != args.name):
        raise ConfigError(f"--name {args.name!r} must be a plain folder name (no '/')")
    args.table_files = table_files(args.table, devices)
    from natdeploy.latency.store import has_table, missing_table_message

    for device in devices:
        if device not in args.table_files and not has_table(device):
            raise ConfigError(missing_table_message(device))
