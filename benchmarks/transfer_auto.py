"""Does few-shot transfer's ``auto`` pick well from N subnets? (issue 17 item 2)

``natdeploy profile --few-shot N`` chooses one of four transfer methods by cross-validation on the N subnets it
measured (``natdeploy.latency.transfer``, ``auto``). This benchmark judges that choice on data that no other
benchmark holds out: the whole subnets stored in the shipped tables (``latency_tables/``) and, where present, in the
fully profiled tables that ``benchmarks/few_shot.py`` caches. For each (source table, target table) pair and each N it
draws N of the target's subnets at random (``--draws`` times), transfers the source to them with every method and
with ``auto``, and scores each on the target's remaining subnets (within +-10%, at the machine speed of the N drawn
subnets, with the speed elasticity a transfer to that device would use). It prints the mean over the draws for:
``auto``, each method on its own, the best method of each draw (the oracle, which no rule can beat), and alternative
rules for ``auto`` (5 cross-validation seeds instead of 1; the fold hit rate within +-10% instead of the mean
squared log error).

Nothing is measured: it takes a minute or two.

    python benchmarks/transfer_auto.py [--ns 10 20 50] [--draws 20] [--no-record]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from natdeploy.devices import load_device
from natdeploy.latency import transfer as T
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.speed import SpeedModel
from natdeploy.latency.table import LatencyTable
from natdeploy.space import Arch

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "latency_tables"
CACHED = Path(__file__).resolve().parent / ".cache" / "few_shot"
# (source, target): shipped tables, then few_shot.py's cached full tables of this host (file name patterns) where
# they exist, each to a shipped table of another host or precision
PAIRS = [(SHIPPED / "cpu.json", SHIPPED / "cpu-litert.json"),
         (SHIPPED / "cpu-litert.json", SHIPPED / "cpu.json"),
         (SHIPPED / "cpu-litert.json", SHIPPED / "cpu-litert-int8.json"),
         (SHIPPED / "cpu-litert-int8.json", SHIPPED / "cpu-litert.json")]
CACHED_PAIRS = [("cpu-litert-*-c10-full.json", SHIPPED / "cpu-litert.json"),
                ("cpu-litert-*-c10-full.json", SHIPPED / "cpu-litert-int8.json"),
                ("cpu-[!l2]*-c10-full.json", SHIPPED / "cpu.json"),
                ("cpu-[!l2]*-c10-full.json", SHIPPED / "cpu-litert.json")]


def within10(pred: np.ndarray, true: np.ndarray) -> float:
    return 100 * float((np.abs(pred / true - 1) <= 0.10).mean())


def choose(errors: dict[str, list[np.ndarray]], seeds: int, criterion: str) -> str:
    """A rule for ``auto``: the lowest mean squared log error with ``auto``'s parsimony (what it does, with
    ``seeds`` = 1), or the highest fold hit rate within +-10% (the simplest method on a tie)."""
    if criterion == "msle":
        return T.simplest_best({m: float(np.mean([(e ** 2).mean() for e in errors[m][:seeds]])) for m in T.METHODS})
    score = {m: float(np.mean([(np.abs(np.exp(-e) - 1) <= 0.10).mean() for e in errors[m][:seeds]]))
             for m in T.METHODS}
    return next(m for m in T.METHODS if score[m] >= max(score.values()) - 1e-12)


RULES = {"auto (msle, 1 seed)": (1, "msle"), "msle, 5 seeds": (5, "msle"), "hit rate, 1 seed": (1, "hit"),
         "hit rate, 5 seeds": (5, "hit")}


def run_pair(source_path: Path, target_path: Path, ns: list[int], draws: int) -> list[tuple[str, list[float]]]:
    source = LatencyPredictor.load(source_path)
    target = LatencyTable.load(target_path)
    spec = load_device(target.device)
    elasticity, _ = T.transfer_elasticity(spec, source.table)
    keys = list(target.e2e)
    archs = [Arch.from_string(k) for k in keys]
    ms = [target.e2e[k] for k in keys]
    parts = T.parts_of(source, archs, target.n_classes)
    rows = []
    for n in ns:
        if n >= len(keys):
            continue
        got: dict[str, list[float]] = {k: [] for k in [*RULES, *T.METHODS, "oracle"]}
        for draw in range(draws):
            order = np.random.default_rng(1000 + draw).permutation(len(keys))
            fit, held = order[:n], order[n:]
            speed = SpeedModel.of([ms[i] for i in fit], elasticity, target.statistic)
            y = np.log([speed.normalise(ms[i]) for i in fit])
            true = np.array([speed.normalise(ms[i]) for i in held])
            p_fit = parts.take(fit)
            p_held = parts.take(held)
            score = {m: within10(T.predict(source, T.fit_method(source, p_fit, y, m), p_held), true)
                     for m in T.METHODS}
            errors = {m: [T.fold_errors(source, p_fit, y, m, seed) for seed in range(5)] for m in T.METHODS}
            for rule, (seeds, criterion) in RULES.items():
                got[rule].append(score[choose(errors, seeds, criterion)])
            for m in T.METHODS:
                got[m].append(score[m])
            got["oracle"].append(max(score.values()))
        means = [float(np.mean(got[k])) for k in [*RULES, *T.METHODS, "oracle"]]
        rows.append((f"| {source_path.stem} ({source.table.provenance.get('host')}) -> {target_path.stem} "
                     f"({target.provenance.get('host')}) | {n} | " + " | ".join(f"{v:.1f}" for v in means) + " |",
                     means))
        print(rows[-1][0], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    pairs = list(PAIRS)
    for pattern, target in CACHED_PAIRS:
        pairs += [(src, target) for src in sorted(CACHED.glob(pattern)) if "int8" not in src.name]
    t0 = time.perf_counter()
    header = ("| source -> target (subnets drawn from the target's own) | N | "
              + " | ".join([*RULES, *T.METHODS, "best per draw"]) + " |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rows = [row for src, tgt in pairs for row in run_pair(src, tgt, sorted(args.ns), args.draws)]
    lines += [text for text, _ in rows]
    mean = np.mean([values for _, values in rows], axis=0)
    lines.append(f"| **mean over the {len(rows)} rows** | | " + " | ".join(f"**{v:.1f}**" for v in mean) + " |")
    body = (f"Machine: {machine_line(1)}.\nCommand: `python benchmarks/transfer_auto.py --ns "
            f"{' '.join(map(str, sorted(args.ns)))} --draws {args.draws}` ({time.perf_counter() - t0:.0f} s; nothing "
            f"measured). Mean within +-10% over {args.draws} random draws of N subnets from the target table's own, "
            "each scored on the target's other subnets; every table's subnets, none of another benchmark's held-out "
            "sets. The first column is what `auto` does.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_record:
        record("transfer_auto", body)


if __name__ == "__main__":
    main()
