"""Where LiteRT's offset between measuring sessions comes from (issue 17, items 2 and 4): the anchor's sessions.

On this VM, anchor-normalised LiteRT values of the same subnets differ by ~10% between measuring sessions
(``benchmarks/few_shot.py`` prints each set's median anchor latency and each predictor's median bias). This times
the same interpreters of ``--subnets`` seeded subnets (built once, never rebuilt) in ``--reps`` interleaved batches,
as tables time whole subnets (the spec's rounds, span and anchor), in one process, and rebuilds the anchor's
sessions (``Backend.anchor_runners``) before every other batch. Per batch it prints the anchor's p10, the subnets'
median anchor ratio relative to the first batch, and their median raw p10 relative to the first batch. Only where
the ratio moves more when the anchor's sessions are new than when they are kept, while the raw p10 does not, does the
offset belong to the anchor's interpreter instances; where the raw p10 moves as much at the same steps, it is the
machine's speed wandering in a way the anchor follows only in part.

    python benchmarks/anchor_sessions.py [--subnets 12] [--reps 10] [--device cpu-litert] [--no-record]
"""

from __future__ import annotations

import argparse
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

N_CLASSES = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subnets", type=int, default=12)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cpu-litert")
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    spec = load_device(args.device)
    if spec.transport != "local" or not spec.anchor or spec.rounds < 2:
        raise SystemExit(f"{args.device}: this benchmark needs a local spec that interleaves with an anchor")
    archs = SearchSpace.preset(spec.space).sample(np.random.default_rng(args.seed), args.subnets)
    t0 = time.perf_counter()
    rows, ratios, raws, fresh = [], [], [], []
    with get_backend(spec) as backend:
        runners = [backend.runner(*backend.built_arch(a, N_CLASSES)) for a in archs]
        for rep in range(args.reps):
            new = rep % 2 == 1
            with backend.timing_context():
                ms = time_interleaved(runners, spec.e2e_warmup, spec.e2e_runs, spec.rounds, spec.min_span_s,
                                      backend.anchor_runners(fresh=new))
            ratios.append(np.array([m.anchor_ratio for m in ms]))
            raws.append(np.array([m.p10_ms for m in ms]))
            fresh.append(new)
            rows.append(f"| {rep} | {'new' if new else 'kept'} | {ms[0].anchor_ms:.4f} | "
                        f"{np.median(ratios[-1] / ratios[0]):.4f} | {np.median(raws[-1] / raws[0]):.4f} |")
            print(rows[-1], flush=True)

    def step(values: list[np.ndarray], new: bool) -> float:
        """Median |log change| of the subnets' median from one batch to the next, where the anchor was new or kept."""
        return float(np.median([abs(np.log(np.median(values[k] / values[k - 1])))
                                for k in range(1, len(values)) if fresh[k] == new]))

    body = (f"Machine: {machine_line(spec.threads)}.\nCommand: `python benchmarks/anchor_sessions.py --subnets "
            f"{args.subnets} --reps {args.reps} --device {args.device} --seed {args.seed}` "
            f"({time.perf_counter() - t0:.0f} s). The same {args.subnets} subnet interpreters in every batch; the "
            "anchor's sessions rebuilt before every other batch.\n\n"
            "| batch | anchor sessions | anchor p10 ms | median anchor ratio / batch 0 | median raw p10 / batch 0 |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\nMedian change from the batch before (|log|): anchor ratio {step(ratios, True):.3f} where the "
              f"anchor's sessions were new, {step(ratios, False):.3f} where they were kept; raw p10 "
              f"{step(raws, True):.3f} and {step(raws, False):.3f}.")
    print(body)
    if not args.no_record:
        record("anchor_sessions", body)


if __name__ == "__main__":
    main()
