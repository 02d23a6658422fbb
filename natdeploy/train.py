"""Supernet training (sandwich-rule warm-up, NAT adaptation with distillation) and subnet evaluation.

Everything runs on ``runtime.device`` in channels_last, under ``runtime.precision``. Without a runtime (or with one
process on CPU in fp32) the arithmetic is exactly the single-process one.

Several processes (``natdeploy.distributed``) train data-parallel: every rank draws the same global batch order,
augmentation and subnets from one seeded RNG stream, but reads (streamed: decodes) only its contiguous shard of
each global batch, weights its losses by its share, and the gradients are summed once per optimiser step. BatchNorm (``runtime.batch_norm``, see
``natdeploy.distributed.train_bn_reducer``): by default each rank normalises its shard with its own statistics and
the running statistics are averaged over the ranks after every step, so they stay identical; the gradient is then
the one-process gradient with each shard as its own BN batch. With ``sync`` the statistics of the global batch are
all-reduced per BN layer, so the gradient equals the one-process gradient over the same global batch. Dropout masks
are drawn per rank (torch seeded with ``seed + rank``), so with dropout the runs agree in distribution only.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from natdeploy.data import ImageData
from natdeploy.distributed import (LOCAL, Runtime, all_reduce_gradients, gather, grad_scaler, peer_failures,
                                   precision_context, rng_states, shard_range, shard_sizes, train_bn_reducer)
from natdeploy.errors import CheckpointError
from natdeploy.space import Arch, SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet, recalibrate_bn
from natdeploy.supernet.checkpoint import TRAIN_STATE_FORMAT, cpu_copy
from natdeploy.supernet.layers import sync_batch_norm

log = logging.getLogger(__name__)
CL = torch.channels_last


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, resolution: int, batch_size: int = 256,
             limit: int | None = None, runtime: Runtime | None = None) -> float:
    """Top-1 accuracy (0..1) of a static model on the validation split at ``resolution``."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct = total = 0
    with precision_context(runtime):
        for x, y in data.batches("val", batch_size, resolution, limit=limit):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def evaluate_arch(supernet: OFAMobileNetV3Supernet, arch: Arch, data: ImageData, bn_batches: int = 4,
                  batch_size: int = 256, seed: int = 0, val_limit: int | None = None,
                  runtime: Runtime | None = None) -> float:
    """Accuracy of ``arch`` with inherited weights: extract, recalibrate BN on training images, evaluate.

    Runs in this process alone (no collectives); :func:`evaluate_archs` spreads a list over the ranks.
    """
    device = (runtime or LOCAL).device
    sub = supernet.extract_subnet(arch).to(device=device, memory_format=CL)
    rng = np.random.default_rng(seed)
    with precision_context(runtime):
        recalibrate_bn(sub, data.batches("train", batch_size, arch.r, rng=rng), bn_batches)
    return evaluate(sub, data, arch.r, batch_size, val_limit, runtime)


def evaluate_archs(supernet: OFAMobileNetV3Supernet, archs: Sequence[Arch], data: ImageData, bn_batches: int = 4,
                   batch_size: int = 256, seed: int = 0, val_limit: int | None = None,
                   runtime: Runtime | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[float]:
    """:func:`evaluate_arch` of every Arch, split over the ranks in contiguous shards and gathered, so that every
    rank returns the same full list in the order of ``archs``. Every rank must hold the same supernet.

    ``progress(done, total)`` follows this rank's shard, scaled to the whole list."""
    rt = runtime or LOCAL
    lo, hi = shard_range(len(archs), rt)
    mine = []
    for i, a in enumerate(archs[lo:hi]):
        mine.append(evaluate_arch(supernet, a, data, bn_batches, batch_size, seed, val_limit, rt))
        if progress:
            progress(min(len(archs), (i + 1) * rt.world_size), len(archs))
    return gather(mine, rt)


def _kd_loss(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(logits, 1), F.softmax(teacher, 1), reduction="batchmean")
    return alpha * soft + (1 - alpha) * F.cross_entropy(logits, labels)


def _kd_loss_sum(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                 n: int) -> torch.Tensor:
    """:func:`_kd_loss` of a shard as its share of the global batch of ``n`` (sums over the ranks to the mean)."""
    soft = F.kl_div(F.log_softmax(logits, 1), F.softmax(teacher, 1), reduction="sum")
    return (alpha * soft + (1 - alpha) * F.cross_entropy(logits, labels, reduction="sum")) / n


def make_optimizer(supernet: nn.Module, lr: float, weight_decay: float = 3e-5) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on BN and biases (OFA's recipe)."""
    decay, no_decay = [], []
    for name, p in supernet.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith("_matrix") else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                           lr=lr, momentum=0.9, nesterov=True)


def sandwich_backward(supernet: OFAMobileNetV3Supernet, x: torch.Tensor, y: torch.Tensor, largest: Arch,
                      archs: Sequence[Arch], kd_alpha: float = 1.0, runtime: Runtime | None = None,
                      scaler: torch.amp.GradScaler | None = None, *,
                      global_batch: int | None = None) -> torch.Tensor:
    """Accumulate one sandwich step's gradients for this rank's shard of a global batch.

    ``(x, y)`` is the global batch, of which this rank takes its :func:`~natdeploy.distributed.shard_range`; with
    ``global_batch``, it is already this rank's shard (as training's data yields it) of a global batch of that
    many images. The largest subnet learns the labels, then each of ``archs`` is distilled from its outputs. With
    several ranks, the losses are this shard's share of the global batch's mean, so the gradients sum over the
    ranks to the one-process gradient. Returns this rank's (weighted) label loss of the largest subnet, detached.
    """
    rt = runtime or LOCAL
    n = global_batch if global_batch is not None else len(y)
    if global_batch is None:
        lo, hi = shard_range(n, rt)
        x, y = x[lo:hi], y[lo:hi]
    x = x.to(rt.device, non_blocking=True).contiguous(memory_format=CL)
    y = y.to(rt.device, non_blocking=True)

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    with precision_context(rt):
        teacher = supernet(x, largest)
        loss = F.cross_entropy(teacher, y, reduction="sum") / n if rt.distributed else F.cross_entropy(teacher, y)
    backward(loss)
    soft = teacher.detach().float()
    for arch in archs:
        xi = F.interpolate(x, size=(arch.r, arch.r), mode="bilinear", align_corners=False,
                           antialias=True) if arch.r != largest.r else x
        with precision_context(rt):
            logits = supernet(xi.contiguous(memory_format=CL), arch)
            kd = _kd_loss_sum(logits.float(), soft, y, kd_alpha, n) if rt.distributed else \
                _kd_loss(logits.float(), soft, y, kd_alpha)
        backward(kd)
    return loss.detach()


def _fingerprint(supernet: OFAMobileNetV3Supernet, epochs: int, seed: int, lr: float, batch_size: int,
                 n_sampled: int, kd_alpha: float, include_smallest: bool, schedule: tuple[int, int] | None,
                 n_batches: int, precision: str, weight_decay: float) -> dict[str, Any]:
    return {"width": supernet.width, "epochs": epochs, "seed": seed, "lr": lr, "batch_size": batch_size,
            "n_sampled": n_sampled, "kd_alpha": kd_alpha, "include_smallest": include_smallest,
            "schedule": list(schedule) if schedule else None, "n_batches": n_batches, "precision": precision,
            "weight_decay": weight_decay}


def train_epochs(supernet: OFAMobileNetV3Supernet, data: ImageData, space: SearchSpace, epochs: int,
                 sample_archs: Callable[[np.random.Generator, int], Sequence[Arch]], n_sampled: int, seed: int,
                 lr: float = 0.05, batch_size: int = 64, kd_alpha: float = 1.0, include_smallest: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 schedule: tuple[int, int] | None = None, runtime: Runtime | None = None,
                 on_checkpoint: Callable[[dict], None] | None = None, checkpoint_every_s: float | None = None,
                 resume_from: dict | None = None, weight_decay: float = 3e-5,
                 on_step: Callable[[dict], None] | None = None) -> dict:
    """Train the supernet for ``epochs`` epochs.

    Each step trains the largest subnet on the labels, then ``n_sampled`` subnets drawn by ``sample_archs``
    (and the smallest, under the sandwich rule) distilled from the largest's outputs; gradients add up before one
    optimizer step. Randomness comes from ``seed`` only: the global torch RNG is forked and restored.

    The learning rate follows a cosine from ``lr`` to 0 over these epochs, or, with ``schedule=(done, total)``,
    the stretch of one cosine over ``total`` epochs that starts after ``done`` of them (NAT's adaptation spreads
    one schedule over all its iterations instead of restarting it at ``lr`` every iteration).

    ``weight_decay`` applies to convolution and linear weights (not BN, biases or kernel transforms).
    ``on_step(info)`` gets, after every optimiser step, the step, the total, the global batch's mean label loss of
    the largest subnet, the images of the global batch, and the step's seconds (for metrics and throughput).

    Mid-phase checkpoints: ``on_checkpoint(state)`` is called on the main rank after every epoch but the last, and
    after the first step that ends ``checkpoint_every_s`` seconds after the previous checkpoint. ``state`` is a
    CPU copy (model, optimiser, scheduler, scaler, step, RNG states) for
    :func:`natdeploy.supernet.checkpoint.save_training_state`. Passing it back as ``resume_from`` (same arguments)
    continues the phase with bit-identical results to an uninterrupted run; the data stream (not the training)
    of the current epoch is replayed up to the checkpointed batch so that data order and RNG draws are exact.
    """
    rt = runtime or LOCAL
    largest = space.largest(w=supernet.width)
    smallest = space.smallest(w=supernet.width)
    rng = np.random.default_rng(seed)
    # channels_last: 1.5-2.5x faster CPU training; the default layout spends most of its time in 7x7 depthwise
    # convolutions on tiny maps (measured here).
    supernet.to(device=rt.device, memory_format=CL).train()
    opt = make_optimizer(supernet, lr, weight_decay)
    scaler = grad_scaler(rt)
    n_train = len(data.train_y)
    n_batches = (n_train + batch_size - 1) // batch_size
    # each rank reads (and, streaming, decodes) only its shard of every global batch; streamed data can skip an
    # unreadable file in one rank's shard, so then the ranks exchange their shard sizes (one tiny all-reduce a step)
    shard, drops = (rt.rank, rt.world_size), data.skips_mid_epoch
    done, total = schedule or (0, epochs)
    if not (0 <= done and done + epochs <= total):
        raise ValueError(f"schedule {schedule} does not hold {epochs} more epochs")
    offset, span = done * n_batches, max(1, total * n_batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * (offset + s) / span)))
    fingerprint = _fingerprint(supernet, epochs, seed, lr, batch_size, n_sampled, kd_alpha, include_smallest,
                               schedule, n_batches, rt.precision, weight_decay)
    losses: list[float] = []
    step = start_epoch = skip = 0
    epoch_rng = rng.bit_generator.state
    torch_states = None
    if resume_from is not None:
        _check_resumable(resume_from, fingerprint)
        supernet.load_state_dict(resume_from["model"])
        opt.load_state_dict(resume_from["optimizer"])
        sched.load_state_dict(resume_from["scheduler"])
        if scaler is not None and resume_from.get("scaler"):
            scaler.load_state_dict(resume_from["scaler"])
        step, start_epoch, skip = int(resume_from["step"]), int(resume_from["epoch"]), int(resume_from["batch"])
        epoch_rng, torch_states = resume_from["numpy_rng"], resume_from["torch_rng"]
        losses = list(resume_from["losses"])
    fork_devices = [rt.device] if rt.device.type == "cuda" else []
    last_ckpt = time.monotonic()

    def checkpoint(epoch: int, batch: int, rng_state: dict) -> None:
        states = rng_states(rt)  # a collective: every rank reaches it at the same step
        if on_checkpoint is not None and rt.is_main:
            on_checkpoint(cpu_copy({
                "format": TRAIN_STATE_FORMAT, "fingerprint": fingerprint, "epoch": epoch, "batch": batch,
                "step": step, "model": supernet.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "numpy_rng": rng_state, "torch_rng": states, "losses": losses[-10:]}))

    with torch.random.fork_rng(devices=fork_devices), peer_failures("a training step", rt):
        torch.manual_seed(seed + rt.rank)
        if torch_states is not None:
            _restore_torch_rng(torch_states, rt)
        t_last = time.perf_counter()
        for epoch in range(start_epoch, epochs):
            if epoch == start_epoch:
                rng.bit_generator.state = epoch_rng
            epoch_rng = rng.bit_generator.state
            for b, (x, y) in enumerate(data.batches("train", batch_size, largest.r, rng=rng, augment=True,
                                                    shard=shard)):
                archs = list(sample_archs(rng, n_sampled)) + ([smallest] if include_smallest else [])
                if epoch == start_epoch and b < skip:
                    continue  # replaying the data stream of a resumed epoch
                sizes = shard_sizes(len(y), rt, None if drops else min(batch_size, n_train - b * batch_size))
                n = sum(sizes)
                if n == 0:
                    continue  # every file of this global batch was unreadable (one process drops it in the data)
                opt.zero_grad(set_to_none=True)
                with sync_batch_norm(supernet, train_bn_reducer(rt, n, sizes)):
                    loss = sandwich_backward(supernet, x, y, largest, archs, kd_alpha, rt, scaler, global_batch=n)
                due = bool(checkpoint_every_s is not None and on_checkpoint is not None and rt.is_main
                           and time.monotonic() - last_ckpt >= checkpoint_every_s)
                # rank 0's "checkpoint now" and the BN running statistics travel in the gradient buffer, so every
                # rank agrees at no extra cost
                loss_sum, due_sum = all_reduce_gradients(supernet, rt, extras=(float(loss), float(due)),
                                                         bn_statistics=True)
                if scaler is not None:
                    scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                sched.step()
                losses.append(loss_sum)
                step += 1
                if progress:
                    progress(step, epochs * n_batches)
                if on_step:  # seconds since the previous step: data loading included
                    now = time.perf_counter()
                    on_step({"step": step, "total": epochs * n_batches, "loss": loss_sum, "images": n,
                             "seconds": now - t_last})
                    t_last = now
                if due_sum > 0 and b + 1 < n_batches:
                    checkpoint(epoch, b + 1, epoch_rng)
                    last_ckpt = time.monotonic()
            if epoch + 1 < epochs:
                checkpoint(epoch + 1, 0, rng.bit_generator.state)
                last_ckpt = time.monotonic()
    return {"steps": step, "final_loss": float(np.mean(losses[-10:])) if losses else None}


def _check_resumable(state: dict, fingerprint: dict) -> None:
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError("resume_from is not a natdeploy training state (from train_epochs' on_checkpoint)")
    if state.get("fingerprint") != fingerprint:
        diff = sorted(k for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k])
        raise CheckpointError(f"the training state was saved with other settings ({', '.join(diff)} differ); "
                              "resume with the arguments of the interrupted phase")


def _restore_torch_rng(states: list[dict], rt: Runtime) -> None:
    if rt.rank >= len(states):
        log.warning("the training state holds RNG states of %d ranks; rank %d continues with a fresh dropout seed, "
                    "so this resume is exact in the data and subnets but not in dropout masks", len(states), rt.rank)
        return
    mine = states[rt.rank]
    torch.set_rng_state(mine["cpu"])
    if rt.device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], rt.device)
