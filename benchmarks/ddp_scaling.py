"""Data-parallel scaling of the sandwich training step: 1 process against N gloo processes on CPU.

Both runs use the same global batch, the same threads per process, the same subnets (one seeded RNG stream) and
natdeploy's own step (``sandwich_backward``, one gradient all-reduce, SGD), with BN statistics handled as in
training (``--batch-norm local``, the default: per-rank statistics and the running statistics averaged in the
gradient all-reduce; ``sync``: the global batch's statistics all-reduced per BN layer). The batches are made before
timing (each rank holds only its shard, as training's data yields it), so only the step is measured, and no more
than training does in a step. Target (issue 15): >= 1.5x with 2 processes on a 2-core machine.

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
    """One rank: time ``args.steps`` sandwich steps after ``args.warmup``; rank 0 prints a JSON line.

    The timed steps are what ``natdeploy.train.train_epochs`` runs per step, no more: this rank's shard of the
    global batch (as training's data yields it), the shard sizes, the sandwich, one all-reduce of the gradients
    with the loss and BN running statistics in the same buffer, clipping and SGD. There is no barrier between the
    steps (training has none): one before the first timed step, and one after the last, inside the timing.
    """
    from natdeploy.distributed import (all_reduce_gradients, barrier, destroy, gather, init_runtime, shard_range,
                                       shard_sizes, train_bn_reducer)
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
    lo, hi = shard_range(args.batch, rt)
    batches = [(torch.randn(args.batch, 3, args.resolution, args.resolution, generator=g)[lo:hi]
                .contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (args.batch,), generator=g)[lo:hi])
               for _ in range(n)]
    archs = [space.sample(rng, args.subnets) + [space.smallest()] for _ in range(n)]
    times = []
    for i, ((x, y), subnets) in enumerate(zip(batches, archs)):
        if i == args.warmup:
            barrier(rt)
            start, cpu_start = time.perf_counter(), time.process_time()
        t0 = time.perf_counter()
        sizes = shard_sizes(len(y), rt, total=args.batch)  # in memory: no communication, as in training
        total = sum(sizes)
        opt.zero_grad(set_to_none=True)
        with sync_batch_norm(net, train_bn_reducer(rt, total, sizes)):  # as natdeploy.train.train_epochs does
            loss = sandwich_backward(net, x, y, space.largest(), subnets, 1.0, rt, global_batch=total)
        all_reduce_gradients(net, rt, extras=(float(loss), 0.0), bn_statistics=True)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    barrier(rt)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    cpus = gather([cpu], rt)  # after the timing: every rank's CPU seconds (its gloo threads included)
    if rt.is_main:
        # CPU seconds per rank: what the step costs apart from waiting for the CPU, so a busy machine can be told
        # from a real scaling loss
        print(json.dumps({"world": rt.world_size, "seconds": times, "wall_s": wall, "cpu_s_per_rank": cpus,
                          "images_per_s": args.batch * args.steps / wall,
                          "images_per_cpu_s": args.batch / rt.world_size * args.steps / (sum(cpus) / len(cpus)),
                          "load_average": os.getloadavg()}), flush=True)
    barrier(rt)  # then leave the group together: a rank that exits with the group alive can abort the other
    destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, args: argparse.Namespace, independent: bool = False) -> list[dict]:
    """Start ``world`` ranks of this script the way torchrun does; rank 0's JSON result (in a list).

    ``independent``: instead, ``world`` one-process runs at the same time, each on a shard-sized batch: the same
    computation per process as the ranks', with no communication at all; their JSON results."""
    batch = args.batch // world if independent else args.batch
    cmd = [sys.executable, __file__, "--worker", "--batch", str(batch), "--resolution", str(args.resolution),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--subnets", str(args.subnets), "--batch-norm", args.batch_norm]
    port, procs = _free_port(), []
    for rank in range(world):
        group = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_PORT": str(_free_port())} if independent \
            else {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_PORT": str(port)}
        env = {**os.environ, **group, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=args.timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"a rank of the {world}-process run failed:\n{err[-2000:]}")
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in (outs if independent else outs[:1])]


def _cpu_line(res: dict, args: argparse.Namespace) -> str:
    per_step = ", ".join(f"{c / args.steps:.3f}" for c in res["cpu_s_per_rank"])
    load = ", ".join(f"{v:.2f}" for v in res["load_average"])
    return f"wall {res['wall_s'] / args.steps:.3f} s/step; CPU s/step per rank: {per_step}; load average {load}"


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
    one = run(1, args)[0]
    print(f"1 process : {one['images_per_s']:8.1f} images/s  ({_cpu_line(one, args)})", flush=True)
    many = run(args.processes, args)[0]
    ratio = many["images_per_s"] / one["images_per_s"]
    print(f"{args.processes} processes: {many['images_per_s']:8.1f} images/s  ({_cpu_line(many, args)})")
    print(f"ratio {ratio:.2f} (target >= 1.5 with 2 processes on 2 cores)")
    # what the machine allows without communication: the ranks' computation in independent processes at once
    alone = run(args.processes, args, independent=True)
    bound = min(r["images_per_s"] for r in alone) * args.processes / one["images_per_s"]
    print(f"{args.processes} independent processes at once, each on a batch of {args.batch // args.processes}, no "
          f"communication: ratio {bound:.2f} (the slowest one's images/s x {args.processes}; what this machine's "
          "cores allow before any communication)")
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

**Ratio: {ratio:.2f}** (target >= 1.5 with 2 processes on 2 cores). The same computation in {args.processes} independent processes at once (each on a batch of {args.batch // args.processes}, no communication): **{bound:.2f}**, the most the cores allow before any communication.
""")


if __name__ == "__main__":
    main()
