"""Latency predictor: lookup-table sum, per-op-kind XGBoost for missing ops, XGBoost whole-network residual.

Stored as JSON in XGBoost's own model format beside the table (``<device>.xgb.json``); no pickle anywhere.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from natdeploy.latency.ops import OP_KINDS, OpSig, arch_ops
from natdeploy.latency.table import LatencyTable, TableError, atomic_write_text
from natdeploy.space import Arch, madds, params

log = logging.getLogger(__name__)
PREDICTOR_FORMAT = "natdeploy.latency_predictor"
MIN_E2E_FOR_RESIDUAL = 5


def op_features(op: OpSig) -> list[float]:
    """Numeric features of an op for its kind's regressor."""
    return [op.in_hw, op.in_c, op.out_hw, op.out_c, op.mid, op.kernel, op.stride, float(op.skip), float(op.se),
            float(op.hs), np.log1p(op.madds), np.log1p(op.in_hw * op.in_hw * op.in_c)]


def _op_work(op: OpSig) -> float:
    # Latency is modelled as work x time-per-unit, so that XGBoost's flat extrapolation stays proportional to size.
    return float(op.madds + op.in_hw * op.in_hw * op.in_c + 1)


def arch_features(arch: Arch, lut_sum_ms: float, n_classes: int) -> list[float]:
    """Whole-network features for the residual model."""
    ks = np.array([k for _, _, k, _ in arch.active_blocks()])
    es = np.array([e for _, _, _, e in arch.active_blocks()])
    return [np.log(lut_sum_ms), np.log(madds(arch, n_classes)), np.log(params(arch, n_classes)), arch.r, arch.w,
            *arch.d, sum(arch.d), ks.mean(), es.mean(), float((ks == 7).sum())]


def _booster_to_json(booster: Any) -> Any:
    return json.loads(bytes(booster.save_raw(raw_format="json")).decode())


def _booster_from_json(obj: Any) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(json.dumps(obj).encode()))
    return booster


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    import xgboost as xgb

    params_ = {"objective": "reg:squarederror", "max_depth": 4, "eta": 0.1, "subsample": 1.0, "min_child_weight": 1,
               "lambda": 1.0, "seed": seed, "nthread": 1}
    return xgb.train(params_, xgb.DMatrix(x, label=y), num_boost_round=200 if len(y) > 20 else 60)


@dataclass
class Prediction:
    """A prediction and its parts."""

    latency_ms: float
    lut_ms: float
    estimated_ms: float  # the part of lut_ms that came from the per-op regressors, not the table
    n_ops: int
    n_missing: int
    residual_factor: float


class LatencyPredictor:
    """Predict a subnet's latency on one device from its table and fitted models."""

    def __init__(self, table: LatencyTable, op_models: dict[str, Any] | None = None, residual: Any = None) -> None:
        self.table = table
        self.op_models = op_models or {}
        self.residual = residual
        self._cache: dict[str, float] = {}

    # ----- fitting ------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, table: LatencyTable, seed: int = 0) -> "LatencyPredictor":
        """Fit per-kind op regressors on the table, then the residual model on its end-to-end measurements."""
        if not table.ops:
            raise TableError(f"latency table for {table.device!r} has no op measurements; profile it first")
        by_kind: dict[str, list[tuple[OpSig, float]]] = {}
        for key, m in table.ops.items():
            op = OpSig.from_key(key)
            by_kind.setdefault(op.kind, []).append((op, m.median_ms))
        op_models = {}
        for kind, rows in by_kind.items():
            x = np.array([op_features(op) for op, _ in rows])
            y = np.array([np.log(ms / _op_work(op)) for op, ms in rows])
            op_models[kind] = _fit(x, y, seed)
        pred = cls(table, op_models)
        if len(table.e2e) >= MIN_E2E_FOR_RESIDUAL:
            archs = [Arch.from_string(a) for a in table.e2e]
            lut = pred._lut_sums(archs, table.n_classes)[0]
            x = np.array([arch_features(a, s, table.n_classes) for a, s in zip(archs, lut)])
            y = np.log(np.array([table.e2e[a.to_string()].median_ms for a in archs]) / lut)
            pred.residual = _fit(x, y, seed)
        else:
            log.warning("table %s has %d end-to-end measurements (< %d): no residual model; predictions are the "
                        "plain sum of ops", table.device, len(table.e2e), MIN_E2E_FOR_RESIDUAL)
        return pred

    # ----- prediction ---------------------------------------------------------------------------------------
    def _op_latency(self, ops: Sequence[OpSig]) -> None:
        """Fill the cache for ops not in the table, one regressor call per kind."""
        import xgboost as xgb

        missing = [op for op in ops if op.key not in self.table.ops and op.key not in self._cache]
        for kind in {op.kind for op in missing}:
            group = [op for op in missing if op.kind == kind]
            model = self.op_models.get(kind)
            if model is None:
                raise TableError(f"table {self.table.device!r} has no {kind} ops to estimate {group[0].key} from; "
                                 f"profile the device over the resolutions you search")
            y = model.predict(xgb.DMatrix(np.array([op_features(op) for op in group])))
            for op, v in zip(group, y):
                self._cache[op.key] = float(np.exp(v) * _op_work(op))

    def _lut_sums(self, archs: Sequence[Arch], n_classes: int) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        all_ops = [arch_ops(a, n_classes) for a in archs]
        self._op_latency([op for ops in all_ops for op in ops])
        sums, est, n_missing = [], [], []
        for ops in all_ops:
            table_part = [self.table.ops[op.key].median_ms for op in ops if op.key in self.table.ops]
            est_part = [self._cache[op.key] for op in ops if op.key not in self.table.ops]
            sums.append(sum(table_part) + sum(est_part))
            est.append(sum(est_part))
            n_missing.append(len(est_part))
        return np.array(sums), np.array(est), [len(o) for o in all_ops], n_missing

    def predict_parts(self, archs: Sequence[Arch], n_classes: int | None = None) -> list[Prediction]:
        """Predictions with their parts (table sum, estimated share, residual factor)."""
        n_classes = self.table.n_classes if n_classes is None else n_classes
        lut, est, n_ops, n_missing = self._lut_sums(archs, n_classes)
        factor = np.ones(len(archs))
        if self.residual is not None and len(archs):
            import xgboost as xgb

            x = np.array([arch_features(a, s, n_classes) for a, s in zip(archs, lut)])
            factor = np.exp(self.residual.predict(xgb.DMatrix(x)))
        return [Prediction(float(lut[i] * factor[i]), float(lut[i]), float(est[i]), n_ops[i], n_missing[i],
                           float(factor[i])) for i in range(len(archs))]

    def predict(self, archs: Sequence[Arch] | Arch, n_classes: int | None = None) -> np.ndarray:
        """Predicted latency in ms for a batch of Archs (or one)."""
        if isinstance(archs, Arch):
            archs = [archs]
        return np.array([p.latency_ms for p in self.predict_parts(list(archs), n_classes)])

    # ----- persistence --------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        obj = {"format": PREDICTOR_FORMAT, "version": 1, "device": self.table.device, "op_kinds": list(OP_KINDS),
               "op_models": {k: _booster_to_json(b) for k, b in self.op_models.items()},
               "residual": None if self.residual is None else _booster_to_json(self.residual)}
        atomic_write_text(path, json.dumps(obj) + "\n")
        return path

    @classmethod
    def load(cls, table_path: str | os.PathLike, model_path: str | os.PathLike | None = None) -> "LatencyPredictor":
        """Load a table and its models (``<table stem>.xgb.json`` by default; refitted when that is absent)."""
        table_path = Path(table_path)
        table = LatencyTable.load(table_path)
        model_path = Path(model_path) if model_path else table_path.with_suffix(".xgb.json")
        if not model_path.is_file():
            log.info("no fitted models at %s; fitting them from the table", model_path)
            return cls.fit(table)
        try:
            obj = json.loads(model_path.read_text())
            if obj.get("format") != PREDICTOR_FORMAT:
                raise ValueError(f"format is {obj.get('format')!r}")
            op_models = {k: _booster_from_json(v) for k, v in obj["op_models"].items()}
            residual = None if obj.get("residual") is None else _booster_from_json(obj["residual"])
        except Exception as exc:
            raise TableError(f"latency models {model_path} are corrupt ({type(exc).__name__}: {exc}); delete the "
                             f"file and natdeploy refits them from {table_path}") from None
        return cls(table, op_models, residual)

