"""The NAT / Once-for-All MobileNetV3 search space: ``Arch``, ``SearchSpace``, encodings, MAdds and params.

It imports only ``natdeploy.layout`` (the supernet's fixed layout, whose names it re-exports), ``natdeploy.ofa_config``
(OFA's net.config, built on the layout alone) and the leaf ``natdeploy.errors``: every other part speaks ``Arch``,
and genome arrays go through :class:`SearchSpace`'s vectorised methods.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from natdeploy.errors import ArchError, ConfigError
from natdeploy.layout import (  # noqa: F401  (re-exported: the rest of natdeploy imports them from here)
    BASE_WIDTHS, BLOCK0_KERNEL, CHANNEL_DIVISOR, DEPTHS, EXPANDS, FIXED_LAYERS, KERNELS, MAX_DEPTH, N_BLOCKS, N_STAGES,
    SE_REDUCTION, STAGE_ACTS, STAGE_SE, STAGE_STRIDES, WIDTHS, BlockSlot, LayerSpec, SupernetPlan, conv_out,
    fixed_layer, layer_cost, make_divisible, mid_channels, se_channels, stage_widths, supernet_plan)
from natdeploy.ofa_config import build_config, parse_config, read_net_config

GENOME_LENGTH = 2 + N_BLOCKS
N_CHOICES = len(KERNELS) * len(EXPANDS)  # block gene 1 + c for choice c = k_idx + 3 * e_idx; 0 skips the block
MIN_RESOLUTION = 32
MAX_RESOLUTION = 512
# A choice index's kernel and expand ratio, for vectorised decoding.
CHOICE_KERNELS = np.array([KERNELS[c % len(KERNELS)] for c in range(N_CHOICES)])
CHOICE_EXPANDS = np.array([EXPANDS[c // len(KERNELS)] for c in range(N_CHOICES)])
# A stage's pattern of kept slots: bit j set when its slot j keeps a block (see stage_patterns). Per pattern: how
# many blocks the stage keeps, the canonical order of its slots (the kept ones in their order, then the skipped
# ones: a stable sort of "skipped"), and whether that order is the slots' own.
PATTERN_KEPT = np.array([bin(p).count("1") for p in range(2 ** MAX_DEPTH)])
_STAGE_ORDER = np.array([np.argsort([not (p >> j) & 1 for j in range(MAX_DEPTH)], kind="stable")
                         for p in range(2 ** MAX_DEPTH)])
_IN_ORDER = (_STAGE_ORDER == np.arange(MAX_DEPTH)).all(axis=1)
_SLOT_BITS = 1 << np.arange(MAX_DEPTH)


def stage_patterns(blocks: np.ndarray) -> np.ndarray:
    """The kept-slot pattern of each stage of ``blocks``, block genes of shape (..., MAX_DEPTH) (0: skipped): an
    array of shape (...) of values below 2 ** MAX_DEPTH, bit j set when slot j keeps a block."""
    return (np.asarray(blocks) != 0) @ _SLOT_BITS


def block_gene(kernel: int, expand: int) -> int:
    """The genome's gene of a kept block: 1 + k_idx + 3 * e_idx."""
    return 1 + KERNELS.index(kernel) + len(KERNELS) * EXPANDS.index(expand)


def choice_kernel_expand(choices: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, expand ratio) of choice indices (gene - 1), elementwise; the inverse of :func:`block_gene`."""
    return CHOICE_KERNELS[choices], CHOICE_EXPANDS[choices]


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
        blocks = [(i, k, e) for i, _, k, e in self.active_blocks()]
        return build_config(self.w, blocks, n_classes, dropout_rate, bn_momentum, bn_eps)

    @classmethod
    def from_ofa_config(cls, config: dict[str, Any], resolution: int | None = None) -> "Arch":
        """Read OFA's static-subnet ``net.config`` in either of OFA's layouts (``conv`` or the older
        ``mobile_inverted_conv``). It holds no resolution: pass it, or a top-level ``resolution`` key."""
        return cls.from_dict(parse_config(config, resolution))

    @classmethod
    def from_ofa_file(cls, path: str | os.PathLike, resolution: int | None = None) -> "Arch":
        """Read a ``net.config`` file (either layout); the resolution is ``resolution``, else one in the file,
        else a ``run.config`` beside it. Any problem is a :class:`ConfigError` that names the file."""
        fields = read_net_config(path, resolution)
        try:
            return cls.from_dict(fields)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None


# ----- per-layer plan: the one description of the network that MAdds, params and latency ops all read ---------
def layer_plan(arch: Arch, n_classes: int = 1000) -> list[LayerSpec]:
    """The static subnet of ``arch`` as a list of layers with input and output shapes (batch 1)."""
    plan = supernet_plan(arch.w)
    hw = conv_out(arch.r, FIXED_LAYERS["stem"][0], FIXED_LAYERS["stem"][1])
    layers = [fixed_layer("stem", arch.r, 3, hw, plan.stem_c), plan.block0_layer(hw)]
    for i, _, k, e in arch.active_blocks():
        slot = plan.blocks[i]
        layers.append(slot.layer(hw, k, mid_channels(slot.in_c, e)))
        hw = layers[-1].out_hw
    c = plan.final_expand_c
    layers.append(fixed_layer("final_expand", hw, plan.last_c, hw, c))
    layers.append(fixed_layer("pool", hw, c, 1, c))
    layers.append(fixed_layer("feature_mix", 1, c, 1, plan.feature_mix_c))
    layers.append(fixed_layer("classifier", 1, plan.feature_mix_c, 1, n_classes))
    return layers


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

    def at_width(self, width: float) -> "SearchSpace":
        """This space narrowed to one width: what one supernet of a several-width search trains and samples."""
        if float(width) not in self.widths:
            raise ArchError(f"width {width} is not in search space {self.name!r}; allowed: {list(self.widths)}")
        return SearchSpace(resolutions=self.resolutions, widths=(float(width),), name=self.name)

    def validate(self, arch: Arch) -> Arch:
        """Raise ``ValueError`` when ``arch`` lies outside this space; return it otherwise."""
        if arch.r not in self.resolutions:
            raise ArchError(f"r={arch.r} is not in search space {self.name!r}; allowed: {list(self.resolutions)}")
        if arch.w not in self.widths:
            raise ArchError(f"w={arch.w} is not in search space {self.name!r}; allowed: {list(self.widths)}")
        return arch

    # ----- NAT's 22-integer genome -------------------------------------------------------------------------
    # Layout: resolution index, width index, then one gene per block (5 stages x 4), 0 for a skipped block or
    # block_gene(k, e). A skipped block counts as if it stood at the end of its stage; each stage keeps >= 2 blocks.
    # The array methods below take (N, 22) arrays and are the one implementation of these rules.
    @property
    def lower_bounds(self) -> np.ndarray:
        return np.zeros(GENOME_LENGTH, dtype=int)

    @property
    def upper_bounds(self) -> np.ndarray:
        return np.array([len(self.resolutions) - 1, len(self.widths) - 1] + [N_CHOICES] * N_BLOCKS, dtype=int)

    @staticmethod
    def canonical(genomes: np.ndarray) -> np.ndarray:
        """Genomes as int64 with skipped blocks (gene 0) pushed to the end of each stage, the others kept in order:
        genomes of the same network become equal rows."""
        g = np.array(genomes, dtype=np.int64).reshape(-1, GENOME_LENGTH)
        SearchSpace.order_stages(g, stage_patterns(g[:, 2:].reshape(len(g), N_STAGES, MAX_DEPTH)))
        return g

    @staticmethod
    def order_stages(genomes: np.ndarray, patterns: np.ndarray) -> None:
        """Make C-contiguous (N, 22) int64 ``genomes`` canonical in place, given their (N, 5) :func:`stage_patterns`.
        A stage's new order depends only on its pattern; only stages out of order move."""
        if genomes.dtype != np.int64 or not genomes.flags.c_contiguous:
            raise ValueError("order_stages works in place on a C-contiguous int64 array")
        move = np.flatnonzero(~_IN_ORDER[patterns])  # row * N_STAGES + stage
        if len(move):
            at = (move // N_STAGES * GENOME_LENGTH + 2 + move % N_STAGES * MAX_DEPTH)[:, None]
            flat = genomes.reshape(-1)
            flat[at + np.arange(MAX_DEPTH)] = flat[at + _STAGE_ORDER[patterns.reshape(-1)[move]]]

    @staticmethod
    def depths(genomes: np.ndarray) -> np.ndarray:
        """(N, 5) number of kept blocks per stage."""
        g = np.asarray(genomes)
        return (g[:, 2:].reshape(len(g), N_STAGES, MAX_DEPTH) != 0).sum(axis=2)

    @staticmethod
    def block_choices(genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(choice, active), both (N, 20) in network order after :meth:`canonical`: the choice index
        ``k_idx + 3 * e_idx`` of each block (0 where skipped) and whether the block exists."""
        blocks = SearchSpace.canonical(genomes)[:, 2:]
        return np.maximum(blocks - 1, 0), blocks > 0

    @staticmethod
    def kernel_expand(genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kernel, expand, active), each (N, 20) in network order; skipped blocks read as k3, e3 as in ``Arch``."""
        choice, active = SearchSpace.block_choices(genomes)
        return (*choice_kernel_expand(choice), active)

    def check_genomes(self, genomes: np.ndarray) -> np.ndarray:
        """``genomes`` as an (N, 22) int64 array, or ``ValueError`` naming the first gene out of this space's
        bounds or the first stage that keeps fewer than 2 blocks."""
        g = np.asarray(genomes)
        if g.ndim != 2 or g.shape[1] != GENOME_LENGTH:
            raise ValueError(f"genomes must be an (N, {GENOME_LENGTH}) integer array, got shape {g.shape}")
        g = g.astype(np.int64)
        lo, hi = self.lower_bounds, self.upper_bounds
        out = (g < lo) | (g > hi)
        if out.any():
            row, i = (int(v[0]) for v in np.nonzero(out))
            raise ValueError(f"genome[{i}]={g[row, i]} is out of range 0..{hi[i]}")
        depth = self.depths(g)
        short = depth < DEPTHS[0]
        if short.any():
            row, s = (int(v[0]) for v in np.nonzero(short))
            raise ValueError(f"genome stage {s} keeps {depth[row, s]} blocks; each stage needs at least {DEPTHS[0]}")
        return g

    def repair(self, genomes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Round to integers, clip to bounds, refill random empty slots of any stage with fewer than 2 blocks (random
        choices, drawn row by row, stage by stage), and return the :meth:`canonical` genomes."""
        g = np.clip(np.rint(np.asarray(genomes, dtype=float)), self.lower_bounds, self.upper_bounds).astype(np.int64)
        blocks = g[:, 2:].reshape(len(g), N_STAGES, MAX_DEPTH).copy()
        need = DEPTHS[0] - (blocks != 0).sum(axis=2)
        for row, s in zip(*np.nonzero(need > 0)):
            genes, n = blocks[row, s], int(need[row, s])
            genes[rng.choice(np.nonzero(genes == 0)[0], n, replace=False)] = rng.integers(1, N_CHOICES + 1, n)
        g[:, 2:] = blocks.reshape(len(g), N_BLOCKS)
        return self.canonical(g)

    def encode(self, arch: Arch) -> np.ndarray:
        """NAT's genome of ``arch``: resolution index, width index, then per block 0 (skipped) or its gene."""
        self.validate(arch)
        genes = [self.resolutions.index(arch.r), self.widths.index(arch.w)]
        for s in range(N_STAGES):
            for j in range(MAX_DEPTH):
                i = s * MAX_DEPTH + j
                genes.append(0 if j >= arch.d[s] else block_gene(arch.ks[i], arch.e[i]))
        return np.array(genes, dtype=int)

    def decode(self, genome: Sequence[int]) -> Arch:
        """Inverse of :meth:`encode`. Skipped blocks anywhere in a stage are pushed to its end."""
        g = np.asarray(genome)
        if g.ndim != 1 or g.shape[0] != GENOME_LENGTH:
            raise ValueError(f"a genome must hold {GENOME_LENGTH} integers, got shape {tuple(g.shape)}")
        if not np.all(np.equal(np.mod(g, 1), 0)):
            raise ValueError(f"a genome must hold integers, got {g.tolist()}")
        g = self.check_genomes(g[None])
        ks, e, _ = (a[0].tolist() for a in self.kernel_expand(g))
        d = self.depths(g)[0].tolist()
        return Arch(ks=ks, e=e, d=d, r=self.resolutions[g[0, 0]], w=self.widths[g[0, 1]])

    # ----- sampling and extremes ----------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int | None = None) -> Arch | list[Arch]:
        """Uniformly random Arch(s), drawn from the given generator only."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError("sample() needs an explicit numpy.random.Generator, e.g. np.random.default_rng(0)")
        if n is None:
            return self._sample_one(rng)
        return [self._sample_one(rng) for _ in range(n)]

    def sample_genomes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` canonical genomes of uniformly random Archs (the distribution of :meth:`sample`: kernel, expand
        ratio, depth, resolution and width each uniform), drawn in one array operation per gene kind."""
        g = np.zeros((n, GENOME_LENGTH), dtype=np.int64)
        g[:, 0] = rng.integers(0, len(self.resolutions), n)
        g[:, 1] = rng.integers(0, len(self.widths), n)
        genes = 1 + rng.integers(0, len(KERNELS), (n, N_BLOCKS)) + len(KERNELS) * rng.integers(0, len(EXPANDS),
                                                                                                 (n, N_BLOCKS))
        depth = np.asarray(DEPTHS)[rng.integers(0, len(DEPTHS), (n, N_STAGES))]
        kept = np.arange(MAX_DEPTH)[None, None, :] < depth[:, :, None]
        g[:, 2:] = np.where(kept.reshape(n, N_BLOCKS), genes, 0)
        return g

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
