"""Sandwich-step training throughput, fp32 against bf16, memory against stream, and the data pipeline on its own.

At each resolution (default 32 and 224 px) on the device present (CUDA when visible, else CPU):

* **pipeline**: images/s of ``data.batches("train", ..., augment=True)`` alone, memory and stream mode
  (stream: ``--workers`` DataLoader processes, default the cores available);
* **step**: images/s of :func:`natdeploy.train.train_epochs` (the largest subnet on the labels, then
  ``--subnets`` sampled subnets distilled from it, one optimiser step) in fp32 and bf16, memory and stream.
  ``train_epochs`` has no precision argument here, so bf16 is ``torch.autocast`` around the whole call.

Ratios printed: bf16/fp32, stream/memory step, and pipeline/step (whether data or compute is the bottleneck;
issue 15's target: stream pipeline >= 1.5x the step at 224 px). Images are a generated ImageFolder of smooth
random JPEGs at ``--source-size`` (or ``--data PATH``), stored at the largest resolution.

    python benchmarks/train_throughput.py [--quick] [--workers N] [--batch 32] [--steps 3] [--data PATH]
                                          [--precisions fp32 bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from natdeploy.data import ImageData
from natdeploy.space import SearchSpace
from natdeploy.stream import StreamData, available_cores, load_image_data
from natdeploy.supernet import OFAMobileNetV3Supernet
from natdeploy.train import train_epochs

try:
    from _common import machine_line, record
except ImportError:  # run as a module
    from benchmarks._common import machine_line, record


def make_folder(root: Path, n: int, side: tuple[int, int], classes: int = 10, seed: int = 0) -> Path:
    """``n`` smooth random JPEGs (upsampled noise, closer to photos than white noise) in ``classes`` folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 255, (side[1] // 16, side[0] // 16, 3), dtype=np.uint8))
        small.resize(side, Image.BICUBIC).save(d / f"{i}.jpg", quality=90)
    return root


def head(data: ImageData | StreamData, n: int) -> ImageData | StreamData:
    """The first ``n`` training images (so that one epoch is a given number of steps)."""
    if isinstance(data, ImageData):
        return dataclasses.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])
    return dataclasses.replace(data, train_files=data.train_files[:n], train_y=data.train_y[:n])


def precision_ctx(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def pipeline_rate(data: ImageData | StreamData, batch: int, resolution: int, device: torch.device,
                  n_images: int) -> float:
    """images/s of the training batches alone (shuffle, decode in stream mode, augment, resize, normalise)."""
    sub = head(data, n_images)
    t0 = time.perf_counter()
    seen = 0
    for x, _ in sub.batches("train", batch, resolution, rng=np.random.default_rng(0), augment=True, device=device):
        seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def step_rate(net: OFAMobileNetV3Supernet, data: ImageData | StreamData, space: SearchSpace, batch: int,
              steps: int, subnets: int, precision: str, device: torch.device) -> float:
    """images/s of ``steps`` sandwich steps through train_epochs (after one warm-up step)."""
    def run(n_steps: int, seed: int) -> float:
        sub = head(data, n_steps * batch)
        t0 = time.perf_counter()
        with precision_ctx(precision, device):
            train_epochs(net, sub, space, 1, lambda rng, n: space.sample(rng, n), subnets, seed, batch_size=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(1, 0)
    return steps * batch / run(steps, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed sandwich steps per setting (after 1 warm-up)")
    ap.add_argument("--subnets", type=int, default=2, help="sampled subnets per step besides the largest")
    ap.add_argument("--pipeline-images", type=int, default=512, help="images per pipeline measurement")
    ap.add_argument("--workers", type=int, default=available_cores(), help="stream-mode DataLoader workers")
    ap.add_argument("--threads", type=int, default=available_cores())
    ap.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu or cuda")
    ap.add_argument("--data", type=Path, help="an ImageFolder to read instead of generated JPEGs")
    ap.add_argument("--source-size", type=int, nargs=2, default=[500, 375], help="generated JPEGs' width height")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                    help="step precisions (a CPU without native bf16 emulates it, far slower: on such a CPU, "
                         "--precisions fp32 keeps a 224 px run to minutes)")
    ap.add_argument("--quick", action="store_true", help="a tiny run (32 and 64 px, batch 8, 1 step)")
    ap.add_argument("--no-record", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.quick:
        args.resolutions, args.batch, args.steps, args.subnets, args.pipeline_images = [32, 64], 8, 1, 1, 32
        args.source_size = [120, 96]
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    storage = max(args.resolutions)
    need = max(args.pipeline_images, (args.steps + 1) * args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or make_folder(Path(tmp) / "imgs", int(need / 0.8) + 20, tuple(args.source_size))
        t0 = time.perf_counter()
        memory = load_image_data(root, size=storage, mode="memory").to(device)
        decode_s = time.perf_counter() - t0
        stream = load_image_data(root, size=storage, mode="stream", workers=args.workers).to(device)
        datas = {"memory": memory, "stream": stream}
        rows, pipe, step = [], {}, {}
        for r in args.resolutions:
            space = SearchSpace(resolutions=(r,), widths=(1.0,))
            for mode, data in datas.items():
                pipe[r, mode] = pipeline_rate(data, args.batch, r, device, args.pipeline_images)
                print(f"{r:>4} px  pipeline  {mode:<6}        {pipe[r, mode]:9.1f} images/s", flush=True)
            for precision in args.precisions:
                for mode, data in datas.items():
                    net = OFAMobileNetV3Supernet(n_classes=len(memory.classes)).to(device)
                    step[r, mode, precision] = step_rate(net, data, space, args.batch, args.steps, args.subnets,
                                                         precision, device)
                    print(f"{r:>4} px  step      {mode:<6} {precision}  {step[r, mode, precision]:9.1f} images/s",
                          flush=True)
            def rate(mode: str, precision: str) -> str:
                return f"{step[r, mode, precision]:.1f}" if (r, mode, precision) in step else "-"

            def ratio(a: float | None, b: float | None) -> str:
                return f"{a / b:.2f}x" if a is not None and b else "-"

            fp32, bf16 = step.get((r, "memory", "fp32")), step.get((r, "memory", "bf16"))
            rows.append(
                f"| {r} | {pipe[r, 'memory']:.1f} | {pipe[r, 'stream']:.1f} | {rate('memory', 'fp32')} | "
                f"{rate('memory', 'bf16')} | {rate('stream', 'fp32')} | {ratio(bf16, fp32)} | "
                f"{ratio(step.get((r, 'stream', 'fp32')), fp32)} | {ratio(pipe[r, 'stream'], fp32)} |")
    header = ("| px | pipeline memory | pipeline stream | step memory fp32 | step memory bf16 | step stream fp32 | "
              "bf16/fp32 | stream/memory step | stream pipeline/step |\n|---|---|---|---|---|---|---|---|---|")
    body = (f"Command: `python benchmarks/train_throughput.py --workers {args.workers} --batch {args.batch} "
            f"--steps {args.steps} --subnets {args.subnets} --resolutions {' '.join(map(str, args.resolutions))} "
            f"--precisions {' '.join(args.precisions)}{' --quick' if args.quick else ''}`\n\n"
            f"Device {device}; {machine_line(args.threads)}; images/s; a step is the largest subnet plus "
            f"{args.subnets} sampled subnets (bf16: torch.autocast around train_epochs). Memory mode decoded "
            f"the folder in {decode_s:.1f} s up front (not in the figures).\n\n{header}\n" + "\n".join(rows))
    print(body)
    if not (args.no_record or args.quick):
        record("train_throughput", body)


if __name__ == "__main__":
    main()
