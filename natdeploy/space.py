"""The NAT / Once-for-All MobileNetV3 search space: ``Arch``, ``SearchSpace``, encodings, MAdds and params.

This module imports nothing else of natdeploy's but its error family: every other part speaks ``Arch``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from natdeploy.errors import ArchError

N_STAGES = 5
MAX_DEPTH = 4
N_BLOCKS = N_STAGES * MAX_DEPTH
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
WIDTHS = (1.0, 1.2)
GENOME_LENGTH = 2 + N_BLOCKS

# OFA MobileNetV3 layout: stem, block 0, five elastic stages, final expand, feature mix.
BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "hswish", "hswish", "hswish")
STAGE_SE = (False, True, False, True, True)
SE_REDUCTION = 4
CHANNEL_DIVISOR = 8
MIN_RESOLUTION = 32
MAX_RESOLUTION = 512


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


def _check_choices(name: str, values: Sequence[Any], allowed: Sequence[Any], length: int) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ArchError(f"{name} must be a list of {length} values from {list(allowed)}, got {values!r}")
    if len(values) != length:
        raise ArchError(f"{name} must have {length} entries, got {len(values)}: {list(values)!r}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) not in allowed:
            raise ArchError(f"{name}[{i}]={v!r} is not allowed; allowed values: {list(allowed)}")
        out.append(int(v))
    return tuple(out)


@dataclass(frozen=True)
class Arch:
    """One subnet of the supernet: kernel and expand ratio per block, depth per stage, resolution, width.

    ``ks`` and ``e`` always have 20 entries, 4 per stage. Entries of blocks beyond a stage's depth do not
    exist in the network; they are stored as the smallest values (k=3, e=3) so that equal networks compare equal.
    """

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int
    w: float = 1.0

    def __post_init__(self) -> None:
        d = _check_choices("d", self.d, DEPTHS, N_STAGES)
        ks = list(_check_choices("ks", self.ks, KERNELS, N_BLOCKS))
        e = list(_check_choices("e", self.e, EXPANDS, N_BLOCKS))
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)):
            raise ArchError(f"r={self.r!r} must be an integer resolution in pixels")
        if not MIN_RESOLUTION <= int(self.r) <= MAX_RESOLUTION:
            raise ArchError(f"r={self.r} is out of range; allowed: {MIN_RESOLUTION}..{MAX_RESOLUTION} pixels")
        try:
            w = float(self.w)
        except (TypeError, ValueError):
            raise ArchError(f"w={self.w!r} is not an allowed width multiplier; allowed: {list(WIDTHS)}") from None
        if w not in WIDTHS:
            raise ArchError(f"w={self.w!r} is not an allowed width multiplier; allowed: {list(WIDTHS)}")
        for s in range(N_STAGES):
            for j in range(d[s], MAX_DEPTH):
                ks[s * MAX_DEPTH + j] = KERNELS[0]
                e[s * MAX_DEPTH + j] = EXPANDS[0]
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "ks", tuple(ks))
        object.__setattr__(self, "e", tuple(e))
        object.__setattr__(self, "r", int(self.r))
        object.__setattr__(self, "w", w)

    # ----- structure -------------------------------------------------------------------------------------------
    def active_blocks(self) -> list[tuple[int, int, int, int]]:
        """``(block_index, stage, kernel, expand)`` for each block that exists, in network order (0..19)."""
        out = []
        for s in range(N_STAGES):
            for j in range(self.d[s]):
                i = s * MAX_DEPTH + j
                out.append((i, s, self.ks[i], self.e[i]))
        return out

    def replace(self, **changes: Any) -> "Arch":
        """A copy with some fields changed (validated again)."""
        fields = self.to_dict()
        fields.update(changes)
        return Arch(**fields)

    # ----- encodings -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The NAT/OFA dict ``{"ks": [20], "e": [20], "d": [5], "r": int, "w": float}``."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": self.r, "w": self.w}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "Arch":
        """Read the NAT/OFA dict. ``w`` defaults to 1.0; ``r`` may also be given as ``resolution``."""
        if not isinstance(spec, dict):
            raise ArchError(f"an Arch dict must be a mapping with keys ks, e, d, r; got {type(spec).__name__}")
        spec = dict(spec)
        if "r" not in spec and "resolution" in spec:
            spec["r"] = spec.pop("resolution")
        missing = [k for k in ("ks", "e", "d", "r") if k not in spec]
        if missing:
            raise ArchError(f"Arch dict is missing {missing}; it needs ks, e, d and r (w optional)")
        unknown = sorted(set(spec) - {"ks", "e", "d", "r", "w"})
        if unknown:
            raise ArchError(f"Arch dict has unknown keys {unknown}; allowed: ks, e, d, r, w")
        return cls(ks=spec["ks"], e=spec["e"], d=spec["d"], r=spec["r"], w=spec.get("w", 1.0))

    def to_string(self) -> str:
        """Short readable form, safe in file names: ``w1.0-r224-3354-...``, one group of k,e digit pairs per stage."""
        stages = []
        for s in range(N_STAGES):
            stages.append("".join(f"{self.ks[s * 4 + j]}{self.e[s * 4 + j]}" for j in range(self.d[s])))
        return f"w{self.w:.1f}-r{self.r}-" + "-".join(stages)

    __str__ = to_string

    @classmethod
    def from_string(cls, text: str) -> "Arch":
        """Parse :meth:`to_string`'s form."""
        m = re.fullmatch(r"w(\d+(?:\.\d+)?)-r(\d+)((?:-\d+){5})", text.strip())
        if not m:
            raise ArchError(
                f"cannot parse Arch string {text!r}; expected 'w<width>-r<res>-' then 5 stage groups of "
                "kernel/expand digit pairs, e.g. 'w1.0-r224-3333-3333-3333-3333-3333'"
            )
        ks, e, d = [], [], []
        for s, group in enumerate(m.group(3).split("-")[1:]):
            if len(group) % 2 or not 2 * DEPTHS[0] <= len(group) <= 2 * MAX_DEPTH:
                raise ArchError(f"stage {s} group {group!r} in {text!r} must hold 2 to 4 kernel/expand digit pairs")
            pairs = [(int(group[i]), int(group[i + 1])) for i in range(0, len(group), 2)]
            d.append(len(pairs))
            pairs += [(KERNELS[0], EXPANDS[0])] * (MAX_DEPTH - len(pairs))
            ks += [p[0] for p in pairs]
            e += [p[1] for p in pairs]
        return cls(ks=ks, e=e, d=d, r=int(m.group(2)), w=float(m.group(1)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def parse(cls, text: str) -> "Arch":
        """Accept either the readable string or a JSON dict (as typed on a command line)."""
        text = text.strip()
        if text.startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ArchError(f"Arch JSON is not valid JSON: {exc}") from None
        return cls.from_string(text)

    # ----- OFA net.config -----------------------------------------------------------------------------------
    def to_ofa_config(self, n_classes: int = 1000, dropout_rate: float = 0.1, bn_momentum: float = 0.1,
                      bn_eps: float = 1e-5) -> dict[str, Any]:
        """OFA's ``MobileNetV3.config`` of this static subnet (the JSON that ``net.config`` returns)."""
        return _ofa_config(self, n_classes, dropout_rate, bn_momentum, bn_eps)

    @classmethod
    def from_ofa_config(cls, config: dict[str, Any], resolution: int | None = None) -> "Arch":
        """Read OFA's static-subnet ``net.config``. It holds no resolution: pass it, or a top-level ``resolution`` key."""
        return _arch_from_ofa_config(config, resolution)


def _conv_layer_config(cin: int, cout: int, k: int, stride: int, act: str | None, bias: bool = False,
                       use_bn: bool = True) -> dict[str, Any]:
    return {"name": "ConvLayer", "kernel_size": k, "stride": stride, "dilation": 1, "groups": 1, "bias": bias,
            "has_shuffle": False, "use_se": False, "in_channels": cin, "out_channels": cout, "use_bn": use_bn,
            "act_func": act, "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _ofa_act(act: str) -> str:
    return "h_swish" if act == "hswish" else act


def _mbconv_config(cin: int, cout: int, k: int, stride: int, e: int, mid: int | None, act: str,
                   se: bool) -> dict[str, Any]:
    return {"name": "MBConvLayer", "in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride,
            "expand_ratio": e, "mid_channels": mid, "act_func": _ofa_act(act), "use_se": se, "groups": None}


def _identity_config(c: int) -> dict[str, Any]:
    return {"name": "IdentityLayer", "in_channels": c, "out_channels": c, "use_bn": False, "act_func": None,
            "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _ofa_config(arch: Arch, n_classes: int, dropout_rate: float, momentum: float, eps: float) -> dict[str, Any]:
    widths = stage_widths(arch.w)
    blocks = [{"name": "ResidualBlock",
               "conv": _mbconv_config(widths[0], widths[1], 3, 1, 1, None, "relu", False),
               "shortcut": _identity_config(widths[1]) if widths[0] == widths[1] else None}]
    cin = widths[1]
    for i, s, k, e in arch.active_blocks():
        stride = STAGE_STRIDES[s] if i % MAX_DEPTH == 0 else 1
        cout = widths[2 + s]
        conv = _mbconv_config(cin, cout, k, stride, e, mid_channels(cin, e), STAGE_ACTS[s], STAGE_SE[s])
        shortcut = _identity_config(cin) if stride == 1 and cin == cout else None
        blocks.append({"name": "ResidualBlock", "conv": conv, "shortcut": shortcut})
        cin = cout
    return {
        "name": "MobileNetV3",
        "bn": {"momentum": momentum, "eps": eps, "ws_eps": None},
        "first_conv": _conv_layer_config(3, widths[0], 3, 2, "h_swish"),
        "blocks": blocks,
        "final_expand_layer": _conv_layer_config(cin, widths[7], 1, 1, "h_swish"),
        "feature_mix_layer": _conv_layer_config(widths[7], widths[8], 1, 1, "h_swish", bias=False, use_bn=False),
        "classifier": {"name": "LinearLayer", "in_features": widths[8], "out_features": n_classes, "bias": True,
                       "use_bn": False, "act_func": None, "dropout_rate": dropout_rate, "ops_order": "weight_bn_act"},
    }


def _arch_from_ofa_config(config: dict[str, Any], resolution: int | None) -> Arch:
    if not isinstance(config, dict) or "blocks" not in config or "first_conv" not in config:
        raise ArchError("not an OFA MobileNetV3 net.config: it needs 'first_conv' and 'blocks'")
    r = resolution if resolution is not None else config.get("resolution", config.get("image_size"))
    if r is None:
        raise ArchError("OFA's net.config records no resolution; pass resolution=... (the input size in pixels)")
    stem = config["first_conv"]["out_channels"]
    by_stem = {stage_widths(w)[0]: w for w in WIDTHS}
    if stem not in by_stem:
        raise ArchError(f"net.config stem width {stem} matches no width multiplier; known stems: {by_stem}")
    w = by_stem[stem]
    widths = stage_widths(w)
    ks = [KERNELS[0]] * N_BLOCKS
    e = [EXPANDS[0]] * N_BLOCKS
    d = [0] * N_STAGES
    for n, block in enumerate(config["blocks"][1:], start=1):
        conv = block["conv"]
        stages = [s for s in range(N_STAGES) if widths[2 + s] == conv["out_channels"]]
        if not stages:
            raise ArchError(f"net.config block {n} has {conv['out_channels']} output channels, "
                             f"which is no stage width of w{w}: {list(widths[2:7])}")
        s = stages[0]
        if d[s] >= MAX_DEPTH:
            raise ArchError(f"net.config has more than {MAX_DEPTH} blocks in stage {s}")
        ks[s * MAX_DEPTH + d[s]] = conv["kernel_size"]
        e[s * MAX_DEPTH + d[s]] = conv["expand_ratio"]
        d[s] += 1
    return Arch(ks=ks, e=e, d=d, r=r, w=w)


# ----- per-layer plan: the one description of the network that MAdds, params and latency ops all read ---------
@dataclass(frozen=True)
class LayerSpec:
    """One layer of a static subnet, with its shapes. ``kind`` is stem, block0, mbconv, final_expand, pool,
    feature_mix or classifier."""

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
    expand: int = 1


def layer_plan(arch: Arch, n_classes: int = 1000) -> list[LayerSpec]:
    """The static subnet of ``arch`` as a list of layers with input and output shapes (batch 1)."""
    widths = stage_widths(arch.w)
    hw = conv_out(arch.r, 3, 2)
    plan = [LayerSpec("stem", arch.r, 3, hw, widths[0], kernel=3, stride=2, act="hswish")]
    plan.append(LayerSpec("block0", hw, widths[0], hw, widths[1], mid=widths[0], kernel=3, stride=1,
                          skip=widths[0] == widths[1], act="relu"))
    cin = widths[1]
    for i, s, k, e in arch.active_blocks():
        stride = STAGE_STRIDES[s] if i % MAX_DEPTH == 0 else 1
        cout = widths[2 + s]
        out_hw = conv_out(hw, k, stride)
        plan.append(LayerSpec("mbconv", hw, cin, out_hw, cout, mid=mid_channels(cin, e), kernel=k, stride=stride,
                              skip=stride == 1 and cin == cout, se=STAGE_SE[s], act=STAGE_ACTS[s], expand=e))
        hw, cin = out_hw, cout
    plan.append(LayerSpec("final_expand", hw, cin, hw, widths[7], act="hswish"))
    plan.append(LayerSpec("pool", hw, widths[7], 1, widths[7], kernel=hw, act="none"))
    plan.append(LayerSpec("feature_mix", 1, widths[7], 1, widths[8], act="hswish"))
    plan.append(LayerSpec("classifier", 1, widths[8], 1, n_classes, act="none"))
    return plan


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


def madds(arch: Arch, n_classes: int = 1000) -> int:
    """Multiply-adds of the static subnet for one image at ``arch.r`` (OFA's ``count_net_flops`` convention)."""
    return sum(layer_cost(layer)[0] for layer in layer_plan(arch, n_classes))


def params(arch: Arch, n_classes: int = 1000) -> int:
    """Trainable parameters of the static subnet (weights, biases and BN affine terms)."""
    return sum(layer_cost(layer)[1] for layer in layer_plan(arch, n_classes))


# ----- the search space ----------------------------------------------------------------------------------------
def _span(lo: int, hi: int, step: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


PRESETS: dict[str, dict[str, Any]] = {
    "nat": {"resolutions": _span(192, 256, 4), "widths": (1.0, 1.2)},
    "ofa": {"resolutions": _span(128, 224, 4), "widths": (1.0, 1.2)},
    "small": {"resolutions": _span(32, 64, 8), "widths": (1.0,)},
}


@dataclass(frozen=True)
class SearchSpace:
    """The allowed resolutions and widths (kernels, expand ratios and depths are OFA's fixed sets)."""

    resolutions: tuple[int, ...]
    widths: tuple[float, ...] = (1.0,)
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        res = tuple(sorted({int(r) for r in self.resolutions}))
        if not res:
            raise ArchError("a SearchSpace needs at least one resolution")
        for r in res:
            if not MIN_RESOLUTION <= r <= MAX_RESOLUTION:
                raise ArchError(f"resolution {r} is out of range; allowed: {MIN_RESOLUTION}..{MAX_RESOLUTION}")
        wid = tuple(sorted({float(w) for w in self.widths}))
        for w in wid:
            if w not in WIDTHS:
                raise ArchError(f"width {w} is not allowed; allowed: {list(WIDTHS)}")
        object.__setattr__(self, "resolutions", res)
        object.__setattr__(self, "widths", wid)

    @classmethod
    def preset(cls, name: str, resolutions: Sequence[int] | None = None,
               widths: Sequence[float] | None = None) -> "SearchSpace":
        """A named preset (``nat``, ``ofa``, ``small``), optionally with its resolutions or widths overridden."""
        if name not in PRESETS:
            raise ArchError(f"unknown search-space preset {name!r}; known: {sorted(PRESETS)}")
        p = PRESETS[name]
        return cls(resolutions=tuple(resolutions or p["resolutions"]), widths=tuple(widths or p["widths"]), name=name)

    def validate(self, arch: Arch) -> Arch:
        """Raise ``ValueError`` when ``arch`` lies outside this space; return it otherwise."""
        if arch.r not in self.resolutions:
            raise ArchError(f"r={arch.r} is not in search space {self.name!r}; allowed: {list(self.resolutions)}")
        if arch.w not in self.widths:
            raise ArchError(f"w={arch.w} is not in search space {self.name!r}; allowed: {list(self.widths)}")
        return arch

    # ----- NAT's 22-integer genome -------------------------------------------------------------------------
    @property
    def lower_bounds(self) -> np.ndarray:
        return np.zeros(GENOME_LENGTH, dtype=int)

    @property
    def upper_bounds(self) -> np.ndarray:
        n_choices = len(KERNELS) * len(EXPANDS)
        return np.array([len(self.resolutions) - 1, len(self.widths) - 1] + [n_choices] * N_BLOCKS, dtype=int)

    def encode(self, arch: Arch) -> np.ndarray:
        """NAT's genome: resolution index, width index, then per block 0 (skipped) or 1 + k_idx + 3*e_idx."""
        self.validate(arch)
        genes = [self.resolutions.index(arch.r), self.widths.index(arch.w)]
        for s in range(N_STAGES):
            for j in range(MAX_DEPTH):
                i = s * MAX_DEPTH + j
                genes.append(0 if j >= arch.d[s] else
                             1 + KERNELS.index(arch.ks[i]) + len(KERNELS) * EXPANDS.index(arch.e[i]))
        return np.array(genes, dtype=int)

    def decode(self, genome: Sequence[int]) -> Arch:
        """Inverse of :meth:`encode`. Skipped blocks anywhere in a stage are pushed to its end."""
        g = np.asarray(genome)
        if g.ndim != 1 or g.shape[0] != GENOME_LENGTH:
            raise ValueError(f"a genome must hold {GENOME_LENGTH} integers, got shape {tuple(g.shape)}")
        if not np.all(np.equal(np.mod(g, 1), 0)):
            raise ValueError(f"a genome must hold integers, got {g.tolist()}")
        g = g.astype(int)
        bad = np.nonzero((g < self.lower_bounds) | (g > self.upper_bounds))[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"genome[{i}]={g[i]} is out of range 0..{self.upper_bounds[i]}")
        ks, e, d = [], [], []
        for s in range(N_STAGES):
            genes = [x for x in g[2 + s * MAX_DEPTH: 2 + (s + 1) * MAX_DEPTH] if x > 0]
            if len(genes) < DEPTHS[0]:
                raise ValueError(f"genome stage {s} keeps {len(genes)} blocks; each stage needs at least {DEPTHS[0]}")
            d.append(len(genes))
            for x in genes + [1] * (MAX_DEPTH - len(genes)):
                ks.append(KERNELS[(x - 1) % len(KERNELS)])
                e.append(EXPANDS[(x - 1) // len(KERNELS)])
        return Arch(ks=ks, e=e, d=d, r=self.resolutions[g[0]], w=self.widths[g[1]])

    # ----- sampling and extremes ----------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int | None = None) -> Arch | list[Arch]:
        """Uniformly random Arch(s), drawn from the given generator only."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError("sample() needs an explicit numpy.random.Generator, e.g. np.random.default_rng(0)")
        if n is None:
            return self._sample_one(rng)
        return [self._sample_one(rng) for _ in range(n)]

    def _sample_one(self, rng: np.random.Generator) -> Arch:
        return Arch(ks=rng.choice(KERNELS, N_BLOCKS).tolist(), e=rng.choice(EXPANDS, N_BLOCKS).tolist(),
                    d=rng.choice(DEPTHS, N_STAGES).tolist(), r=int(rng.choice(self.resolutions)),
                    w=float(rng.choice(self.widths)))

    def smallest(self, w: float | None = None) -> Arch:
        """The Arch with the fewest MAdds: lowest resolution, k3, e3, depth 2 everywhere."""
        return Arch(ks=[min(KERNELS)] * N_BLOCKS, e=[min(EXPANDS)] * N_BLOCKS, d=[min(DEPTHS)] * N_STAGES,
                    r=self.resolutions[0], w=self.widths[0] if w is None else w)

    def largest(self, w: float | None = None) -> Arch:
        """The Arch with the most MAdds: highest resolution, k7, e6, depth 4 everywhere."""
        return Arch(ks=[max(KERNELS)] * N_BLOCKS, e=[max(EXPANDS)] * N_BLOCKS, d=[max(DEPTHS)] * N_STAGES,
                    r=self.resolutions[-1], w=self.widths[-1] if w is None else w)
