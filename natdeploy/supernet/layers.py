"""Static and dynamic (elastic) layers of the OFA MobileNetV3 family.

Parameter names follow Once-for-All's state-dict layout (``conv``, ``bn``, ``bn.bn``, ``conv.conv``,
``7to5_matrix`` ...) so that OFA checkpoints load by name and weights copy 1:1 into static subnets.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from natdeploy.space import KERNELS, mid_channels, se_channels


def activation(name: str) -> nn.Module:
    """``relu``, ``hswish`` or ``none``."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; allowed: relu, hswish, none")


class Part(nn.Module):
    """A named holder of submodules, for parameter names; its owner calls the parts in order."""

    def __init__(self, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


# ----- static layers --------------------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a ReLU bottleneck and a hard-sigmoid gate."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.fc = nn.Sequential()
        self.fc.add_module("reduce", nn.Conv2d(channels, mid, 1, bias=True))
        self.fc.add_module("relu", nn.ReLU(inplace=True))
        self.fc.add_module("expand", nn.Conv2d(mid, channels, 1, bias=True))
        self.fc.add_module("h_sigmoid", nn.Hardsigmoid(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class ConvBNAct(nn.Module):
    """Conv, then BN (or none), then activation, then SE (or none)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: str = "relu",
                 bn: bool = True, se_mid: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = BatchNorm2d(cout) if bn else nn.Identity()
        self.act = activation(act)
        self.se = SqueezeExcite(cout, se_mid) if se_mid else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.act(self.bn(self.conv(x))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent at expand ratio 1), depthwise kxk (+SE), 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, mid: int, kernel: int, stride: int, act: str, se: bool,
                 expand: bool = True) -> None:
        super().__init__()
        self.inverted_bottleneck = ConvBNAct(cin, mid, 1, act=act) if expand else nn.Identity()
        self.depth_conv = ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act,
                                    se_mid=se_channels(mid) if se else 0)
        self.point_linear = ConvBNAct(mid, cout, 1, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_linear(self.depth_conv(self.inverted_bottleneck(x)))


class Block(nn.Module):
    """An MBConv with an optional identity shortcut."""

    def __init__(self, conv: nn.Module, skip: bool) -> None:
        super().__init__()
        self.conv = conv
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + x if self.skip else y


class Classifier(nn.Module):
    """Dropout then a linear layer (OFA's ``LinearLayer`` naming)."""

    def __init__(self, in_features: int, n_classes: int, dropout_rate: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


# ----- dynamic layers -------------------------------------------------------------------------------------------
class DynamicPointConv(nn.Module):
    """A 1x1 convolution that uses the leading ``cout`` x ``cin`` slice of its weight."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(max_in, max_out, 1, bias=False)

    def weight(self, cout: int, cin: int) -> torch.Tensor:
        return self.conv.weight[:cout, :cin]

    def forward(self, x: torch.Tensor, cout: int) -> torch.Tensor:
        return F.conv2d(x, self.weight(cout, x.shape[1]))


# ----- BatchNorm, optionally with batch statistics summed over processes ------------------------------------------
# A reducer sums a tensor over every process that trains the same model, with autograd (so the gradient flows
# through the global statistics). Layers never know how many processes there are: natdeploy.distributed hands the
# reducer in through sync_batch_norm(), and without one every BN is plain PyTorch BatchNorm.
StatsReducer = Callable[[torch.Tensor], torch.Tensor]


def _synced_batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, c: int, reduce: StatsReducer) -> torch.Tensor:
    """Training-mode BN over the leading ``c`` channels with statistics of the global batch.

    Per-channel sum, sum of squares and count travel in one reduction; the running statistics then get the same
    update on every process (the unbiased variance of the global batch), so they stay identical across processes.
    """
    xf = x.float()
    # float64 sums: the variance is E[x^2] - E[x]^2, whose cancellation float32 sums would turn into visible noise
    n = torch.tensor([float(x.numel() // max(x.shape[1], 1))], dtype=torch.float64, device=x.device)
    packed = reduce(torch.cat([xf.sum((0, 2, 3), dtype=torch.float64), (xf * xf).sum((0, 2, 3), dtype=torch.float64),
                               n]))
    total = packed[-1]
    mean64 = packed[:c] / total
    var = (packed[c:2 * c] / total - mean64 * mean64).clamp_min(0).float()
    mean = mean64.float()
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var.detach() * float(total / (total - 1).clamp_min(1))
            bn.running_mean[:c].mul_(1 - factor).add_(mean.detach(), alpha=factor)
            bn.running_var[:c].mul_(1 - factor).add_(unbiased, alpha=factor)
    scale = torch.rsqrt(var + bn.eps) * bn.weight[:c]
    shift = bn.bias[:c] - mean * scale
    return (xf * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)).to(x.dtype)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, inside :func:`sync_batch_norm`, trains on the statistics of the global batch."""

    stats_reducer: StatsReducer | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.stats_reducer is not None:
            return _synced_batch_norm(x, self, x.shape[1], self.stats_reducer)
        return super().forward(x)


class DynamicBN(nn.Module):
    """BatchNorm over the leading channels of a wider BN; running statistics update in place on the slice."""

    stats_reducer: StatsReducer | None = None

    def __init__(self, max_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, c = self.bn, x.shape[1]
        if bn.training and self.stats_reducer is not None:
            return _synced_batch_norm(x, bn, c, self.stats_reducer)
        if c == bn.num_features:
            return bn(x)
        factor = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            bn.training or not bn.track_running_stats, factor, bn.eps)


@contextmanager
def sync_batch_norm(module: nn.Module, reducer: StatsReducer | None) -> Iterator[nn.Module]:
    """Within this block, every natdeploy BN in ``module`` normalises training batches with statistics summed by
    ``reducer`` (None: plain per-process BN). The reducer is an instance attribute, removed on exit."""
    layers = [m for m in module.modules() if isinstance(m, (BatchNorm2d, DynamicBN))]
    if reducer is None or not layers:
        yield module
        return
    for m in layers:
        m.stats_reducer = reducer
    try:
        yield module
    finally:
        for m in layers:
            del m.stats_reducer


class DynamicDWConv(nn.Module):
    """Depthwise convolution with elastic kernel: smaller kernels are the centre of the larger one passed
    through learned transform matrices (``7to5_matrix``, ``5to3_matrix``)."""

    def __init__(self, max_channels: int, stride: int) -> None:
        super().__init__()
        kmax = max(KERNELS)
        self.stride = stride
        self.conv = nn.Conv2d(max_channels, max_channels, kmax, stride, kmax // 2, groups=max_channels, bias=False)
        for big, small in zip(KERNELS[:0:-1], KERNELS[-2::-1]):
            self.register_parameter(f"{big}to{small}_matrix", nn.Parameter(torch.eye(small * small)))

    def weight(self, channels: int, kernel: int) -> torch.Tensor:
        w = self.conv.weight[:channels]
        size = w.shape[-1]
        while size > kernel:
            small = KERNELS[KERNELS.index(size) - 1]
            lo = (size - small) // 2
            centre = w[:, :, lo:lo + small, lo:lo + small].reshape(channels, small * small)
            w = F.linear(centre, getattr(self, f"{size}to{small}_matrix")).view(channels, 1, small, small)
            size = small
        return w

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        c = x.shape[1]
        w, pad = self.weight(c, kernel), kernel // 2
        trim = unused_taps(kernel, self.stride, max(x.shape[-2:]))
        if trim:  # the outer taps meet only zero padding: the same output and gradients at a fraction of the cost
            w, pad = w[:, :, trim:kernel - trim, trim:kernel - trim], pad - trim
        return F.conv2d(x, w, None, self.stride, pad, 1, c)


def unused_taps(kernel: int, stride: int, size: int) -> int:
    """How many outer rings of a ``kernel`` x ``kernel`` convolution (padding ``kernel // 2``) touch only the zero
    padding of a ``size`` x ``size`` map at every output position.

    On the tiny maps of the last stages (1x1 and 2x2 at 32 px) a 7x7 depthwise kernel reaches far beyond the
    map: at 1x1 only its centre tap meets data. The other taps add exact zeros to the output and get exactly zero
    weight gradient, yet PyTorch's CPU depthwise backward pays for all 49: measured here (1 thread, channels_last)
    about 25 ms per call for 960 channels at 1x1 and 32 images, 0.5 ms with the centre tap alone; in a profile of
    32 px sandwich steps at 32 images, such calls took about a third of the CPU time. Dropping the rings keeps
    the output size: with padding p = k // 2 it is floor((size + 2p - k) / stride) + 1, and 2p - k = -1 for every
    odd k.
    """
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    first = max(0, pad - (out - 1) * stride)  # lowest tap index that meets data at some output position
    last = min(kernel - 1, size - 1 + pad)  # highest
    return max(0, min(first, kernel - 1 - last))


class DynamicSE(nn.Module):
    """Squeeze-and-excitation over the leading channels; its bottleneck width follows the active channels."""

    def __init__(self, max_channels: int) -> None:
        super().__init__()
        self.fc = SqueezeExcite(max_channels, se_channels(max_channels)).fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        m = se_channels(c)
        reduce, expand = self.fc.reduce, self.fc.expand
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(F.conv2d(y, reduce.weight[:m, :c], reduce.bias[:m]))
        y = F.hardsigmoid(F.conv2d(y, expand.weight[:c, :m], expand.bias[:c]))
        return x * y


class DynamicMBConv(nn.Module):
    """An MBConv whose kernel size and expand ratio are chosen per call."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, se: bool, max_expand: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.act_name, self.use_se = cin, cout, stride, act, se
        max_mid = mid_channels(cin, max_expand)
        self.inverted_bottleneck = Part(conv=DynamicPointConv(cin, max_mid), bn=DynamicBN(max_mid),
                                        act=activation(act))
        depth = {"conv": DynamicDWConv(max_mid, stride), "bn": DynamicBN(max_mid), "act": activation(act)}
        if se:
            depth["se"] = DynamicSE(max_mid)
        self.depth_conv = Part(**depth)
        self.point_linear = Part(conv=DynamicPointConv(max_mid, cout), bn=DynamicBN(cout))

    def forward(self, x: torch.Tensor, kernel: int, expand: int) -> torch.Tensor:
        ib, dc, pl = self.inverted_bottleneck, self.depth_conv, self.point_linear
        x = ib.act(ib.bn(ib.conv(x, mid_channels(self.in_channels, expand))))
        x = dc.act(dc.bn(dc.conv(x, kernel)))
        if self.use_se:
            x = dc.se(x)
        return pl.bn(pl.conv(x, self.out_channels))

    def to_static(self, kernel: int, expand: int) -> MBConv:
        """A static :class:`MBConv` holding a copy of the active weights."""
        mid = mid_channels(self.in_channels, expand)
        out = MBConv(self.in_channels, self.out_channels, mid, kernel, self.stride, self.act_name, self.use_se)
        ib, dc, pl = self.inverted_bottleneck, self.depth_conv, self.point_linear
        with torch.no_grad():
            out.inverted_bottleneck.conv.weight.copy_(ib.conv.weight(mid, self.in_channels))
            copy_bn(out.inverted_bottleneck.bn, ib.bn.bn)
            out.depth_conv.conv.weight.copy_(dc.conv.weight(mid, kernel))
            copy_bn(out.depth_conv.bn, dc.bn.bn)
            if self.use_se:
                m = se_channels(mid)
                src, dst = dc.se.fc, out.depth_conv.se.fc
                dst.reduce.weight.copy_(src.reduce.weight[:m, :mid])
                dst.reduce.bias.copy_(src.reduce.bias[:m])
                dst.expand.weight.copy_(src.expand.weight[:mid, :m])
                dst.expand.bias.copy_(src.expand.bias[:mid])
            out.point_linear.conv.weight.copy_(pl.conv.weight(self.out_channels, mid))
            copy_bn(out.point_linear.bn, pl.bn.bn)
        return out


class DynamicBlock(Block):
    """A :class:`DynamicMBConv` with an optional identity shortcut."""

    def forward(self, x: torch.Tensor, kernel: int, expand: int) -> torch.Tensor:  # type: ignore[override]
        y = self.conv(x, kernel, expand)
        return y + x if self.skip else y


def copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d) -> None:
    """Copy the leading channels of ``src``'s affine terms and running statistics into ``dst``."""
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)
    dst.momentum, dst.eps = src.momentum, src.eps
