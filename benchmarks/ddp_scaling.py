"""Data-parallel scaling of the sandwich training step: 1 process against N gloo processes on CPU.

Both runs use the same global batch, the same threads per process, the same subnets (one seeded RNG stream) and
natdeploy's own step (``sandwich_backward``, one gradient all-reduce, SGD), with BN statistics handled as in
training (``--batch-norm local``, the default: per-rank statistics and one running-statistics average per step;
``sync``: the global batch's statistics all-reduced per BN layer). The batches are made before timing, so only the
step is measured. Target (issue 15): >= 1.5x with 2 processes on a 2-core machine.

    python benchmarks/ddp_scaling.py [--processes 2] [--batch 64] [--resolution 32] [--steps 6] [--threads 1]
                                     [--batch-norm local|sync]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One rank: time ``args.steps`` sandwich steps after ``args.warmup``; rank 0 prints a JSON line."""
    from natdeploy.distributed import (all_reduce_gradients, average_bn_statistics, barrier, init_runtime,
                                       train_bn_reducer)
    from natdeploy.space import SearchSpace
    from natdeploy.supernet import OFAMobileNetV3Supernet
    from natdeploy.supernet.layers import sync_batch_norm
    from natdeploy.train import make_optimizer, sandwich_backward

    torch.set_num_threads(args.threads)
    rt = init_runtime("cpu", "fp32", timeout_s=300, batch_norm=args.batch_norm)
    torch.manual_seed(0)
    net = OFAMobileNetV3Supernet(n_classes=10).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(net, 0.01)
    space = SearchSpace(resolutions=(args.resolution,), widths=(1.0,))
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    n = args.warmup + args.steps
    batches = [(torch.randn(args.batch, 3, args.resolution, args.resolution, generator=g)
                .contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (args.batch,), generator=g))
               for _ in range(n)]
    archs = [space.sample(rng, args.subnets) + [space.smallest()] for _ in range(n)]
    times, cpu = [], []
    for i, ((x, y), subnets) in enumerate(zip(batches, archs)):
        barrier(rt)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        with sync_batch_norm(net, train_bn_reducer(rt, len(y))):  # as natdeploy.train.train_epochs does
            sandwich_backward(net, x, y, space.largest(), subnets, 1.0, rt)
        all_reduce_gradients(net, rt)
        average_bn_statistics(net, rt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        barrier(rt)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    if rt.is_main:
        # CPU seconds of rank 0: what the step costs apart from waiting for the CPU, so a busy machine can be told
        # from a real scaling loss
        print(json.dumps({"world": rt.world_size, "seconds": times, "cpu_seconds": cpu,
                          "images_per_s": args.batch * len(times) / sum(times),
                          "images_per_cpu_s": args.batch / rt.world_size * len(cpu) / sum(cpu)}), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args: argparse.Namespace) -> dict:
    """Start ``world`` ranks of this script the way torchrun does; rank 0's JSON result."""
    port = _free_port()
    cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--resolution", str(args.resolution),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--subnets", str(args.subnets), "--batch-norm", args.batch_norm]
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=args.timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"a rank of the {world}-process run failed:\n{err[-2000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="global batch, split over the processes")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--subnets", type=int, default=2, help="sampled subnets per step (plus the largest and smallest)")
    ap.add_argument("--threads", type=int, default=1, help="threads per process")
    ap.add_argument("--batch-norm", choices=["local", "sync"], default="local",
                    help="local (default, as natdeploy trains): per-rank BN statistics, running statistics averaged "
                         "once per step; sync: the global batch's statistics all-reduced in every BN layer")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--no-record", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    one = run(1, args)
    print(f"1 process : {one['images_per_s']:8.1f} images/s", flush=True)
    many = run(args.processes, args)
    ratio = many["images_per_s"] / one["images_per_s"]
    print(f"{args.processes} processes: {many['images_per_s']:8.1f} images/s")
    print(f"ratio {ratio:.2f} (target >= 1.5 with 2 processes on 2 cores)")
    cpu_ratio = many["images_per_cpu_s"] / one["images_per_cpu_s"]
    print(f"images per CPU second of one rank: {one['images_per_cpu_s']:.1f} vs {many['images_per_cpu_s']:.1f} "
          f"(x{cpu_ratio:.2f}; x1.0 is perfect scaling: a wall-clock ratio far below {args.processes} x this means "
          "a busy machine)")
    if not args.no_record:
        try:
            from _common import machine_line, record
        except ImportError:  # run as a module
            from benchmarks._common import machine_line, record
        record("ddp_scaling", f"""
Machine: {machine_line(args.threads)}.
Command: `python benchmarks/ddp_scaling.py --processes {args.processes} --batch {args.batch} --resolution {args.resolution} --steps {args.steps} --warmup {args.warmup} --subnets {args.subnets} --threads {args.threads} --batch-norm {args.batch_norm}`
Sandwich step (largest + {args.subnets} sampled + smallest, global batch {args.batch}, {args.resolution} px, channels_last, gloo, {args.batch_norm} BN), {args.threads} thread(s) per process, mean over {args.steps} timed steps.

| processes | images/s |
|---|---|
| 1 | {one['images_per_s']:.1f} |
| {args.processes} | {many['images_per_s']:.1f} |

**Ratio: {ratio:.2f}** (target >= 1.5 with 2 processes on 2 cores).
""")


if __name__ == "__main__":
    main()
