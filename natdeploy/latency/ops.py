"""Op signatures: the unit a latency table measures, rendered as Once-for-All's lookup-table keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Iterable

from natdeploy.space import (EXPANDS, KERNELS, MAX_DEPTH, N_BLOCKS, N_STAGES, Arch, LayerSpec, SearchSpace, fixed_layer,
                             layer_cost, layer_plan)

# natdeploy layer kind -> OFA's op name in its published tables
_OFA_NAME = {"stem": "Conv", "block0": "expanded_conv", "mbconv": "expanded_conv", "final_expand": "Conv_1",
             "pool": "AvgPool2D", "feature_mix": "Conv_2", "classifier": "Logits"}
_LAYER_KIND = {v: k for k, v in _OFA_NAME.items() if v != "expanded_conv"}
OP_KINDS = ("Conv", "expanded_conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits")
_MB_RE = re.compile(r"expanded_conv-input:(\d+)x(\d+)x(\d+)-output:(\d+)x(\d+)x(\d+)-expand:(\d+)-kernel:(\d+)"
                    r"-stride:(\d+)-idskip:([01])-se:([01])-hs:([01])")
_CONV_RE = re.compile(r"(Conv|Conv_1|Conv_2|AvgPool2D)-input:(\d+)x(\d+)x(\d+)-output:(\d+)x(\d+)x(\d+)")
_LOGITS_RE = re.compile(r"Logits-input:(\d+)x(\d+)x(\d+)-output:(\d+)")


# the layer's fields an OpSig reads through unchanged (``kind`` and ``act`` it renders in OFA's terms)
_LAYER_FIELDS = frozenset(f.name for f in fields(LayerSpec)) - {"kind", "act"}


@dataclass(frozen=True)
class OpSig:
    """A layer as a latency table knows it: a :class:`LayerSpec`, named in OFA's vocabulary and keyed as OFA's
    lookup tables are. ``kind`` is OFA's op name; ``in_hw``, ``in_c``, ``out_hw``, ``out_c``, ``mid``, ``kernel``,
    ``stride``, ``skip`` and ``se`` are the layer's; ``hs`` says whether it uses h-swish."""

    layer: LayerSpec

    def __getattr__(self, name: str) -> object:
        if name in _LAYER_FIELDS:
            return getattr(self.layer, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def kind(self) -> str:
        return _OFA_NAME[self.layer.kind]

    @property
    def hs(self) -> bool:
        return self.layer.act == "hswish"

    @property
    def key(self) -> str:
        """OFA's key string, e.g. ``expanded_conv-input:56x56x32-output:28x28x48-expand:96-...``."""
        op = self.layer
        io = f"input:{op.in_hw}x{op.in_hw}x{op.in_c}"
        if self.kind == "expanded_conv":
            return (f"expanded_conv-{io}-output:{op.out_hw}x{op.out_hw}x{op.out_c}-expand:{op.mid}"
                    f"-kernel:{op.kernel}-stride:{op.stride}-idskip:{int(op.skip)}-se:{int(op.se)}"
                    f"-hs:{int(self.hs)}")
        if self.kind == "Logits":
            return f"Logits-{io}-output:{op.out_c}"
        return f"{self.kind}-{io}-output:{op.out_hw}x{op.out_hw}x{op.out_c}"

    __str__ = lambda self: self.key  # noqa: E731

    @classmethod
    def from_key(cls, key: str) -> "OpSig":
        """Parse an OFA lookup-table key. An ``expanded_conv`` whose expand width equals its input width has no
        expansion conv: it is block 0 (see :class:`LayerSpec`)."""
        if m := _MB_RE.fullmatch(key):
            v = [int(x) for x in m.groups()]
            kind = "block0" if v[6] == v[2] else "mbconv"
            return cls(LayerSpec(kind, v[0], v[2], v[3], v[5], mid=v[6], kernel=v[7], stride=v[8], skip=bool(v[9]),
                                 se=bool(v[10]), act="hswish" if v[11] else "relu"))
        if m := _CONV_RE.fullmatch(key):
            v = [int(x) for x in m.groups()[1:]]
            return cls(fixed_layer(_LAYER_KIND[m.group(1)], v[0], v[2], v[3], v[5]))
        if m := _LOGITS_RE.fullmatch(key):
            v = [int(x) for x in m.groups()]
            return cls(fixed_layer("classifier", v[0], v[2], 1, v[3]))
        raise ValueError(f"unrecognised op key {key!r}; expected OFA's lookup-table key format")

    def to_layer(self) -> LayerSpec:
        """The :class:`LayerSpec` that builds this op (for profiling)."""
        return self.layer

    @property
    def madds(self) -> int:
        return layer_cost(self.layer)[0]


def op_of_layer(layer: LayerSpec) -> OpSig:
    """The op signature of one layer of a subnet."""
    return OpSig(layer)


def arch_ops(arch: Arch, n_classes: int = 1000) -> list[OpSig]:
    """The ops a subnet is made of, in network order (repeats kept: the latency is their sum)."""
    return [op_of_layer(layer) for layer in layer_plan(arch, n_classes)]


def space_ops(space: SearchSpace, n_classes: int = 1000, resolutions: Iterable[int] | None = None) -> list[OpSig]:
    """Every unique op of a search space over the given resolutions (default: all of the space's), sorted."""
    found: dict[str, OpSig] = {}
    for r in resolutions or space.resolutions:
        for w in space.widths:
            # Every op shape appears in some Arch with all blocks present; vary k and e per block position.
            for k in KERNELS:
                for e in EXPANDS:
                    arch = Arch(ks=[k] * N_BLOCKS, e=[e] * N_BLOCKS, d=[MAX_DEPTH] * N_STAGES, r=r, w=w)
                    for op in arch_ops(arch, n_classes):
                        found.setdefault(op.key, op)
    return sorted(found.values(), key=lambda o: (o.in_hw, o.kind, o.key), reverse=True)


# Class counts whose classifier every profile measures besides its own: a table's op regressor then interpolates a
# task's classifier between measured counts. Measured at one count only, it scaled the classifier with its MAdds,
# and the shipped 10-class cpu table predicted 1000-class subnets 60% above their measurement (benchmarks/RESULTS.md,
# issue 17 item 4).
CLASSIFIER_LADDER = (10, 100, 1000)


def classifier_ladder_ops(space: SearchSpace, n_classes: int) -> list[OpSig]:
    """The classifier op of each width of ``space`` at every :data:`CLASSIFIER_LADDER` count but ``n_classes``."""
    found: dict[str, OpSig] = {}
    for w in space.widths:
        arch = Arch(ks=[KERNELS[0]] * N_BLOCKS, e=[EXPANDS[0]] * N_BLOCKS, d=[MAX_DEPTH] * N_STAGES,
                    r=space.resolutions[0], w=w)
        for count in CLASSIFIER_LADDER:
            if count != n_classes:
                for op in arch_ops(arch, count):
                    if op.kind == "Logits":
                        found.setdefault(op.key, op)
    return list(found.values())


def profile_ops(space: SearchSpace, n_classes: int, resolutions: Iterable[int] | None = None) -> list[OpSig]:
    """What a profile measures: every op of the space (:func:`space_ops`, in its order), then the classifier at
    the ladder's other class counts (:func:`classifier_ladder_ops`)."""
    return space_ops(space, n_classes, resolutions) + classifier_ladder_ops(space, n_classes)
