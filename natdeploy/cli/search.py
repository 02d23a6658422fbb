"""``natdeploy search``: run NAT, adapting the supernet to the data while searching subnets for the devices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from natdeploy.cli.parsing import (add_command, add_table_flag, check_resolutions, examples, int_at_least,
                                   looks_like_path, non_negative_int, parse_budget, parse_bytes, per_device,
                                   positive_int, seed_int, table_files)
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
        f"natdeploy search --device cpu --max-latency 2ms {_TINY} --resume",
        "natdeploy search --device cpu --max-latency 30ms --data ./flowers --space ofa --supernet "
        "ofa_mbv3_d234_e346_k357_w1.0 --accelerator cuda --precision bf16 --workers 8",
        "torchrun --nproc-per-node 2 -m natdeploy search --device cpu --max-latency 2ms " + _TINY))
    p.add_argument("--device", action="append", required=True, help="device to search for (repeatable)")
    p.add_argument("--max-latency", nargs="+", help="budget: 30ms, one per device, or DEVICE=30ms")
    p.add_argument("--data", help="ImageFolder directory (default: scikit-learn's bundled digits)")
    p.add_argument("--val", help="validation ImageFolder (default: a seeded 20%% split of --data)")
    p.add_argument("--train-per-class", type=positive_int, help="use a seeded subset of this many training images per class")
    p.add_argument("--val-per-class", type=positive_int, help="use at most this many validation images per class")
    p.add_argument("--supernet", action="append", help="'scratch' (default), an OFA or natdeploy checkpoint path, or an OFA name such as "
                   "ofa_mbv3_d234_e346_k357_w1.0 (fetched once into the cache; `natdeploy supernets` lists them); "
                   "repeat it with one supernet per width to search both widths, as NAT does")
    p.add_argument("--width", type=width_value, nargs="+", metavar="W",
                   help="from scratch: the width multipliers to search, one supernet each (default: the space's "
                        "first), e.g. --width 1.0 1.2")
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
    p.add_argument("--accuracy-predictor", metavar="MODULE:FUNCTION",
                   help="search with your own accuracy predictor (a callable on a batch of genomes, or of Archs when "
                        "it has takes='archs') instead of NAT: no data, no supernet; writes <out>/<name>/front.json")
    g = p.add_argument_group("where and how it trains (see also torchrun)")
    g.add_argument("--accelerator", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): CUDA when a GPU is visible, else the CPU")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (default); bf16 or fp16 autocast (fp16 with a gradient scaler, CUDA only)")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: the cores available, divided "
                                               "among the processes on this node)")
    g.add_argument("--data-loading", choices=["auto", "memory", "stream"], default="auto",
                   help="memory: decode every image once; stream: DataLoader workers decode on the fly; auto "
                        "(default): memory when the decoded images fit --memory-budget")
    g.add_argument("--memory-budget", help="bytes the decoded images may take in memory, e.g. 8GB or 500MB "
                                          "(default: half of the memory available)")
    g.add_argument("--workers", type=int, help="stream mode: decoding processes (default: the cores available)")
    g.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="save the training state inside long phases at least this often (default 10; also "
                        "after every epoch)")
    g.add_argument("--batch-norm", choices=["local", "sync"], default="local",
                   help="with several processes: local (default) normalises each rank's shard with its own BN "
                        "statistics and averages the running statistics every step; sync uses the global batch's "
                        "(exact, but about 400 small all-reduces per step)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write metrics.jsonl's records as TensorBoard event files in <run>/tensorboard")
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


def run(args: argparse.Namespace) -> int:
    import logging
    import time

    from natdeploy.distributed import destroy, init_runtime
    from natdeploy.latency.store import predictor_for
    from natdeploy.search import NATConfig, run_search
    from natdeploy.space import SearchSpace
    from natdeploy.stream import load_image_data

    t_start = time.perf_counter()
    devices = list(dict.fromkeys(args.device))
    budgets = per_device(parse_budget(args.max_latency, "--max-latency", devices), devices)
    objectives = parse_objectives(args.objectives)
    memory_budget = parse_bytes(args.memory_budget, "--memory-budget") if args.memory_budget else None
    if args.checkpoint_minutes <= 0:
        raise ConfigError(f"--checkpoint-minutes {args.checkpoint_minutes:g} must be positive")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be at least 1")
    _check_loading_flags(args)
    space = SearchSpace.preset(args.space, resolutions=args.resolutions, widths=args.width)
    if args.accuracy_predictor:
        return _run_plugged(args, space, devices, budgets, objectives)
    name = args.name or f"{'-'.join(devices)}-{args.space}-s{args.seed}"
    run_dir = Path(args.out) / name
    runtime = init_runtime(args.accelerator, args.precision, batch_norm=args.batch_norm)
    try:
        _set_threads(args.threads)
        if not runtime.is_main:  # one voice: rank 0 prints progress and results, the others only warnings
            logging.getLogger().setLevel(logging.WARNING)
        quiet = args.quiet or not runtime.is_main
        if runtime.distributed and runtime.is_main:
            print(f"[natdeploy] {runtime.world_size} processes on {runtime.device.type}", file=sys.stderr)
        data = load_image_data(args.data, val=args.val, size=max(space.resolutions), seed=args.seed,
                               limit_per_class=args.train_per_class, val_limit_per_class=args.val_per_class,
                               mode=args.data_loading, memory_budget_bytes=memory_budget, workers=args.workers)
        if not args.data and not quiet:
            print("note: no --data given; searching on scikit-learn's bundled digits (the embedded default)",
                  file=sys.stderr)
        predictors = {d: predictor_for(d) for d in devices}
        overrides = {k: v for k, v in {
            "iterations": args.iterations, "epochs_per_iter": args.epochs_per_iter,
            "warmup_epochs": args.warmup_epochs, "initial_archs": args.initial_archs,
            "population": args.population, "generations": args.generations, "candidates_per_iter": args.candidates,
            "surrogate": args.surrogate, "batch_size": args.batch_size, "objectives": objectives, "seed": args.seed,
        }.items() if v is not None}
        config = NATConfig.preset(args.settings, pretrained=args.supernet != ["scratch"], **overrides)
        progress = _progress(args, config, overrides, data, quiet)
        try:
            record = run_search(run_dir, data, predictors, budgets, space, config, supernet=args.supernet,
                                resume=args.resume, on_event=progress, extend=args.iterations is not None,
                                runtime=runtime, checkpoint_every_s=60.0 * args.checkpoint_minutes,
                                tensorboard=args.tensorboard, widths=args.width)
        finally:
            progress.close()
    except KeyboardInterrupt as exc:
        _hint_if_unstarted(exc, run_dir, args.resume)
        raise
    finally:
        destroy()
    if not runtime.is_main:
        return 0
    print(record["summary"])
    best = record["best"]
    if best:
        lat = ", ".join(f"{d} {v:.3f} ms" for d, v in best["latency_ms"].items())
        print(f"\nbest within budget: {best['arch']}  accuracy {100 * best['accuracy']:.2f}%  ({lat})")
    else:
        print("\nno evaluated subnet meets every budget")
    widths = record.get("space", {}).get("widths") or [None]
    nets = "supernet.pt" if len(widths) == 1 else " ".join(f"supernet-w{float(w)}.pt" for w in widths)
    print(f"outputs in {run_dir}: archive.jsonl pareto.json pareto.png best.json report.html metrics.jsonl {nets}")
    print(f"elapsed {time.perf_counter() - t_start:.1f} s")
    return 0


def _hint_if_unstarted(exc: KeyboardInterrupt, run_dir: Path, resume: bool) -> None:
    """Ctrl-C before a new run's first checkpoint: say to rerun as it was, since --resume would find no state."""
    from natdeploy.cli.errors import UNSTARTED_SEARCH_HINT
    from natdeploy.run_folder import RunFolder

    if not resume and not RunFolder(run_dir).has_state():
        exc.hint = UNSTARTED_SEARCH_HINT  # type: ignore[attr-defined]


def _progress(args: argparse.Namespace, config: Any, overrides: dict[str, Any], data: Any, quiet: bool) -> Any:
    """The search's progress printer, told the chosen settings and, for paper settings, the quick ones' plan
    (with the same overrides), so that its run-time estimate can say how to shorten the run."""
    from natdeploy.progress import Progress, run_plan
    from natdeploy.search import NATConfig

    label = f"--settings {args.settings} ({config.iterations} iteration{'s' * (config.iterations != 1)})"
    shorter = None
    if args.settings == "paper":
        quick = NATConfig.preset("quick", pretrained=args.supernet != ["scratch"], **overrides)
        plan = run_plan(quick, len(data.train_y), len(data.val_y), args.supernet == ["scratch"],
                        supernets=len(args.width or args.supernet))
        shorter = ("--settings quick", plan)
    return Progress(quiet, label, shorter)


# NAT flags that a plugged-in accuracy predictor does not use: refused with it, never ignored.
_NAT_ONLY = ("data", "val", "train_per_class", "val_per_class", "iterations", "epochs_per_iter", "warmup_epochs",
             "initial_archs", "candidates", "surrogate", "batch_size", "workers", "memory_budget", "threads")


def _run_plugged(args: argparse.Namespace, space: Any, devices: list[str], budgets: dict[str, float],
                 objectives: tuple[str, ...] | None) -> int:
    """``--accuracy-predictor``: the search engine alone, with the user's predictor and the devices' tables."""
    import json

    from natdeploy.fileio import atomic_write_text
    from natdeploy.latency.store import predictor_for
    from natdeploy.search import load_callable, search_front

    used = [f"--{k.replace('_', '-')}" for k in _NAT_ONLY if getattr(args, k) is not None]
    used += [flag for flag, on in (("--supernet", args.supernet != ["scratch"]), ("--resume", args.resume),
                                   ("--data-loading", args.data_loading != "auto"),
                                   ("--accelerator", args.accelerator != "auto"),
                                   ("--precision", args.precision != "fp32"),
                                   ("--batch-norm", args.batch_norm != "local"),
                                   ("--tensorboard", args.tensorboard)) if on]
    if used:
        raise ConfigError(f"{', '.join(used)} apply to NAT's own search; --accuracy-predictor searches with your "
                          "predictor alone")
    accuracy = load_callable(args.accuracy_predictor)
    predictors = {d: predictor_for(d) for d in devices}
    quick = args.settings == "quick"
    result = search_front(space, accuracy, predictors, budgets, objectives=objectives or ("error", "latency"),
                          population=args.population or (40 if quick else 100),
                          generations=args.generations or (50 if quick else 500), seed=args.seed)
    run_dir = Path(args.out) / (args.name or f"{'-'.join(devices)}-{space.name}-plugged-s{args.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    best = result.best()
    record = {"accuracy_predictor": args.accuracy_predictor, "budgets_ms": budgets, "front": result.rows(),
              "best": None if best is None else result.rows()[best], "n_evaluations": result.n_evaluations}
    atomic_write_text(run_dir / "front.json", json.dumps(record, indent=1) + "\n")
    for row in record["front"][:12]:
        lat = ", ".join(f"{k.split(':', 1)[1]} {v:.3f} ms" for k, v in row.items() if k.startswith("latency:"))
        print(f"{row['arch']}  accuracy {100 * row['accuracy']:.2f}%  ({lat})")
    if best is None:
        print("\nno subnet the search met keeps every budget")
    else:
        print(f"\nbest within budget: {record['best']['arch']}  accuracy {100 * record['best']['accuracy']:.2f}%")
    print(f"front of {len(result)} subnets ({result.n_evaluations} predictor evaluations) in {run_dir / 'front.json'}")
    return 0


def _check_loading_flags(args: argparse.Namespace) -> None:
    """Data-loading flags that the chosen mode would not use are refused, never ignored."""
    if not args.data and (args.data_loading == "stream" or args.workers is not None or args.memory_budget):
        raise ConfigError("--data-loading stream, --workers and --memory-budget need --data (the embedded digits "
                          "are always held in memory)")
    if args.workers is not None and args.data_loading == "memory":
        raise ConfigError("--workers applies to streamed data; drop it or use --data-loading stream or auto")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers {args.workers} must be 0 or more")
    if args.memory_budget and args.data_loading != "auto":
        raise ConfigError(f"--memory-budget chooses the mode under --data-loading auto; with "
                          f"--data-loading {args.data_loading} it has nothing to choose")


def _set_threads(threads: int | None) -> None:
    """torch's CPU threads: ``threads``; else as OMP_NUM_THREADS says (torchrun sets 1 per process), else the cores
    this process may use, shared among this node's processes."""
    import os

    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return
    if threads is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        threads = max(1, len(os.sched_getaffinity(0)) // max(1, local))
    torch.set_num_threads(threads)


def width_value(text: str) -> float:
    """A --width value: one of OFA MobileNetV3's width multipliers."""
    from natdeploy.space import WIDTHS

    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in WIDTHS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a supernet width; allowed: "
                                         f"{' '.join(f'{w:g}' for w in WIDTHS)}")
    return value


def _check_supernets(sources: list[str], widths: list[float] | None) -> list[str]:
    """The --supernet values (absolute where they are paths), refusing what cannot make one supernet per width."""
    from natdeploy.supernet.hub import OFA_SUPERNETS

    if widths and len(set(widths)) < len(widths):
        raise ConfigError(f"--width {' '.join(f'{w:g}' for w in widths)} names a width twice")
    if widths and sources != ["scratch"]:
        raise ConfigError("--width applies from scratch; each --supernet checkpoint has its own width (drop --width, "
                          "or drop --supernet)")
    if len(sources) > 1 and "scratch" in sources:
        raise ConfigError("--supernet scratch cannot be combined with other --supernet checkpoints; for several "
                          "widths from scratch use --width, e.g. --width 1.0 1.2")
    out = []
    for source in sources:
        if source != "scratch" and looks_like_path(source):
            if not Path(source).is_file():
                raise ConfigError(f"--supernet {source} does not exist; give a checkpoint file, 'scratch', or an "
                                  "OFA name (`natdeploy supernets` lists them)")
            source = str(Path(source).resolve())
        if source in out:
            raise ConfigError(f"--supernet {source} is given twice; give one supernet per width")
        out.append(source)
    named = [OFA_SUPERNETS[v] for v in out if v in OFA_SUPERNETS]
    if len(set(named)) < len(named):
        twice = next(w for w in named if named.count(w) > 1)
        raise ConfigError(f"two --supernet of width {twice:g}; give one supernet per width")
    return out


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
    args.supernet = _check_supernets(args.supernet or ["scratch"], args.width)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; give the folder that holds run folders")
    if args.name is not None and (not args.name.strip() or Path(args.name).name != args.name):
        raise ConfigError(f"--name {args.name!r} must be a plain folder name (no '/')")
    args.table_files = table_files(args.table, devices)
    from natdeploy.latency.store import has_table, missing_table_message

    for device in devices:
        if device not in args.table_files and not has_table(device):
            raise ConfigError(missing_table_message(device))
