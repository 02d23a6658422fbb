"""Why ops timed alone mis-predict a LiteRT network (issue 17 item 4): one controlled experiment per candidate.

For seeded random subnets (not the held-out sets of other benchmarks), each built as the profiler builds them,
this times in one process, one thread, round-robin over 20 rounds:

- the whole subnet (5 runs in a row per round, the fastest kept, as tables time whole subnets);
- each of its ops alone, warm: 5 runs in a row, the fastest (as tables time ops);
- each of its ops in network order, each once per pass (between two runs of an op, the other ops of the network
  ran, so it meets the caches as it does inside the network);
- the invoke of the smallest op model (a bound on the per-invoke overhead that a sum of ops adds);
- the TFLite op count of the network against that of its ops' models (fused activations, padding, reshapes).

It prints, per subnet and over all, whole / sum for each kind of op sum. A model of the ops is better where this
ratio is nearer a constant across subnets (the residual model carries the constant, not the spread).

    python benchmarks/litert_gap.py [--subnets 8] [--device cpu-litert] [--no-record]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from natdeploy.devices import load_device
from natdeploy.latency.backends import get_backend
from natdeploy.latency.measure import _timed  # one run of a callable, in ms: the timer every table uses
from natdeploy.latency.ops import arch_ops
from natdeploy.space import SearchSpace

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record

ROUNDS, IN_A_ROW, N_CLASSES = 20, 5, 10


def measure(backend, arch) -> dict:
    """Whole subnet, warm op sum and in-order op sum of ``arch`` (ms), and its TFLite op counts."""
    net = backend.runner(*backend.built_arch(arch, N_CLASSES))
    ops = arch_ops(arch, N_CLASSES)
    parts = [backend.runner(*backend.built_op(op)) for op in ops]
    tfl_net = len(net.__self__._get_ops_details())  # runner is the interpreter's bound invoke
    tfl_parts = sum(len(p.__self__._get_ops_details()) for p in parts)
    for fn in (net, *parts):
        for _ in range(IN_A_ROW):
            fn()
    whole, warm, in_order = [], [[] for _ in parts], [[] for _ in parts]
    for _ in range(ROUNDS):
        whole.append(min(_timed(net) for _ in range(IN_A_ROW)))
        for i, fn in enumerate(parts):
            warm[i].append(min(_timed(fn) for _ in range(IN_A_ROW)))
        for _ in range(IN_A_ROW):
            for i, fn in enumerate(parts):
                in_order[i].append(_timed(fn))
    return {"arch": arch.to_string(), "r": arch.r, "ops": len(ops), "tfl_net": tfl_net, "tfl_parts": tfl_parts,
            "whole": float(np.median(whole)), "warm": sum(float(np.median(w)) for w in warm),
            "in_order": sum(float(np.median(c)) for c in in_order)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subnets", type=int, default=8)
    ap.add_argument("--device", default="cpu-litert")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    spec = load_device(args.device)
    if spec.runtime != "litert" or spec.transport != "local":
        raise SystemExit(f"{args.device}: this benchmark times LiteRT on this host (runtime litert, transport local)")
    archs = SearchSpace.preset(spec.space).sample(np.random.default_rng(args.seed), args.subnets)
    rows = []
    t0 = time.perf_counter()
    with get_backend(spec) as backend:
        for arch in archs:
            rows.append(measure(backend, arch))
            r = rows[-1]
            print(f"r{r['r']} {r['ops']} ops: whole {r['whole']:.3f} ms, warm sum {r['warm']:.3f} "
                  f"(whole/sum {r['whole'] / r['warm']:.3f}), in-order sum {r['in_order']:.3f} "
                  f"({r['whole'] / r['in_order']:.3f}); TFLite ops {r['tfl_net']} in the net, {r['tfl_parts']} in "
                  f"its ops' models", flush=True)
        tiny = backend.runner(*backend.built_op(arch_ops(archs[0], N_CLASSES)[-1]))
        for _ in range(50):
            tiny()
        invoke_us = 1e3 * float(np.median([_timed(tiny) for _ in range(2000)]))
    lines = ["| op sum | whole / sum, median | spread across subnets (max / min) |", "|---|---|---|"]
    for kind, what in (("warm", "ops alone, warm (as tables time them)"),
                       ("in_order", "ops in network order, once per pass")):
        ratio = np.array([r["whole"] / r[kind] for r in rows])
        lines.append(f"| {what} | {np.median(ratio):.3f} | {ratio.max() / ratio.min():.3f} |")
    extra = np.median([(r["tfl_parts"] - r["tfl_net"]) / r["ops"] for r in rows])
    body = (f"Machine: {machine_line(spec.threads)}.\nCommand: `python benchmarks/litert_gap.py --subnets "
            f"{args.subnets} --device {args.device} --seed {args.seed}` ({time.perf_counter() - t0:.0f} s). "
            f"{len(rows)} seeded subnets of the `{spec.space}` space, {N_CLASSES} classes, {ROUNDS} rounds.\n\n"
            + "\n".join(lines)
            + f"\n\nPer-invoke overhead (the smallest op model's invoke, median of 2000): {invoke_us:.1f} us. "
              f"Each op's model holds {extra:.1f} TFLite ops more than its share of the network (median).")
    print(body)
    if not args.no_record:
        record("litert_gap", body)


if __name__ == "__main__":
    main()
