"""The fixed layout of the OFA MobileNetV3 supernet: its choices, its stage plan, and the layer description.

Everything here is independent of any one subnet. :func:`supernet_plan` is the one home of the per-stage
widths, strides, activations and SE, and of the stride/skip rule; the supernet, ``Arch.to_ofa_config`` and
``layer_plan`` all read it. :class:`LayerSpec` is the one description of a layer, shared by MAdds, params,
the op builders and the latency tables (``natdeploy.latency.ops.OpSig`` names a ``LayerSpec`` in OFA's terms).

This module imports nothing else of natdeploy's; ``natdeploy.space`` re-exports its names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from natdeploy.errors import ArchError

N_STAGES = 5
MAX_DEPTH = 4
N_BLOCKS = N_STAGES * MAX_DEPTH
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
WIDTHS = (1.0, 1.2)

# OFA MobileNetV3 layout: stem, block 0, five elastic stages, final expand, feature mix.
BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "hswish", "hswish", "hswish")
STAGE_SE = (False, True, False, True, True)
SE_REDUCTION = 4
CHANNEL_DIVISOR = 8

# (kernel, stride, activation) of the layers every subnet has in the same form; the pool's kernel is its input.
FIXED_LAYERS: dict[str, tuple[int | None, int, str]] = {
    "stem": (3, 2, "hswish"), "final_expand": (1, 1, "hswish"), "pool": (None, 1, "none"),
    "feature_mix": (1, 1, "hswish"), "classifier": (1, 1, "none")}
BLOCK0_KERNEL = 3


def make_divisible(v: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Round ``v`` to a multiple of ``divisor`` the way OFA and MobileNet do (never down by more than 10%)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def stage_widths(w: float) -> tuple[int, ...]:
    """The 9 channel widths (stem, block 0, 5 stages, final expand, feature mix) at width multiplier ``w``."""
    if w not in WIDTHS:
        raise ArchError(f"w={w!r} is not an allowed width multiplier; allowed: {list(WIDTHS)}")
    return tuple(make_divisible(c * w) for c in BASE_WIDTHS)


def mid_channels(in_channels: int, expand: int) -> int:
    """Channels inside an MBConv block with ``in_channels`` inputs and expand ratio ``expand``."""
    return make_divisible(round(in_channels * expand))


def se_channels(mid: int) -> int:
    """Channels inside the squeeze-and-excitation module of a block with ``mid`` channels."""
    return make_divisible(mid // SE_REDUCTION)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a 'same'-padded convolution (padding k//2)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


# ----- the layer description -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One layer of a static subnet, with its shapes (batch 1).

    ``kind`` is stem, block0, mbconv, final_expand, pool, feature_mix or classifier. ``block0`` is an MBConv
    without the expansion 1x1 (expand ratio 1, so ``mid == in_c``); an ``mbconv`` always expands (``mid > in_c``),
    which is what lets an OFA key, which names both ``expanded_conv``, map back to exactly one kind.
    """

    kind: str
    in_hw: int
    in_c: int
    out_hw: int
    out_c: int
    mid: int = 0
    kernel: int = 1
    stride: int = 1
    skip: bool = False
    se: bool = False
    act: str = "relu"


def fixed_layer(kind: str, in_hw: int, in_c: int, out_hw: int, out_c: int) -> LayerSpec:
    """A stem, final expand, pool, feature mix or classifier layer: their kernel, stride and activation are fixed."""
    kernel, stride, act = FIXED_LAYERS[kind]
    return LayerSpec(kind, in_hw, in_c, out_hw, out_c, kernel=in_hw if kernel is None else kernel, stride=stride,
                     act=act)


def layer_cost(layer: LayerSpec) -> tuple[int, int]:
    """(MAdds, params) of one layer, in OFA's convention: conv and linear multiply-adds, SE included, no bias adds."""
    out_px = layer.out_hw * layer.out_hw
    in_px = layer.in_hw * layer.in_hw
    if layer.kind in ("stem", "final_expand"):
        macs = layer.in_c * layer.kernel ** 2 * layer.out_c * out_px
        return macs, layer.in_c * layer.kernel ** 2 * layer.out_c + 2 * layer.out_c
    if layer.kind == "feature_mix":
        return layer.in_c * layer.out_c, layer.in_c * layer.out_c
    if layer.kind == "classifier":
        return layer.in_c * layer.out_c, layer.in_c * layer.out_c + layer.out_c
    if layer.kind == "pool":
        return 0, 0
    mid = layer.mid
    macs = params = 0
    if layer.kind == "mbconv":  # block 0 has no inverted bottleneck (expand ratio 1)
        macs += layer.in_c * mid * in_px
        params += layer.in_c * mid + 2 * mid
    macs += mid * layer.kernel ** 2 * out_px
    params += mid * layer.kernel ** 2 + 2 * mid
    if layer.se:
        sm = se_channels(mid)
        macs += 2 * mid * sm
        params += 2 * mid * sm + sm + mid
    macs += mid * layer.out_c * out_px
    params += mid * layer.out_c + 2 * layer.out_c
    return macs, params


# ----- the stage plan ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSlot:
    """One MBConv position of the supernet at one width: what every subnet using it shares, whatever its k and e."""

    in_c: int
    out_c: int
    stride: int
    act: str
    se: bool

    @property
    def skip(self) -> bool:
        """An identity shortcut exists only where the block keeps both resolution and channels (OFA's rule)."""
        return self.stride == 1 and self.in_c == self.out_c

    def layer(self, in_hw: int, kernel: int, mid: int, kind: str = "mbconv") -> LayerSpec:
        """This slot as a layer at input size ``in_hw`` with kernel ``kernel`` and ``mid`` expanded channels."""
        return LayerSpec(kind, in_hw, self.in_c, conv_out(in_hw, kernel, self.stride), self.out_c, mid=mid,
                         kernel=kernel, stride=self.stride, skip=self.skip, se=self.se, act=self.act)


@dataclass(frozen=True)
class SupernetPlan:
    """The supernet at one width: channel widths, block 0, and the 20 elastic block slots (4 per stage).

    A subnet of depth ``d[s]`` uses the first ``d[s]`` slots of stage ``s``. A slot's input channels and stride do
    not depend on the depths chosen, because every stage keeps its first block and ends at its own width.
    """

    widths: tuple[int, ...]
    block0: BlockSlot
    blocks: tuple[BlockSlot, ...]

    @property
    def stem_c(self) -> int:
        return self.widths[0]

    @property
    def last_c(self) -> int:
        """Channels out of the last stage (into the final expand)."""
        return self.blocks[-1].out_c

    @property
    def final_expand_c(self) -> int:
        return self.widths[7]

    @property
    def feature_mix_c(self) -> int:
        return self.widths[8]

    def block0_layer(self, in_hw: int) -> LayerSpec:
        """Block 0 as a layer: k3, e1 (no expansion conv, so ``mid`` is its input width)."""
        return self.block0.layer(in_hw, BLOCK0_KERNEL, self.block0.in_c, kind="block0")


@lru_cache(maxsize=None)
def supernet_plan(w: float) -> SupernetPlan:
    """The stage plan of the supernet at width multiplier ``w``."""
    widths = stage_widths(w)
    block0 = BlockSlot(widths[0], widths[1], 1, "relu", False)
    slots = []
    cin = widths[1]
    for s in range(N_STAGES):
        for j in range(MAX_DEPTH):
            slots.append(BlockSlot(cin, widths[2 + s], STAGE_STRIDES[s] if j == 0 else 1, STAGE_ACTS[s], STAGE_SE[s]))
            cin = widths[2 + s]
    return SupernetPlan(widths, block0, tuple(slots))
