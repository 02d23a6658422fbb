"""The OFA MobileNetV3 elastic supernet, its static subnets, and BN recalibration."""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

from natdeploy.space import (BLOCK0_KERNEL, EXPANDS, FIXED_LAYERS, Arch, BlockSlot, SupernetPlan, mid_channels,
                             supernet_plan)
from natdeploy.supernet.layers import Block, Classifier, ConvBNAct, DynamicBlock, DynamicMBConv, MBConv

log = logging.getLogger(__name__)


def _stem(plan: SupernetPlan) -> ConvBNAct:
    kernel, stride, act = FIXED_LAYERS["stem"]
    return ConvBNAct(3, plan.stem_c, kernel, stride, act=act)


def _block(slot: BlockSlot, kernel: int, mid: int) -> Block:
    """A static block in ``slot`` (block 0 when ``mid`` is its input width: no expansion conv)."""
    conv = MBConv(slot.in_c, slot.out_c, mid, kernel, slot.stride, slot.act, slot.se, expand=mid != slot.in_c)
    return Block(conv, slot.skip)


def _head(plan: SupernetPlan, n_classes: int, dropout_rate: float) -> tuple[ConvBNAct, ConvBNAct, Classifier]:
    final_expand = ConvBNAct(plan.last_c, plan.final_expand_c, 1, act=FIXED_LAYERS["final_expand"][2])
    feature_mix = ConvBNAct(plan.final_expand_c, plan.feature_mix_c, 1, act=FIXED_LAYERS["feature_mix"][2], bn=False)
    return final_expand, feature_mix, Classifier(plan.feature_mix_c, n_classes, dropout_rate)


class _MobileNetV3Base(nn.Module):
    def _features_to_logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand_layer(x)
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True))
        return self.classifier(torch.flatten(x, 1))


class MobileNetV3Subnet(_MobileNetV3Base):
    """A plain static MobileNetV3 for one :class:`Arch` (what gets exported)."""

    def __init__(self, arch: Arch, n_classes: int = 1000, dropout_rate: float = 0.1) -> None:
        super().__init__()
        self.arch, self.n_classes = arch, n_classes
        plan = supernet_plan(arch.w)
        self.first_conv = _stem(plan)
        blocks = [_block(plan.block0, BLOCK0_KERNEL, plan.block0.in_c)]
        for i, _, k, e in arch.active_blocks():
            blocks.append(_block(plan.blocks[i], k, mid_channels(plan.blocks[i].in_c, e)))
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer, self.feature_mix_layer, self.classifier = _head(plan, n_classes, dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        return self._features_to_logits(x)


class OFAMobileNetV3Supernet(_MobileNetV3Base):
    """The Once-for-All MobileNetV3 supernet (k in {3,5,7}, e in {3,4,6}, d in {2,3,4}) at one width.

    ``forward(x, arch)`` runs the subnet ``arch``; nothing about the active subnet is stored in the module.
    """

    def __init__(self, n_classes: int = 1000, width: float = 1.0, dropout_rate: float = 0.1) -> None:
        super().__init__()
        plan = supernet_plan(width)
        self.width, self.n_classes, self.dropout_rate = float(width), n_classes, dropout_rate
        self.first_conv = _stem(plan)
        blocks: list[nn.Module] = [_block(plan.block0, BLOCK0_KERNEL, plan.block0.in_c)]
        for slot in plan.blocks:
            conv = DynamicMBConv(slot.in_c, slot.out_c, slot.stride, slot.act, slot.se, max(EXPANDS))
            blocks.append(DynamicBlock(conv, skip=slot.skip))
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer, self.feature_mix_layer, self.classifier = _head(plan, n_classes, dropout_rate)

    @property
    def config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "width": self.width, "dropout_rate": self.dropout_rate}

    def check_arch(self, arch: Arch) -> Arch:
        """Raise a clear error when ``arch`` cannot run on this supernet."""
        if not isinstance(arch, Arch):
            raise TypeError(f"expected a natdeploy Arch, got {type(arch).__name__}; build one with Arch.from_dict(...)")
        if arch.w != self.width:
            raise ValueError(f"w={arch.w} does not match this supernet's width multiplier; allowed: [{self.width}]")
        return arch

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        self.check_arch(arch)
        x = self.blocks[0](self.first_conv(x))
        for i, _, k, e in arch.active_blocks():
            x = self.blocks[1 + i](x, k, e)
        return self._features_to_logits(x)

    def extract_subnet(self, arch: Arch) -> MobileNetV3Subnet:
        """A static :class:`MobileNetV3Subnet` with a copy of ``arch``'s weights (in the supernet's mode)."""
        self.check_arch(arch)
        dropout = self.classifier.dropout.p if isinstance(self.classifier.dropout, nn.Dropout) else 0.0
        sub = MobileNetV3Subnet(arch, self.n_classes, dropout)
        sub.first_conv.load_state_dict(self.first_conv.state_dict())
        sub.blocks[0].load_state_dict(self.blocks[0].state_dict())
        for n, (i, _, k, e) in enumerate(arch.active_blocks(), start=1):
            sub.blocks[n].conv = self.blocks[1 + i].conv.to_static(k, e)
        for name in ("final_expand_layer", "feature_mix_layer", "classifier"):
            getattr(sub, name).load_state_dict(getattr(self, name).state_dict())
        ref = self.first_conv.conv.weight
        return sub.to(device=ref.device, dtype=ref.dtype).train(self.training)


def extract_subnet(supernet: OFAMobileNetV3Supernet, arch: Arch) -> MobileNetV3Subnet:
    """Functional form of :meth:`OFAMobileNetV3Supernet.extract_subnet`."""
    return supernet.extract_subnet(arch)


def recalibrate_bn(subnet: nn.Module, loader: Iterable, n_batches: int) -> int:
    """Re-estimate every BatchNorm's running statistics of a static subnet from ``n_batches`` of ``loader``.

    The statistics become the average over the batches (cumulative, momentum None), as OFA and NAT do before
    evaluating a subnet with inherited weights. Returns the number of batches used.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches={n_batches} must be at least 1")
    bns = [m for m in subnet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = subnet.training
    device = next(subnet.parameters()).device
    subnet.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in loader:
                if used >= n_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                subnet(x.to(device))
                used += 1
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        subnet.train(was_training)
    if used == 0:
        raise ValueError("recalibrate_bn got no batches from the loader; it needs at least one")
    log.debug("recalibrated %d BN layers on %d batches", len(bns), used)
    return used
