"""Latency tables: measured op latencies and whole-subnet latencies, with provenance, stored as JSON."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natdeploy.errors import NatDeployError
from natdeploy.fileio import atomic_write_text
from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import OpSig
from natdeploy.latency.speed import SpeedModel
from natdeploy.space import Arch

FORMAT = "natdeploy.latency_table"
FORMAT_VERSION = 1
# Provenance fields that must agree before measurements may share one table.
COMPAT_FIELDS = ("runtime", "runtime_version", "threads", "host", "precision", "cpu_mask", "batch_size")
DEFAULT_PRECISION = "fp32"  # what a table that records no precision measured: every table before int8 existed


class TableError(NatDeployError):
    """A latency table is missing, corrupt, or incompatible."""


@dataclass
class LatencyTable:
    """Op key -> :class:`Measurement`, plus end-to-end subnet measurements and provenance.

    ``resolution_ops`` holds, per input resolution, the ops whose value at that resolution differs from ``ops``:
    tables imported from per-resolution files (OFA's), in which an op shared between resolutions (the head, the
    last stage's small maps) was measured once per file. Measured tables leave it empty.
    """

    device: str
    provenance: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, Measurement] = field(default_factory=dict)
    e2e: dict[str, Measurement] = field(default_factory=dict)  # Arch string -> measurement
    n_classes: int = 1000
    reference: list[float] = field(default_factory=list)  # repeated reference-op measurements, for drift
    reference_anchor: list[float] = field(default_factory=list)  # the anchor beside each, where the spec has one
    statistic: str = "p10"  # which Measurement statistic predictions use
    # The fitted part of the table's speed model (natdeploy.latency.speed): how anchor ratios change with the
    # machine's speed; 0 = they do not.
    speed_elasticity: float = 0.0
    resolution_ops: dict[int, dict[str, Measurement]] = field(default_factory=dict)

    def add_op(self, op: OpSig, m: Measurement) -> None:
        self.ops[op.key] = m

    def op_at(self, key: str, resolution: int | None = None) -> Measurement | None:
        """The measurement of op ``key`` in a subnet of input ``resolution`` (that resolution's own value where
        the table has one, else the op's), or None when the table lacks the op."""
        if resolution is not None:
            m = self.resolution_ops.get(resolution, {}).get(key)
            if m is not None:
                return m
        return self.ops.get(key)

    @property
    def precision(self) -> str:
        """The precision of the models the table measured (fp32, int8, fp16)."""
        return self.provenance.get("precision") or DEFAULT_PRECISION

    def beyond_fit(self, archs: "list[Arch] | tuple[Arch, ...]") -> str | None:
        """For a transferred table (natdeploy.latency.transfer): what says that ``archs`` reach resolutions or
        widths outside the whole subnets its transfer was fitted on; None within them, or for a measured table."""
        fitted = self.provenance.get("transfer")
        if not isinstance(fitted, dict):
            return None
        res, widths = fitted.get("fitted_resolutions") or [], fitted.get("fitted_widths") or []
        out_r = sorted({a.r for a in archs if a.r not in res})
        out_w = sorted({a.w for a in archs if a.w not in widths})
        if not out_r and not out_w:
            return None
        what = " and ".join(x for x in (f"resolutions {out_r}" if out_r else "", f"widths {out_w}" if out_w else "")
                            if x)
        return (f"table {self.device!r} was transferred from {fitted.get('source_device')!r} with "
                f"{self.provenance.get('few_shot_n')} subnets at resolutions {res} and widths {widths}; {what} "
                "lie outside that fit, so the prediction there is the source table's shape, unchecked on this device")

    def add_e2e(self, arch: Arch, m: Measurement) -> None:
        self.e2e[arch.to_string()] = m

    @property
    def speed(self) -> SpeedModel:
        """The model that brings this table's measurements (and outside ones) to its nominal machine speed: the
        median anchor latency over its measurements, its fitted elasticity and its statistic. Computed from the
        measurements on each access: take it once for many values."""
        return SpeedModel.of((*self.ops.values(), *self.e2e.values()), self.speed_elasticity, self.statistic)

    @property
    def drift(self) -> float:
        """Relative spread (max-min)/min of the repeated reference measurements, each over the anchor timed beside
        it where every one has an anchor (the drift that anchor normalisation leaves); 0 with fewer than two."""
        values = self.reference
        if len(self.reference_anchor) == len(values):
            values = [v / a for v, a in zip(values, self.reference_anchor)]
        if len(values) < 2:
            return 0.0
        return (max(values) - min(values)) / min(values)

    def fingerprint(self) -> str:
        """SHA-256 of the table's content: fitted models record it, so a re-profiled table is never predicted with
        models fitted to its previous version."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "device": self.device, "n_classes": self.n_classes,
                "statistic": self.statistic, "speed_elasticity": self.speed_elasticity,
                "provenance": self.provenance, "reference_ms": self.reference,
                "reference_anchor_ms": self.reference_anchor, "drift": round(self.drift, 4),
                "ops": {k: m.to_dict() for k, m in sorted(self.ops.items())},
                "e2e": {k: m.to_dict() for k, m in self.e2e.items()},
                # optional (absent when empty): tables without it keep their content and fingerprint
                **({"resolution_ops": {str(r): {k: m.to_dict() for k, m in sorted(ops.items())}
                                       for r, ops in sorted(self.resolution_ops.items())}}
                   if self.resolution_ops else {})}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = Path(path)
        if not path.is_file():
            raise TableError(f"latency table {path} does not exist; build it with "
                             f"`natdeploy profile --device {path.stem}`")
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
            if raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {raw.get('version')} is not {FORMAT_VERSION}")
            ops = {k: Measurement.from_dict(v) for k, v in raw["ops"].items()}
            for k in ops:
                OpSig.from_key(k)
            e2e = {k: Measurement.from_dict(v) for k, v in raw.get("e2e", {}).items()}
            by_res = {int(r): {k: Measurement.from_dict(v) for k, v in res.items()}
                      for r, res in raw.get("resolution_ops", {}).items()}
            for res in by_res.values():
                for k in res:
                    OpSig.from_key(k)
            return cls(device=raw["device"], provenance=raw.get("provenance", {}), ops=ops, e2e=e2e,
                       n_classes=int(raw.get("n_classes", 1000)), reference=list(raw.get("reference_ms", [])),
                       reference_anchor=list(raw.get("reference_anchor_ms", [])),
                       statistic=raw.get("statistic", "p10"),
                       speed_elasticity=float(raw.get("speed_elasticity", 0.0)), resolution_ops=by_res)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TableError(f"latency table {path} is corrupt ({type(exc).__name__}: {exc}); "
                             "delete it and profile again, or restore it from version control") from None

    def incompatibility(self, provenance: dict[str, Any]) -> str | None:
        """Why new measurements under ``provenance`` must not join this table, or None when they may."""
        diffs = [f"{k}: table has {self.provenance.get(k)!r}, now {provenance.get(k)!r}" for k in COMPAT_FIELDS
                 if k in self.provenance and self.provenance.get(k) != provenance.get(k)]
        return "; ".join(diffs) or None

    def precision_mismatch(self, precision: str | None) -> str | None:
        """Why this table cannot serve models of ``precision`` (None when it can; a table that records none is
        fp32). Unlike :meth:`incompatibility`, never to be overridden: an int8 op cost is not an fp32 one."""
        precision = precision or DEFAULT_PRECISION
        if self.precision == precision:
            return None
        return f"the table measured {self.precision} models, not {precision}"
