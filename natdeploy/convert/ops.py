"""Standalone torch modules for single ops of a static subnet, with seeded random weights.

The latency backends measure one op at a time; these modules are what they convert. Weights and BN running
statistics are random but of realistic scale (fan-in scaled convs, positive variances away from 1), so a
converter that drops a BN term or transposes a kernel gives visibly wrong numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from natdeploy.space import LayerSpec
from natdeploy.supernet.layers import Block, Classifier, ConvBNAct, MBConv

OP_KINDS = ("stem", "block0", "mbconv", "final_expand", "pool", "feature_mix", "classifier")


class GlobalAvgPool(nn.Module):
    """Mean over H and W, keeping them: (N, C, H, W) -> (N, C, 1, 1), as the subnet's head does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


def randomize_weights_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every conv, linear and BN of ``module`` in place with seeded random values; returns ``module``.

    A local generator keeps the global RNG untouched. Conv and linear weights are fan-in scaled (He normal) so
    activations keep their scale through a block; BN gets random affine terms and running statistics.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    def uniform(shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(normal(m.weight.shape, math.sqrt(2.0 / fan_in)))
                if m.bias is not None:
                    m.bias.copy_(normal(m.bias.shape, 0.1))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(uniform(torch.Size([c]), 0.5, 1.5))
                m.bias.copy_(normal(torch.Size([c]), 0.2))
                m.running_mean.copy_(normal(torch.Size([c]), 0.2))
                m.running_var.copy_(uniform(torch.Size([c]), 0.5, 2.0))
                m.num_batches_tracked.zero_()
    return module


def build_op_module(layer: LayerSpec, seed: int = 0) -> nn.Module:
    """A standalone eval-mode torch module for one layer of :func:`natdeploy.space.layer_plan`, with seeded
    random weights. Its input shape is :func:`op_input_shape`."""
    # Built on the meta device: the layers' own init would draw from the global RNG (and cost time), and every
    # parameter and buffer is filled by randomize_weights_ below anyway.
    with torch.device("meta"):
        module = _build(layer)
    return randomize_weights_(module.to_empty(device="cpu"), seed).eval()


def _build(layer: LayerSpec) -> nn.Module:
    kind = layer.kind
    if kind == "stem":
        module: nn.Module = ConvBNAct(layer.in_c, layer.out_c, layer.kernel, layer.stride, act="hswish")
    elif kind == "block0":
        conv = MBConv(layer.in_c, layer.out_c, layer.mid, layer.kernel, layer.stride, layer.act, layer.se,
                      expand=False)
        module = Block(conv, layer.skip)
    elif kind == "mbconv":
        conv = MBConv(layer.in_c, layer.out_c, layer.mid, layer.kernel, layer.stride, layer.act, layer.se)
        module = Block(conv, layer.skip)
    elif kind == "final_expand":
        module = ConvBNAct(layer.in_c, layer.out_c, 1, act="hswish")
    elif kind == "pool":
        module = GlobalAvgPool()
    elif kind == "feature_mix":
        module = ConvBNAct(layer.in_c, layer.out_c, 1, act="hswish", bn=False)
    elif kind == "classifier":
        module = nn.Sequential(nn.Flatten(1), Classifier(layer.in_c, layer.out_c, 0.0))
    else:
        raise ValueError(f"unknown op kind {kind!r}; allowed: {', '.join(OP_KINDS)}")
    return module


def op_input_shape(layer: LayerSpec) -> tuple[int, int, int, int]:
    """The NCHW input shape (batch 1) of the module that :func:`build_op_module` builds for ``layer``."""
    return (1, layer.in_c, layer.in_hw, layer.in_hw)
