"""Supernet training (sandwich-rule warm-up, NAT adaptation with distillation) and subnet evaluation."""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from natdeploy.data import ImageData
from natdeploy.space import Arch, SearchSpace
from natdeploy.supernet import OFAMobileNetV3Supernet, recalibrate_bn

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, resolution: int, batch_size: int = 256,
             limit: int | None = None) -> float:
    """Top-1 accuracy (0..1) of a static model on the validation split at ``resolution``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in data.batches("val", batch_size, resolution, limit=limit):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def evaluate_arch(supernet: OFAMobileNetV3Supernet, arch: Arch, data: ImageData, bn_batches: int = 4,
                  batch_size: int = 256, seed: int = 0, val_limit: int | None = None) -> float:
    """Accuracy of ``arch`` with inherited weights: extract, recalibrate BN on training images, evaluate."""
    sub = supernet.extract_subnet(arch).to(memory_format=torch.channels_last)
    rng = np.random.default_rng(seed)
    recalibrate_bn(sub, data.batches("train", batch_size, arch.r, rng=rng), bn_batches)
    return evaluate(sub, data, arch.r, batch_size, val_limit)


def _kd_loss(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(logits, 1), F.softmax(teacher, 1), reduction="batchmean")
    return alpha * soft + (1 - alpha) * F.cross_entropy(logits, labels)


def make_optimizer(supernet: nn.Module, lr: float, weight_decay: float = 3e-5) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; no weight decay on BN and biases (OFA's recipe)."""
    decay, no_decay = [], []
    for name, p in supernet.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith("_matrix") else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                           lr=lr, momentum=0.9, nesterov=True)


def train_epochs(supernet: OFAMobileNetV3Supernet, data: ImageData, space: SearchSpace, epochs: int,
                 sample_archs: Callable[[np.random.Generator, int], Sequence[Arch]], n_sampled: int, seed: int,
                 lr: float = 0.05, batch_size: int = 64, kd_alpha: float = 1.0, include_smallest: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 schedule: tuple[int, int] | None = None) -> dict:
    """Train the supernet for ``epochs`` epochs.

    Each step trains the largest subnet on the labels, then ``n_sampled`` subnets drawn by ``sample_archs``
    (and the smallest, under the sandwich rule) distilled from the largest's outputs; gradients add up before one
    optimizer step. Randomness comes from ``seed`` only: the global torch RNG is forked and restored.

    The learning rate follows a cosine from ``lr`` to 0 over these epochs, or, with ``schedule=(done, total)``,
    the stretch of one cosine over ``total`` epochs that starts after ``done`` of them (NAT's adaptation spreads
    one schedule over all its iterations instead of restarting it at ``lr`` every iteration).
    """
    largest = space.largest(w=supernet.width)
    smallest = space.smallest(w=supernet.width)
    rng = np.random.default_rng(seed)
    opt = make_optimizer(supernet, lr)
    n_batches = (len(data.train_y) + batch_size - 1) // batch_size
    done, total = schedule or (0, epochs)
    if not (0 <= done and done + epochs <= total):
        raise ValueError(f"schedule {schedule} does not hold {epochs} more epochs")
    offset, span = done * n_batches, max(1, total * n_batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * (offset + s) / span)))
    # channels_last: 1.5-2.5x faster CPU training; the default layout spends most of its time in 7x7 depthwise
    # convolutions on tiny maps (measured here).
    supernet.to(memory_format=torch.channels_last).train()
    losses = []
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            for x, y in data.batches("train", batch_size, largest.r, rng=rng, augment=True):
                opt.zero_grad(set_to_none=True)
                teacher = supernet(x, largest)
                loss = F.cross_entropy(teacher, y)
                loss.backward()
                soft = teacher.detach()
                archs = list(sample_archs(rng, n_sampled)) + ([smallest] if include_smallest else [])
                for arch in archs:
                    xi = F.interpolate(x, size=(arch.r, arch.r), mode="bilinear", align_corners=False,
                                       antialias=True) if arch.r != largest.r else x
                    _kd_loss(supernet(xi.contiguous(memory_format=torch.channels_last), arch), soft, y,
                             kd_alpha).backward()
                nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                step += 1
                if progress:
                    progress(step, epochs * n_batches)
    return {"steps": step, "final_loss": float(np.mean(losses[-10:])) if losses else None}
