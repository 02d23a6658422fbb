"""Training-step cost through the elastic supernet against the extracted static subnet.

For random Archs at a small-image resolution, times forward+backward steps in training mode of
``supernet(x, arch)`` and of ``supernet.extract_subnet(arch)``, interleaved in the same run, and reports the
ratio per Arch and its median. Target (issue 2): median ratio <= 1.1.

    python benchmarks/supernet_overhead.py [--archs 10] [--resolution 32] [--batch 64] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from natdeploy.space import SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet

try:
    from _common import machine_line, record
except ImportError:  # run as a module
    from benchmarks._common import machine_line, record


def step_time(fn, x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(fn(x), y)
    loss.backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model per Arch (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-record", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cl = torch.channels_last
    net = OFAMobileNetV3Supernet(n_classes=10).train().to(memory_format=cl)
    space = SearchSpace(resolutions=(args.resolution,), widths=(1.0,))
    archs = space.sample(np.random.default_rng(args.seed), args.archs)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution).to(memory_format=cl)
    y = torch.randint(0, 10, (args.batch,))
    rows = []
    for arch in archs:
        sub = net.extract_subnet(arch).train().to(memory_format=cl)
        runs = {"supernet": lambda t: net(t, arch), "static": sub}
        for fn in runs.values():
            for _ in range(2):
                step_time(fn, x, y)
        times = {k: [] for k in runs}
        for _ in range(args.steps):  # interleave so that machine noise hits both alike
            for k, fn in runs.items():
                times[k].append(step_time(fn, x, y))
        sup, sta = statistics.median(times["supernet"]), statistics.median(times["static"])
        rows.append((str(arch), sup * 1e3, sta * 1e3, sup / sta))
        print(f"{arch}  supernet {sup * 1e3:8.1f} ms  static {sta * 1e3:8.1f} ms  ratio {sup / sta:.3f}", flush=True)
    ratios = [r[3] for r in rows]
    med = statistics.median(ratios)
    print(f"median ratio {med:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); target <= 1.1")
    if not args.no_record:
        table = "\n".join(f"| `{a}` | {s:.1f} | {t:.1f} | {r:.3f} |" for a, s, t, r in rows)
        record("supernet_overhead", f"""
Machine: {machine_line(args.threads)}.
Command: `python benchmarks/supernet_overhead.py --archs {args.archs} --resolution {args.resolution} --batch {args.batch} --steps {args.steps} --threads {args.threads}`
Training-mode forward+backward step (batch {args.batch}, {args.resolution} px, channels_last), median of {args.steps} interleaved steps.

**Median ratio supernet/static: {med:.3f}** (min {min(ratios):.3f}, max {max(ratios):.3f}). Target: <= 1.1.

| Arch | supernet ms | static ms | ratio |
|---|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()
