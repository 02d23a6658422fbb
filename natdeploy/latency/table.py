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


class TableError(NatDeployError):
    """A latency table is missing, corrupt, or incompatible."""


@dataclass
class LatencyTable:
    """Op key -> :class:`Measurement`, plus end-to-end subnet measurements and provenance."""

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

    def add_op(self, op: OpSig, m: Measurement) -> None:
        self.ops[op.key] = m

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
                "e2e": {k: m.to_dict() for k, m in self.e2e.items()}}

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
            return cls(device=raw["device"], provenance=raw.get("provenance", {}), ops=ops, e2e=e2e,
                       n_classes=int(raw.get("n_classes", 1000)), reference=list(raw.get("reference_ms", [])),
                       reference_anchor=list(raw.get("reference_anchor_ms", [])),
                       statistic=raw.get("statistic", "p10"),
                       speed_elasticity=float(raw.get("speed_elasticity", 0.0)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TableError(f"latency table {path} is corrupt ({type(exc).__name__}: {exc}); "
                             "delete it and profile again, or restore it from version control") from None

    def incompatibility(self, provenance: dict[str, Any]) -> str | None:
        """Why new measurements under ``provenance`` must not join this table, or None when they may."""
        diffs = [f"{k}: table has {self.provenance.get(k)!r}, now {provenance.get(k)!r}" for k in COMPAT_FIELDS
                 if k in self.provenance and self.provenance.get(k) != provenance.get(k)]
        return "; ".join(diffs) or None
