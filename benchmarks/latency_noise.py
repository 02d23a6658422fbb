"""Where repeated latency measurements of one device disagree: a variance split of the per-round anchor ratios.

Times ``--n`` random subnets in ``--batches`` batches, round-robin with the anchor, exactly as the profiler times
whole subnets (the spec's rounds, span and runs), in two ways:

1. **Fresh sessions every batch**, as ``natdeploy profile`` and benchmarks/latency_predictor.py do. In log space,
   ratio = subnet + batch + rest. Reports the SD of the batch effects (a shift shared by all the sessions built and
   timed together) and of the rest (one subnet in one batch).
2. **``--sessions`` sessions per subnet, built once** and timed in every batch. Reports the SD between sessions of
   one model (each session's own speed) and of one session between batches (timing noise).

Then, from part 1, how often two independent combinations of half the batches each agree within +-5%: the median
of the halves (what ``e2e_repeats`` keeps) and the mean of their logs.

First of all, part 0: one session of the anchor timed in ``--burst-windows`` back-to-back windows of 50 runs, each
window's fastest run kept. On a host whose speed comes in bursts (one AMD EPYC host flipped between two levels
1.5x apart for tenths of a second at a time) many windows sit far above the fastest ones, and nothing timed in
them compares with what was timed in a fast one.

    python benchmarks/latency_noise.py --device cpu-litert [--n 12] [--batches 6] [--sessions 3]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np

from natdeploy.devices import load_device
from natdeploy.latency.backends import get_backend
from natdeploy.latency.measure import time_interleaved
from natdeploy.space import SearchSpace

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record


def split(log_ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch effects, what is left) of a (batches, subnets) array of log ratios, each subnet's mean removed."""
    centred = log_ratio - log_ratio.mean(0)
    batch = centred.mean(1)
    return batch, centred - batch[:, None]


def halves_agreement(log_ratio: np.ndarray) -> dict[str, tuple[float, float]]:
    """For every split of the batches into two halves: (share within +-5%, SD of the difference) of the two
    halves' combined values, per combination rule."""
    b = len(log_ratio)
    out = {}
    for name, rule in (("median", np.median), ("mean of logs", np.mean)):
        diffs = []
        for first in itertools.combinations(range(b), b // 2):
            second = [i for i in range(b) if i not in first][:b // 2]
            diffs.append(rule(log_ratio[list(first)], 0) - rule(log_ratio[second], 0))
        d = np.concatenate(diffs)
        out[name] = (100 * float((np.abs(d) <= np.log(1.05)).mean()), float(d.std()))
    return out


def burst_windows(run, windows: int, runs: int = 50) -> np.ndarray:
    """The fastest of ``runs`` back-to-back calls of ``run`` (ms), in each of ``windows`` windows in a row."""
    for _ in range(runs):  # warm-up
        run()
    out = []
    for _ in range(windows):
        fastest = math.inf
        for _ in range(runs):
            t = time.perf_counter()
            run()
            fastest = min(fastest, time.perf_counter() - t)
        out.append(1e3 * fastest)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu-litert")
    ap.add_argument("--space", default="small")
    ap.add_argument("--n", type=int, default=12, help="subnets")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--sessions", type=int, default=3, help="sessions per subnet in part 2")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--burst-windows", type=int, default=60, help="windows of part 0")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.batches < 2 or args.n < 2 or args.burst_windows < 1:
        raise SystemExit("need --batches >= 2, --n >= 2 and --burst-windows >= 1")
    spec = load_device(args.device)
    backend = get_backend(spec)
    if not (backend.interleaves and spec.anchor):
        raise SystemExit(f"device {spec.name!r} does not time round-robin with an anchor (rounds > 1, anchor: true)")
    rng = np.random.default_rng(args.seed)
    archs = SearchSpace.preset(args.space).sample(rng, args.n)
    t0 = time.perf_counter()
    windows = burst_windows(backend.anchor_runners()[0], args.burst_windows)
    fast = float(np.percentile(windows, 10))
    print(f"part 0: {args.burst_windows} windows ({time.perf_counter() - t0:.0f} s)", flush=True)
    built = [backend.built_arch(a, 10) for a in archs]
    fresh = np.zeros((args.batches, args.n))
    for b in range(args.batches):
        order = rng.permutation(args.n)
        for i, m in zip(order, backend.measure_batch([built[i] for i in order], spec.e2e_warmup, spec.e2e_runs)):
            fresh[b, i] = np.log(m.anchor_ratio)
        print(f"part 1: batch {b + 1}/{args.batches} ({time.perf_counter() - t0:.0f} s)", flush=True)
    sessions = [[backend.runner(*x) for _ in range(args.sessions)] for x in built]
    kept = np.zeros((args.batches, args.n, args.sessions))
    flat = [(i, k) for i in range(args.n) for k in range(args.sessions)]
    for b in range(args.batches):
        order = rng.permutation(len(flat))
        with backend.timing_context():
            ms = time_interleaved([sessions[flat[j][0]][flat[j][1]] for j in order], spec.e2e_warmup, spec.e2e_runs,
                                  spec.rounds, spec.min_span_s, backend.anchor_runners())
        for j, m in zip(order, ms):
            kept[(b, *flat[j])] = np.log(m.anchor_ratio)
        print(f"part 2: batch {b + 1}/{args.batches} ({time.perf_counter() - t0:.0f} s)", flush=True)
    batch, rest = split(fresh)
    per_session = kept.mean(0)
    between_sessions = per_session - per_session.mean(1, keepdims=True)
    kept_batch, within_session = split(kept.reshape(args.batches, -1))  # each (subnet, session) its own column
    agree = halves_agreement(fresh)
    half = args.batches // 2
    pct = lambda x: f"{100 * float(np.std(x)):.2f}%"  # noqa: E731
    spread, slow_share = np.percentile(windows, 90) / fast, 100 * float((windows > 1.2 * fast).mean())
    body = f"""
Machine: {machine_line(spec.threads)}.
Command: `python benchmarks/latency_noise.py --device {args.device} --n {args.n} --batches {args.batches} --sessions {args.sessions} --space {args.space} --burst-windows {args.burst_windows}`
{args.n} random subnets of the `{args.space}` space, {spec.e2e_runs} runs each per batch in {spec.rounds} round-robin rounds
over >= {spec.min_span_s} s with the anchor; statistic: the per-round anchor ratio (median over rounds), in log
space (an SD of 1% is a 1% spread). Took {time.perf_counter() - t0:.0f} s.

| source | SD |
|---|---|
| part 1 (fresh sessions each batch): batch effect, shared by a batch's sessions | {pct(batch)} |
| part 1: one subnet in one batch, beyond its batch's effect | {pct(rest)} |
| part 2 ({args.sessions} sessions per subnet, kept): between sessions of one model | {pct(between_sessions)} |
| part 2: batch effect | {pct(kept_batch)} |
| part 2: one session in one batch, beyond its batch's effect | {pct(within_session)} |

Part 0 (bursts), the fastest run in each of {args.burst_windows} back-to-back windows of 50 anchor runs: p90 / p10
over the windows {spread:.2f}x, and {slow_share:.0f}% of the windows more than 1.2x the p10 window.

Two independent combinations of {half} fresh batches each agree within +-5% for
{agree['median'][0]:.1f}% of subnet-splits with the median (SD of the difference {100 * agree['median'][1]:.2f}%) and
{agree['mean of logs'][0]:.1f}% with the mean of logs (SD {100 * agree['mean of logs'][1]:.2f}%).
"""
    print(body)
    if not args.no_record:
        record(f"latency_noise --device {args.device}", body)


if __name__ == "__main__":
    main()
