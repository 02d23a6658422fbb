"""Op signatures: the unit a latency table measures, rendered as Once-for-All's lookup-table keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from natdeploy.space import Arch, LayerSpec, SearchSpace, layer_cost, layer_plan

# natdeploy layer kind -> OFA's op name in its published tables
_OFA_NAME = {"stem": "Conv", "block0": "expanded_conv", "mbconv": "expanded_conv", "final_expand": "Conv_1",
             "pool": "AvgPool2D", "feature_mix": "Conv_2", "classifier": "Logits"}
OP_KINDS = ("Conv", "expanded_conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits")
_MB_RE = re.compile(r"expanded_conv-input:(\d+)x(\d+)x(\d+)-output:(\d+)x(\d+)x(\d+)-expand:(\d+)-kernel:(\d+)"
                    r"-stride:(\d+)-idskip:([01])-se:([01])-hs:([01])")
_CONV_RE = re.compile(r"(Conv|Conv_1|Conv_2|AvgPool2D)-input:(\d+)x(\d+)x(\d+)-output:(\d+)x(\d+)x(\d+)")
_LOGITS_RE = re.compile(r"Logits-input:(\d+)x(\d+)x(\d+)-output:(\d+)")


@dataclass(frozen=True)
class OpSig:
    """(kind, input HxWxC, output HxWxC, mid channels, kernel, stride, skip, se, hswish) of one op."""

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
    hs: bool = False

    @property
    def key(self) -> str:
        """OFA's key string, e.g. ``expanded_conv-input:56x56x32-output:28x28x48-expand:96-...``."""
        io = f"input:{self.in_hw}x{self.in_hw}x{self.in_c}"
        if self.kind == "expanded_conv":
            return (f"expanded_conv-{io}-output:{self.out_hw}x{self.out_hw}x{self.out_c}-expand:{self.mid}"
                    f"-kernel:{self.kernel}-stride:{self.stride}-idskip:{int(self.skip)}-se:{int(self.se)}"
                    f"-hs:{int(self.hs)}")
        if self.kind == "Logits":
            return f"Logits-{io}-output:{self.out_c}"
        return f"{self.kind}-{io}-output:{self.out_hw}x{self.out_hw}x{self.out_c}"

    __str__ = lambda self: self.key  # noqa: E731

    @classmethod
    def from_key(cls, key: str) -> "OpSig":
        """Parse an OFA lookup-table key."""
        if m := _MB_RE.fullmatch(key):
            v = [int(x) for x in m.groups()]
            return cls("expanded_conv", v[0], v[2], v[3], v[5], mid=v[6], kernel=v[7], stride=v[8],
                       skip=bool(v[9]), se=bool(v[10]), hs=bool(v[11]))
        if m := _CONV_RE.fullmatch(key):
            kind, v = m.group(1), [int(x) for x in m.groups()[1:]]
            kernel = {"Conv": 3, "AvgPool2D": v[0]}.get(kind, 1)
            stride = 2 if kind == "Conv" else 1
            return cls(kind, v[0], v[2], v[3], v[5], kernel=kernel, stride=stride, hs=kind != "AvgPool2D")
        if m := _LOGITS_RE.fullmatch(key):
            v = [int(x) for x in m.groups()]
            return cls("Logits", v[0], v[2], 1, v[3])
        raise ValueError(f"unrecognised op key {key!r}; expected OFA's lookup-table key format")

    def to_layer(self) -> LayerSpec:
        """The :class:`LayerSpec` that builds this op (for profiling)."""
        if self.kind == "expanded_conv":
            first = self.mid == self.in_c  # only block 0 runs without an expansion conv
            return LayerSpec("block0" if first else "mbconv", self.in_hw, self.in_c, self.out_hw, self.out_c,
                             mid=self.mid, kernel=self.kernel, stride=self.stride, skip=self.skip, se=self.se,
                             act="hswish" if self.hs else "relu", expand=1 if first else round(self.mid / self.in_c))
        kind = {v: k for k, v in _OFA_NAME.items() if k not in ("block0", "mbconv")}[self.kind]
        act = "hswish" if kind in ("stem", "final_expand", "feature_mix") else "none"
        return LayerSpec(kind, self.in_hw, self.in_c, self.out_hw, self.out_c, kernel=self.kernel,
                         stride=self.stride, act=act)

    @property
    def madds(self) -> int:
        return layer_cost(self.to_layer())[0]


def op_of_layer(layer: LayerSpec) -> OpSig:
    """The op signature of one layer of a subnet."""
    name = _OFA_NAME[layer.kind]
    if name == "expanded_conv":
        return OpSig(name, layer.in_hw, layer.in_c, layer.out_hw, layer.out_c, mid=layer.mid, kernel=layer.kernel,
                     stride=layer.stride, skip=layer.skip, se=layer.se, hs=layer.act == "hswish")
    return OpSig(name, layer.in_hw, layer.in_c, layer.out_hw, layer.out_c, kernel=layer.kernel, stride=layer.stride,
                 hs=layer.act == "hswish")


def arch_ops(arch: Arch, n_classes: int = 1000) -> list[OpSig]:
    """The ops a subnet is made of, in network order (repeats kept: the latency is their sum)."""
    return [op_of_layer(layer) for layer in layer_plan(arch, n_classes)]


def space_ops(space: SearchSpace, n_classes: int = 1000, resolutions: Iterable[int] | None = None) -> list[OpSig]:
    """Every unique op of a search space over the given resolutions (default: all of the space's), sorted."""
    from natdeploy.space import EXPANDS, KERNELS, MAX_DEPTH, N_BLOCKS, N_STAGES

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
