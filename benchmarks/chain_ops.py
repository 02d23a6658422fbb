"""Does timing ops in network chains make a better LiteRT table? (issue 17 item 4: the chain-timing op model)

``benchmarks/litert_gap.py`` found that a LiteRT subnet runs at a steadier multiple of its ops' sum when each op is
timed in network order (once per pass, between the other ops of its network) than when it is timed alone and
warm, as tables time ops. This benchmark asks whether that carries over to a whole table and its predictor, judged
only on the table's own subnets (no held-out set of another benchmark is looked at):

1. profile a ``cpu-litert``-style table here as the profiler does: every op warm, and ``--subnets`` random whole
   subnets (10 classes);
2. time every op of the table again in chains of two kinds: ``full``, for each resolution ``--sets`` sets of 9
   full-depth networks in which every block position takes each (kernel, expand) choice once; and ``sampled``,
   subnets drawn as the search draws them (random depths), picked greedily from 3000 draws until every op key is in
   at least ``--sets`` of them. Each chain is timed round-robin as tables time batches (20 rounds over >= 2 s),
   each op once per pass, with the anchor subnet timed at the start and end of every round; an op's value is the
   median over the networks it was timed in of its per-round ratio to the anchor;
3. fit the table's predictor (LUT + XGBoost residual) with each op set, on the same whole subnets, and compare
   them by 5-fold cross-validation (3 seeds): how often a held-out subnet is predicted within +-5% and +-10%, and
   the spread of measured / op sum across the subnets (p90 / p10; the residual model carries a constant, not a
   spread).

The timed ops of each kind are cached in ``--out``, so a rerun with the same arguments times nothing again.

    python benchmarks/chain_ops.py [--subnets 60] [--sets 3] [--device cpu-litert] [--out DIR] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from natdeploy.devices import load_device
from natdeploy.fileio import atomic_write_text
from natdeploy.latency.backends import get_backend
from natdeploy.latency.measure import Measurement, _timed
from natdeploy.latency.ops import arch_ops
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.profiler import profile_device
from natdeploy.latency.table import LatencyTable
from natdeploy.space import EXPANDS, KERNELS, MAX_DEPTH, N_BLOCKS, N_STAGES, Arch, SearchSpace

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record

N_CLASSES, PASSES = 10, 5
COMBOS = [(k, e) for k in KERNELS for e in EXPANDS]


def full_chains(resolutions, width: float, sets: int, rng: np.random.Generator) -> list[Arch]:
    """Full-depth networks in which, per set and resolution, every block position takes every choice once."""
    out = []
    for r in resolutions:
        for _ in range(sets):
            perms = [rng.permutation(len(COMBOS)) for _ in range(N_BLOCKS)]
            for c in range(len(COMBOS)):
                choice = [COMBOS[p[c]] for p in perms]
                out.append(Arch(ks=tuple(k for k, _ in choice), e=tuple(e for _, e in choice),
                                d=(MAX_DEPTH,) * N_STAGES, r=r, w=width))
    return out


def sampled_chains(space: SearchSpace, resolutions, sets: int, rng: np.random.Generator) -> list[Arch]:
    """Subnets drawn as the search draws them, picked greedily until every op key is in at least ``sets`` of them."""
    pool = SearchSpace(resolutions=tuple(resolutions), widths=space.widths).sample(rng, 3000)
    keys = [{op.key for op in arch_ops(a, N_CLASSES)} for a in pool]
    count = dict.fromkeys(set().union(*keys), 0)
    chosen: list[Arch] = []
    while any(v < sets for v in count.values()):
        best = max(range(len(pool)), key=lambda i: sum(count[k] < sets for k in keys[i]))
        chosen.append(pool[best])
        for k in keys[best]:
            count[k] += 1
    return chosen


def time_chain(runners, anchor, rounds: int, min_span_s: float, warmup: int) -> list[Measurement]:
    """Each runner's measurement when the chain is run in order, each once per pass, PASSES passes per round,
    with the anchor (several sessions, in turn) timed before and after every round."""
    for fn in (*runners, *anchor):
        for _ in range(warmup):
            fn()
    samples = [[] for _ in runners]
    ratios = [[] for _ in runners]
    anchor_samples: list[float] = []
    start = time.perf_counter()

    def visit(k: int) -> float:
        times = [_timed(anchor[k % len(anchor)]) for _ in range(PASSES)]
        anchor_samples.extend(times)
        return min(times)

    for k in range(rounds):
        before = visit(2 * k)
        per_pass = [[_timed(fn) for fn in runners] for _ in range(PASSES)]
        after = visit(2 * k + 1)
        for i in range(len(runners)):
            times = [p[i] for p in per_pass]
            samples[i].extend(times)
            ratios[i].append(min(times) / ((before + after) / 2))
        wait = start + min_span_s * (k + 1) / rounds - time.perf_counter()
        if wait > 0 and k + 1 < rounds:
            time.sleep(wait)
    a10 = float(np.percentile(anchor_samples, 10))
    return [replace(Measurement.from_samples(s, warmup), anchor_ms=a10, anchor_ratio=statistics.median(r))
            for s, r in zip(samples, ratios)]


def chain_ops(backend, table: LatencyTable, archs: list[Arch]) -> dict[str, Measurement]:
    """Every op key of ``archs``, timed in the chains ``archs`` (combined over the chains it was timed in)."""
    spec = backend.spec
    built: dict[str, object] = {}
    parts: dict[str, list[Measurement]] = {}
    anchor = backend.anchor_runners()
    for n, arch in enumerate(archs):
        ops = arch_ops(arch, N_CLASSES)
        for op in ops:
            if op.key not in built:
                built[op.key] = backend.runner(*backend.built_op(op))
        runners = [built[op.key] for op in ops]
        for op, m in zip(ops, time_chain(runners, anchor, spec.rounds, spec.min_span_s, spec.warmup)):
            parts.setdefault(op.key, []).append(m)
        if (n + 1) % 15 == 0:
            print(f"  chain {n + 1}/{len(archs)}, {len(parts)} op keys timed", flush=True)
    missing = set(table.ops) - set(parts)
    if missing:
        raise SystemExit(f"the chains missed {len(missing)} of the table's ops, e.g. {sorted(missing)[0]}")
    return {key: Measurement.combine(ms) for key, ms in parts.items()}


def cross_validate(table: LatencyTable, seeds: int = 3, folds: int = 5) -> dict[str, float]:
    """Held-out accuracy of the table's predictor on its own subnets, and the spread of measured / op sum."""
    from sklearn.model_selection import KFold

    keys = list(table.e2e)
    errs = []
    for seed in range(seeds):
        for train, held in KFold(folds, shuffle=True, random_state=seed).split(keys):
            sub = replace(table, e2e={keys[i]: table.e2e[keys[i]] for i in train})
            pred = LatencyPredictor.fit(sub, seed)
            archs = [Arch.from_string(keys[i]) for i in held]
            y = np.array([pred.speed.normalise(table.e2e[keys[i]]) for i in held])
            errs.extend(np.abs(pred.predict(archs, N_CLASSES) / y - 1))
    plain = LatencyPredictor.fit(replace(table, e2e={}), 0)  # the sum of ops alone
    archs = [Arch.from_string(k) for k in keys]
    ratio = np.array([plain.speed.normalise(m) for m in table.e2e.values()]) / plain.predict(archs, N_CLASSES)
    errs = np.array(errs)
    return {"w5": float((errs <= 0.05).mean()), "w10": float((errs <= 0.10).mean()),
            "ratio": float(np.median(ratio)), "spread": float(np.percentile(ratio, 90) / np.percentile(ratio, 10))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subnets", type=int, default=60)
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--device", default="cpu-litert")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / ".cache" / "chain_ops")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    spec = load_device(args.device)
    if spec.runtime != "litert" or spec.transport != "local" or not spec.anchor:
        raise SystemExit(f"{args.device}: this benchmark times LiteRT on this host with an anchor "
                         "(runtime litert, transport local, anchor: true)")
    space = SearchSpace.preset(spec.space)
    resolutions = list(spec.resolutions or space.resolutions)
    args.out.mkdir(parents=True, exist_ok=True)
    warm_path = args.out / f"{args.device}-warm-{args.subnets}.json"
    t0 = time.perf_counter()
    with get_backend(spec) as backend:
        profile_device(spec, space, resolutions, args.subnets, N_CLASSES, warm_path, seed=args.seed, quiet=True,
                       backend=backend)
        t_profile = time.perf_counter() - t0
        warm = LatencyTable.load(warm_path)
        print(f"warm table: {len(warm.ops)} ops, {len(warm.e2e)} subnets ({t_profile:.0f} s)", flush=True)
        rows = {"ops alone, warm (as tables time them)": cross_validate(warm)}
        t_chain = {}
        for kind, make in (("full", lambda rng: full_chains(resolutions, space.widths[0], args.sets, rng)),
                           ("sampled", lambda rng: sampled_chains(space, resolutions, args.sets, rng))):
            archs = make(np.random.default_rng(args.seed))
            cache = args.out / f"{args.device}-chains-{kind}-{args.sets}-s{args.seed}.json"
            t1 = time.perf_counter()
            if cache.exists():
                ops = {k: Measurement.from_dict(v) for k, v in json.loads(cache.read_text()).items()}
            else:
                ops = chain_ops(backend, warm, archs)
                atomic_write_text(cache, json.dumps({k: m.to_dict() for k, m in ops.items()}))
            t_chain[kind] = time.perf_counter() - t1
            rows[f"ops in {len(archs)} {kind} network chains, once per pass"] = cross_validate(replace(warm, ops=ops))
    lines = ["| op values | within +-5% | within +-10% | measured / op sum, median | spread (p90 / p10) |",
             "|---|---|---|---|---|"]
    for what, r in rows.items():
        lines.append(f"| {what} | {100 * r['w5']:.1f}% | {100 * r['w10']:.1f}% | {r['ratio']:.3f} | "
                     f"{r['spread']:.3f} |")
    times = ", ".join(f"{k} chains {v:.0f} s" for k, v in t_chain.items())
    body = (f"Machine: {machine_line(spec.threads)}.\nCommand: `python benchmarks/chain_ops.py --subnets "
            f"{args.subnets} --sets {args.sets} --device {args.device} --seed {args.seed}` (warm profile "
            f"{t_profile:.0f} s, {times}; about 0 s where cached in `--out` by an earlier run). {len(warm.ops)} ops "
            f"of the `{spec.space}` space, "
            f"{len(warm.e2e)} whole subnets of its own, {N_CLASSES} classes; 5-fold cross-validation, 3 seeds, on "
            "those subnets only.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_record:
        record("chain_ops", body)


if __name__ == "__main__":
    main()
