"""Which residual features predict whole subnets better, and does ``auto`` choose well? (issue 17 item 4)

The predictor's residual model (log of measured over the op sum) reads either the ``base`` features or ``body-groups``
(base of the network without its classifier, plus each op group's share of that op sum); ``LatencyPredictor.fit`` with ``auto`` cross-validates both on the
table's own subnets and keeps the better (``natdeploy.latency.predictor.choose_residual_features``). This benchmark
judges that on the tables' own whole subnets, as issue 17 asks (choose without the held-out set): outer 5-fold
cross-validation, ``--seeds`` shuffles, training on ``--sizes`` subnets of each outer training part (``all``: the
whole part); ``auto`` makes its choice inside the outer training part only (nested), so its score is honest. It
reports within +-5% / +-10% of the held-out fold's measurements, at the table's machine speed.

With ``--held-out CACHE`` it judges instead the first table on subnets measured apart from it: a
``benchmarks/few_shot.py`` cache of whole-subnet measurements on the same device and host
(``benchmarks/.cache/few_shot/<target>-<host>-c10-first.json``, beside the table that benchmark profiled,
``...-full.json``). ``--fit N`` of the cache's subnets, drawn at random, join the table's own to fit on (so that
``auto`` has enough to choose from); the rest are held out.

Nothing is measured: a few minutes.

    python benchmarks/residual_features.py [--tables latency_tables/cpu-litert.json ...] [--sizes 30 60 all]
    python benchmarks/residual_features.py --tables FULL.json --held-out FIRST.json --fit 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from natdeploy.latency.measure import Measurement
from natdeploy.latency.predictor import RESIDUAL_FEATURES, LatencyPredictor
from natdeploy.latency.table import LatencyTable
from natdeploy.space import Arch

try:
    from _common import machine_line, record
    from few_shot import scores as within
except ImportError:
    from benchmarks._common import machine_line, record
    from benchmarks.few_shot import scores as within

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "latency_tables" / f"{name}.json" for name in ("cpu", "cpu-litert", "cpu-litert-int8")]
CHOICES = (*RESIDUAL_FEATURES, "auto")


def with_e2e(table: LatencyTable, e2e: dict[str, Measurement]) -> LatencyTable:
    return LatencyTable(table.device, table.provenance, table.ops, dict(e2e), table.n_classes,
                        statistic=table.statistic, speed_elasticity=table.speed_elasticity,
                        resolution_ops=table.resolution_ops)


def nested_cv(table: LatencyTable, size: int | None, seeds: int) -> tuple[dict[str, tuple[float, float]], dict]:
    """Scores of each choice on the outer held-out folds, and how often ``auto`` picked each set."""
    keys = list(table.e2e)
    truth = np.array([table.speed.normalise(table.e2e[k]) for k in keys])
    preds: dict[str, list] = {c: [] for c in CHOICES}
    trues, picked = [], {name: 0 for name in RESIDUAL_FEATURES}
    for seed in range(seeds):
        perm = np.random.default_rng(seed).permutation(len(keys))
        for fold in range(5):
            held = perm[fold::5]
            train = np.setdiff1d(perm, held)
            if size is not None:
                train = np.random.default_rng(1000 + 5 * seed + fold).choice(train, min(size, len(train)),
                                                                               replace=False)
            part = with_e2e(table, {keys[i]: table.e2e[keys[i]] for i in train})
            archs = [Arch.from_string(keys[i]) for i in held]
            for choice in CHOICES:
                pred = LatencyPredictor.fit(part, seed, speed=table.speed, residual_features=choice)
                preds[choice].append(pred.predict(archs))
                if choice == "auto":
                    picked[pred.residual_features] += 1
            trues.append(truth[held])
    true = np.concatenate(trues)
    return {c: within(np.concatenate(p), true) for c, p in preds.items()}, picked


def cache_measurements(path: Path) -> dict[str, Measurement]:
    return {k: Measurement.from_dict(v["m"]) for k, v in json.loads(path.read_text()).items()}


def cross_validated(paths: list[Path], sizes: list[int | None], seeds: int) -> str:
    t0 = time.perf_counter()
    lines = ["| table | host | subnets | trained on | " + " | ".join(f"{c} +-5% / +-10%" for c in CHOICES)
             + " | auto picked |", "|---" * (5 + len(CHOICES)) + "|"]
    for path in paths:
        table = LatencyTable.load(path)
        for size in sizes:
            if size is not None and size >= 0.8 * len(table.e2e):
                continue
            scores, picked = nested_cv(table, size, seeds)
            lines.append(f"| `{path.name}` | {table.provenance.get('host')} | {len(table.e2e)} | "
                         f"{'4/5' if size is None else size} | "
                         + " | ".join(f"{a:.1f}% / {b:.1f}%" for a, b in scores.values()) + " | "
                         + ", ".join(f"{k} {v}" for k, v in picked.items()) + " |")
            print(lines[-1], flush=True)
    return (f"{time.perf_counter() - t0:.0f} s. Nested cross-validation on each table's own whole subnets: outer 5 "
            f"folds x {seeds} shuffles, each choice fitted on the outer training part (or a random subset of it of "
            "the size shown), `auto` choosing inside it; scored on the outer held-out folds at the table's machine "
            "speed.\n\n" + "\n".join(lines))


def held_out_check(path: Path, cache_path: Path, n_fit: int) -> str:
    table = LatencyTable.load(path)
    cache = cache_measurements(cache_path)
    if set(cache) & set(table.e2e):
        raise SystemExit(f"{len(set(cache) & set(table.e2e))} subnets of {cache_path} are in the table's own")
    keys = sorted(cache)
    fit = set(np.random.default_rng(0).choice(keys, min(n_fit, len(keys) - 1), replace=False).tolist())
    table = with_e2e(table, {**table.e2e, **{k: cache[k] for k in fit}})
    held = {k: cache[k] for k in keys if k not in fit}
    archs = [Arch.from_string(k) for k in held]
    true = np.array([table.speed.normalise(m) for m in held.values()])
    rows = ["| choice | picked | within +-5% | within +-10% | median predicted / measured |", "|---|---|---|---|---|"]
    for choice in CHOICES:
        pred = LatencyPredictor.fit(table, residual_features=choice)
        p = pred.predict(archs)
        a, b = within(p, true)
        rows.append(f"| {choice} | {pred.residual_features} | {a:.1f}% | {b:.1f}% | {np.median(p / true):.3f} |")
    return (f"Held out: {len(held)} subnets of `{cache_path.name}`, predicted by `{path.name}` ({len(table.ops)} "
            f"ops, fitted on its {len(table.e2e) - len(fit)} subnets and {len(fit)} more of the cache, drawn at "
            "random), at its machine speed.\n\n" + "\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", nargs="+", type=Path, default=SHIPPED)
    ap.add_argument("--sizes", nargs="+", default=["30", "60", "all"], help="training subnets per outer fold")
    ap.add_argument("--seeds", type=int, default=3, help="shuffles of the outer 5-fold split")
    ap.add_argument("--held-out", type=Path, help="few_shot.py cache of subnets measured apart from the table")
    ap.add_argument("--fit", type=int, default=0, help="with --held-out: this many of its subnets join the table's")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    try:
        sizes = [None if s == "all" else int(s) for s in args.sizes]
    except ValueError:
        ap.error(f"--sizes takes numbers or 'all', got {' '.join(args.sizes)}")
    command = "python benchmarks/residual_features.py" + "".join(" " + a for a in sys.argv[1:])
    body = f"Machine: {machine_line(1)}.\nCommand: `{command}` (nothing measured). "
    body += held_out_check(args.tables[0], args.held_out, args.fit) if args.held_out else cross_validated(
        args.tables, sizes, args.seeds)
    print(body)
    if not args.no_record:
        # a held-out check gets a section of its own per cache: the cross-validation of the shipped tables stays
        record("residual_features" + (f" --held-out {args.held_out.stem}" if args.held_out else ""), body)


if __name__ == "__main__":
    main()
