"""Latency predictor: lookup-table sum, per-op-kind XGBoost for missing ops, a whole-network residual (ridge in log
space plus XGBoost on what it leaves).

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

from natdeploy.fileio import atomic_write_text
from natdeploy.latency.ops import OP_KINDS, OpSig, arch_ops, op_of_layer
from natdeploy.latency.speed import ELASTICITY_GRID, SpeedModel
from natdeploy.latency.speed import fit as fit_speed
from natdeploy.latency.table import LatencyTable, TableError
from natdeploy.space import (KERNELS, MAX_DEPTH, N_BLOCKS, N_CHOICES, N_STAGES, Arch, SearchSpace,
                             choice_kernel_expand, layer_cost, layer_plan)

log = logging.getLogger(__name__)
PREDICTOR_FORMAT = "natdeploy.latency_predictor"
MIN_E2E_FOR_RESIDUAL = 5
# The residual model's feature sets. "base": the subnet's op sum, MAdds, params, resolution, width, depth and kernel /
# expand statistics. "body-groups": the same of the network's body (all but the classifier, so that a task's class
# count moves none of them), and each op group's share of the body's op sum (OP_GROUPS): under XNNPACK how much
# whole subnets exceed their op sum depends on their mix of kernels. Its factor scales the body's sum alone; the
# classifier's op is added as the table has it. Which set predicts a table's own subnets
# better differs between tables (more features need more subnets), so with "auto" a fit cross-validates both on
# the table's subnets and keeps the better (benchmarks/RESULTS.md, residual_features).
RESIDUAL_FEATURES = ("base", "body-groups")
# sets that older natdeploy saved and this one computes no more: their models are refitted, like stale ones
# ("groups": shares of the whole op sum, which a classifier of other classes than the table's threw far off)
RETIRED_RESIDUAL_FEATURES = ("groups",)
MIN_E2E_FOR_FEATURE_CHOICE = 50  # fewer subnets than this keep "base": too few to tell the sets apart


def models_path(table_path: str | os.PathLike) -> Path:
    """Where a table's fitted models live: beside it, as ``<table stem>.xgb.json``."""
    return Path(table_path).with_suffix(".xgb.json")


def op_features(op: OpSig) -> list[float]:
    """Numeric features of an op for its kind's regressor."""
    return [op.in_hw, op.in_c, op.out_hw, op.out_c, op.mid, op.kernel, op.stride, float(op.skip), float(op.se),
            float(op.hs), np.log1p(op.madds), np.log1p(op.in_hw * op.in_hw * op.in_c)]


def _op_work(op: OpSig) -> float:
    # Latency is modelled as work x time-per-unit, so that XGBoost's flat extrapolation stays proportional to size.
    return float(op.madds + op.in_hw * op.in_hw * op.in_c + 1)


def _booster_to_json(booster: Any) -> Any:
    return json.loads(bytes(booster.save_raw(raw_format="json")).decode())


def _booster_from_json(obj: Any) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(json.dumps(obj).encode()))
    booster.set_param({"nthread": 1})  # a thread pool per call makes single-Arch prediction ~40x slower
    return booster


def _fit(x: np.ndarray, y: np.ndarray, seed: int, smooth: bool = False) -> Any:
    """XGBoost regressor; ``smooth`` regularises harder (the residual model sees only tens of subnets)."""
    import xgboost as xgb

    params_ = {"objective": "reg:squarederror", "max_depth": 2 if smooth else 4, "eta": 0.05 if smooth else 0.1,
               "subsample": 1.0, "min_child_weight": 10 if smooth else 1, "lambda": 20.0 if smooth else 1.0,
               "seed": seed, "nthread": 1}
    if smooth:
        params_["base_score"] = 0.0  # it models what the linear part left: centred on 0
    rounds = (100 if smooth else 200) if len(y) > 20 else 60
    booster = xgb.train(params_, xgb.DMatrix(x, label=y), num_boost_round=rounds)
    booster.set_param({"nthread": 1})
    return booster


@dataclass(frozen=True)
class _Linear:
    """Ridge regression on standardised features: the first part of the residual model. With ~100 end-to-end
    measurements, trees alone model log(measured / sum) coarsely; a linear part with trees on what it leaves
    scores better on held-out subnets (benchmarks/RESULTS.md, notes moved from the code)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> "_Linear":
        from sklearn.linear_model import RidgeCV

        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((x - mean) / scale, y)
        return cls(mean, scale, np.asarray(model.coef_, dtype=float), float(model.intercept_))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "_Linear":
        return cls(*(np.asarray(obj[k], dtype=float) for k in ("mean", "scale", "coef")), float(obj["intercept"]))


def _fit_residual(feats: np.ndarray, y: np.ndarray, seed: int) -> tuple[_Linear, Any, tuple[float, float]]:
    """The residual model of log(measured / op sum) ``y``: ridge, trees on what it leaves, and the clip range."""
    linear = _Linear.fit(feats, y)
    return linear, _fit(feats, y - linear.predict(feats), seed, smooth=True), (float(y.min()), float(y.max()))


class _TreeArrays:
    """An XGBoost regression booster's trees as padded arrays, walked with NumPy for a few rows at a time.

    XGBoost's own ``inplace_predict`` has a fixed cost per call whatever the row count, most of a single-Arch
    prediction; this walk costs far less for one row (benchmarks/RESULTS.md, notes moved from the code). Splits
    compare float32 features with ``<`` as XGBoost does; the intercept is calibrated against XGBoost on one row.
    Features must be finite (the residual features are).
    """

    def __init__(self, booster: Any) -> None:
        model = _booster_to_json(booster)
        trees = model["learner"]["gradient_booster"]["model"]["trees"]
        n_nodes = max(len(t["left_children"]) for t in trees)
        shape = (len(trees), n_nodes)
        self.left, self.right, self.feature = (np.zeros(shape, np.int64) for _ in range(3))
        self.value = np.zeros(shape, np.float32)  # split threshold, or the leaf's value at a leaf
        self.is_leaf = np.ones(shape, bool)
        depth = 0
        for i, t in enumerate(trees):
            k = len(t["left_children"])
            self.left[i, :k], self.right[i, :k] = t["left_children"], t["right_children"]
            self.feature[i, :k], self.value[i, :k] = t["split_indices"], t["split_conditions"]
            self.is_leaf[i, :k] = np.asarray(t["left_children"]) < 0
            d = np.zeros(k, np.int64)
            for node in range(k):  # children come after their parent
                if t["left_children"][node] >= 0:
                    d[t["left_children"][node]] = d[t["right_children"][node]] = d[node] + 1
            depth = max(depth, int(d.max()))
        self.left[self.is_leaf] = self.right[self.is_leaf] = 0
        self.depth = depth
        n_features = int(model["learner"]["learner_model_param"]["num_feature"])
        x0 = np.ones((1, n_features), np.float32)
        self.intercept = float(booster.inplace_predict(x0)[0]) - float(self._leaves(x0)[0])

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        trees = np.arange(self.left.shape[0])[None, :]
        node = np.zeros((len(x), self.left.shape[0]), np.int64)
        for _ in range(self.depth):
            v = np.take_along_axis(x, self.feature[trees, node], axis=1)
            step = np.where(v < self.value[trees, node], self.left[trees, node], self.right[trees, node])
            node = np.where(self.is_leaf[trees, node], node, step)
        return self.value[trees, node].sum(1, dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._leaves(np.asarray(x, np.float32)) + self.intercept


# Version 2: the residual has a linear part, and the file names the table it was fitted to.
# Version 3: "body-groups" leaves the classifier's latency out of what its residual factor scales.
MODEL_VERSION = 3
# the saved versions each feature set's models are read from as they are ("base" is unchanged since 2); older
# ones are refitted
READABLE_VERSIONS = {"base": (2, 3), "body-groups": (3,)}
SMALL_BATCH = 32  # up to this many rows, the residual model is walked with NumPy (_TreeArrays), not XGBoost


ESTIMATED_SHARE_WARN = 0.05  # warn when more of a prediction than this comes from outside the table
# Op groups whose sums a transferred predictor rescales (natdeploy.latency.transfer): the stem and head ops, then
# the MBConv blocks by kernel size (XNNPACK's 7x7 depthwise alone costs 4x a 5x5 here).
OP_GROUPS = ("fixed", "k3", "k5", "k7")


def op_group(op: OpSig) -> str:
    """The group of an op in :data:`OP_GROUPS`."""
    return f"k{op.kernel}" if op.kind == "expanded_conv" and f"k{op.kernel}" in OP_GROUPS else "fixed"


@dataclass
class Prediction:
    """A prediction and its parts."""

    latency_ms: float
    lut_ms: float
    estimated_ms: float  # the part of lut_ms that came from the per-op regressors, not the table
    n_ops: int
    n_missing: int
    residual_factor: float


def apply_factor(total: np.ndarray, kept: np.ndarray, log_factor: np.ndarray) -> np.ndarray:
    """A prediction: the table sum ``total`` with its part but ``kept`` scaled by the residual factor."""
    return kept + (total - kept) * np.exp(log_factor)


def log_factor_of(measured: np.ndarray, total: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The residual model's target, :func:`apply_factor` inverted: log of the measured over the table sum, both
    less the ``kept`` part (a measurement below the kept part counts as a tenth of the scaled part)."""
    scaled = total - kept
    return np.log(np.maximum(measured - kept, 0.1 * scaled) / scaled)


class _Compiled:
    """Per-(resolution, width, block, choice) arrays of op latency, MAdds and params for one search space, so
    that a batch of genomes is predicted with array indexing instead of per-Arch Python loops."""

    def __init__(self, predictor: "LatencyPredictor", space: SearchSpace, n_classes: int) -> None:
        self.space = space
        self.body_only = predictor.keeps_head  # "body-groups": body features, and the classifier kept apart
        n_r, n_w = len(space.resolutions), len(space.widths)
        self.blat = np.zeros((n_r, n_w, N_BLOCKS, N_CHOICES))
        self.bmac = np.zeros((n_r, n_w, N_BLOCKS, N_CHOICES))
        self.bpar = np.zeros((n_r, n_w, N_BLOCKS, N_CHOICES))
        self.flat, self.fmac, self.fpar = (np.zeros((n_r, n_w)) for _ in range(3))
        self.bgroup = np.zeros((n_r, n_w, N_BLOCKS, N_CHOICES), dtype=int)  # each block op's index in OP_GROUPS
        self.fgroups = np.zeros((n_r, n_w, len(OP_GROUPS)))  # the fixed ops' unscaled sum per group
        self.head = np.zeros((n_r, n_w, 2))  # the classifier's MAdds and params: the part the task's classes set
        self.hsum = np.zeros((n_r, n_w))  # the classifier's latency (with a transfer's factor)
        cells: list[tuple[tuple, OpSig, int, int]] = []
        lat_parts = []
        for ri, r in enumerate(space.resolutions):
            first = len(cells)
            for wi, w in enumerate(space.widths):
                for c in range(N_CHOICES):
                    k, e = choice_kernel_expand(c)
                    arch = Arch(ks=[k] * N_BLOCKS, e=[e] * N_BLOCKS, d=[MAX_DEPTH] * N_STAGES, r=r, w=w)
                    b = 0
                    for layer in layer_plan(arch, n_classes):
                        mac, par = layer_cost(layer)
                        if layer.kind == "mbconv":
                            cells.append(((ri, wi, b, c), op_of_layer(layer), mac, par))
                            b += 1
                        elif c == 0:
                            cells.append(((ri, wi), op_of_layer(layer), mac, par))
            lat_parts.append(predictor.op_latency([op for _, op, _, _ in cells[first:]], r))
        lat = np.concatenate(lat_parts) if lat_parts else np.zeros(0)
        factors = predictor.group_factors
        # the sum a prediction scales: the op sum itself, or with a transfer's group factors (the residual
        # features keep the unscaled sum, the one its models were fitted on)
        self.bsum, self.fsum = (np.zeros_like(self.blat), np.zeros_like(self.flat)) if factors else (self.blat,
                                                                                                      self.flat)
        for (idx, op, mac, par), ms in zip(cells, lat):
            group = OP_GROUPS.index(op_group(op))
            if len(idx) == 4:
                self.blat[idx], self.bmac[idx], self.bpar[idx] = ms, mac, par
                self.bgroup[idx] = group
            else:
                self.flat[idx] += ms
                if op.kind == "Logits":
                    self.head[idx] += (mac, par)
                    self.hsum[idx] += ms * (factors.get(op_group(op), 1.0) if factors else 1.0)
                else:
                    self.fgroups[idx + (group,)] += ms
                self.fmac[idx] += mac
                self.fpar[idx] += par
            if factors:
                (self.bsum if len(idx) == 4 else self.fsum)[idx] += ms * factors.get(op_group(op), 1.0)

    def evaluate(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(table sum in ms, with a transfer's group factors; residual-model features; the part of the sum the
        residual factor leaves unscaled) for a batch of genomes."""
        space = self.space
        g = space.check_genomes(genomes)
        ri, wi = g[:, 0], g[:, 1]
        c, active = space.block_choices(g)
        k, e = choice_kernel_expand(c)
        depth = space.depths(g)
        rows, cols = ri[:, None], wi[:, None]
        blocks = np.arange(N_BLOCKS)[None, :]
        lut = self.flat[ri, wi] + (self.blat[rows, cols, blocks, c] * active).sum(1)
        mac = self.fmac[ri, wi] + (self.bmac[rows, cols, blocks, c] * active).sum(1)
        par = self.fpar[ri, wi] + (self.bpar[rows, cols, blocks, c] * active).sum(1)
        n_active = active.sum(1)
        total = lut if self.bsum is self.blat else (
            self.fsum[ri, wi] + (self.bsum[rows, cols, blocks, c] * active).sum(1))
        shape = [np.asarray(space.resolutions)[ri], np.asarray(space.widths)[wi], depth, n_active,
                 (k * active).sum(1) / n_active, (e * active).sum(1) / n_active, ((k == max(KERNELS)) & active).sum(1)]
        if not self.body_only:
            return total, np.column_stack([np.log(lut), np.log(mac), np.log(par), *shape]), np.zeros(len(total))
        # "body-groups" (RESIDUAL_FEATURES): the features of the network's body, whose factor scales all of the
        # sum but the classifier's op (LatencyPredictor.keeps_head)
        block_ms = self.blat[rows, cols, blocks, c] * active
        block_group = self.bgroup[rows, cols, blocks, c]
        groups = self.fgroups[ri, wi] + np.stack([(block_ms * (block_group == g)).sum(1)
                                                  for g in range(len(OP_GROUPS))], axis=1)
        body_ms, head = groups.sum(1), self.head[ri, wi]
        body = [np.log(body_ms), np.log(mac - head[:, 0]), np.log(par - head[:, 1])]
        kept = self.hsum[ri, wi]
        return total, np.column_stack([*body, *shape, *(groups / body_ms[:, None]).T]), kept


class LatencyPredictor:
    """Predict a subnet's latency on one device from its table and fitted models."""

    def __init__(self, table: LatencyTable, op_models: dict[str, Any] | None = None, residual: Any = None,
                 residual_range: tuple[float, float] | None = None, linear: _Linear | None = None,
                 speed: SpeedModel | None = None, group_factors: dict[str, float] | None = None,
                 residual_features: str = "base") -> None:
        if residual_features not in RESIDUAL_FEATURES:
            raise TableError(f"unknown residual feature set {residual_features!r}; known: "
                             f"{', '.join(RESIDUAL_FEATURES)}")
        self.table = table
        self.residual_features = residual_features  # RESIDUAL_FEATURES: what the residual model reads
        # "body-groups" reads the body alone, so its factor scales the body alone: the classifier's op is added as
        # the table has it (with a transfer's factor), which keeps a task's class count out of the factor
        self.keeps_head = residual_features == "body-groups"
        # A transferred predictor's factors on its op groups' sums (OP_GROUPS; None: the sum as it is)
        self.group_factors = dict(group_factors) if group_factors else None
        # What brings the table's measurements to one machine speed: the table's own model unless a caller fits
        # with another (the elasticity's cross-validation); taken once, so that predictions use what was fitted.
        self.speed = table.speed if speed is None else speed
        self.op_models = op_models or {}
        # log(measured / table sum) = linear(features) + residual trees(features)
        self.linear = linear
        self.residual = residual
        # The residual (log measured/sum) is clipped to what the end-to-end measurements showed: trees cannot
        # extrapolate, and an unclipped sum of trees can overshoot on Archs unlike the training subnets.
        self.residual_range = residual_range
        self._op_cache: dict[str, float] = {}
        self._trees: _TreeArrays | None = None  # the residual model for small batches, built on first use
        self._compiled: dict[tuple, _Compiled] = {}

    # ----- fitting ------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, table: LatencyTable, seed: int = 0, speed: SpeedModel | None = None,
            residual_features: str = "auto") -> "LatencyPredictor":
        """Fit per-kind op regressors on the table, then the residual model on its end-to-end measurements, all at
        the machine speed of ``speed`` (default: the table's own speed model). ``residual_features``: a set of
        :data:`RESIDUAL_FEATURES`, or "auto" (the one that cross-validates better on the table's subnets)."""
        if not table.ops:
            raise TableError(f"latency table for {table.device!r} has no op measurements; profile it first")
        speed = table.speed if speed is None else speed
        by_kind: dict[str, list[tuple[OpSig, float]]] = {}
        for key, m in table.ops.items():
            op = OpSig.from_key(key)
            by_kind.setdefault(op.kind, []).append((op, speed.normalise(m)))
        op_models = {}
        for kind, rows in by_kind.items():
            x = np.array([op_features(op) for op, _ in rows])
            y = np.array([np.log(ms / _op_work(op)) for op, ms in rows])
            op_models[kind] = _fit(x, y, seed)
        if len(table.e2e) < MIN_E2E_FOR_RESIDUAL:
            pred = cls(table, op_models, speed=speed)
            log.warning("table %s has %d end-to-end measurements (< %d): no residual model; predictions are the "
                        "plain sum of ops", table.device, len(table.e2e), MIN_E2E_FOR_RESIDUAL)
            return pred
        archs = [Arch.from_string(a) for a in table.e2e]
        measured = np.array([speed.normalise(m) for m in table.e2e.values()])
        if residual_features == "auto":
            residual_features, scores = choose_residual_features(table, op_models, speed, seed)
            if scores:
                log.info("residual features %r (cross-validated within +-5%% / +-10%%: %s)", residual_features,
                         ", ".join(f"{k} {100 * a:.1f}% / {100 * b:.1f}%" for k, (a, b) in scores.items()))
        pred = cls(table, op_models, speed=speed, residual_features=residual_features)
        lut, feats, kept = pred._evaluate_archs(archs, table.n_classes)
        pred.linear, pred.residual, pred.residual_range = _fit_residual(feats, log_factor_of(measured, lut, kept),
                                                                        seed)
        return pred

    # ----- prediction ---------------------------------------------------------------------------------------
    def op_latency(self, ops: Sequence[OpSig], resolution: int | None = None) -> np.ndarray:
        """Per-op latency at the table's machine speed: its measurement (in a subnet of input ``resolution``,
        where the table holds per-resolution values) normalised by the speed model, or the op kind's regressor
        where the table lacks the op."""
        import xgboost as xgb

        missing = {op.key: op for op in ops if op.key not in self.table.ops and op.key not in self._op_cache}
        for kind in {op.kind for op in missing.values()}:
            group = [op for op in missing.values() if op.kind == kind]
            model = self.op_models.get(kind)
            if model is None:
                raise TableError(f"table {self.table.device!r} has no {kind} ops to estimate {group[0].key} from; "
                                 f"profile the device over the resolutions you search")
            y = model.predict(xgb.DMatrix(np.array([op_features(op) for op in group])))
            for op, v in zip(group, y):
                self._op_cache[op.key] = float(np.exp(v) * _op_work(op))
        measured = [self.table.op_at(op.key, resolution) for op in ops]
        return np.array([self._op_cache[op.key] if m is None else self.speed.normalise(m)
                         for op, m in zip(ops, measured)])

    def compiled(self, space: SearchSpace, n_classes: int | None = None) -> _Compiled:
        n_classes = self.table.n_classes if n_classes is None else n_classes
        key = (space.resolutions, space.widths, n_classes)
        if key not in self._compiled:
            self._compiled[key] = _Compiled(self, space, n_classes)
        return self._compiled[key]

    def predict_genomes(self, space: SearchSpace, genomes: np.ndarray, n_classes: int | None = None) -> np.ndarray:
        """Predicted latency in ms for an (N, 22) array of NAT genomes of ``space`` (the search's fast path)."""
        lut, feats, kept = self.compiled(space, n_classes).evaluate(genomes)
        if self.residual is None or not len(lut):
            return lut
        if len(feats) <= SMALL_BATCH:
            if self._trees is None:
                self._trees = _TreeArrays(self.residual)
            log_factor = self._trees.predict(feats)
        else:
            log_factor = self.residual.inplace_predict(feats)
        if self.linear is not None:
            log_factor = log_factor + self.linear.predict(feats)
        if self.residual_range is not None:
            log_factor = np.clip(log_factor, *self.residual_range)
        return apply_factor(lut, kept, log_factor)

    def _evaluate_archs(self, archs: Sequence[Arch], n_classes: int | None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        space = SearchSpace(resolutions=tuple({a.r for a in archs}), widths=tuple({a.w for a in archs}))
        return self.compiled(space, n_classes).evaluate(np.stack([space.encode(a) for a in archs]))

    def predict(self, archs: Sequence[Arch] | Arch, n_classes: int | None = None) -> np.ndarray:
        """Predicted latency in ms for a batch of Archs (or one)."""
        archs = [archs] if isinstance(archs, Arch) else list(archs)
        if not archs:
            return np.zeros(0)
        space = SearchSpace(resolutions=tuple({a.r for a in archs}), widths=tuple({a.w for a in archs}))
        return self.predict_genomes(space, np.stack([space.encode(a) for a in archs]), n_classes)

    def predict_parts(self, archs: Sequence[Arch], n_classes: int | None = None) -> list[Prediction]:
        """Predictions with their parts (table sum, estimated share, residual factor)."""
        n_classes = self.table.n_classes if n_classes is None else n_classes
        total = self.predict(archs, n_classes)
        out = []
        for arch, latency in zip(archs, total):
            ops = arch_ops(arch, n_classes)
            ms = self.op_latency(ops, arch.r)
            missing = np.array([op.key not in self.table.ops for op in ops])
            lut = float(ms.sum())
            out.append(Prediction(float(latency), lut, float(ms[missing].sum()), len(ops), int(missing.sum()),
                                  float(latency) / lut))
        return out

    def coverage_warning(self, archs: Sequence[Arch], n_classes: int | None = None,
                         threshold: float = ESTIMATED_SHARE_WARN) -> str | None:
        """A warning when more than ``threshold`` of the op latency of ``archs`` (taken together) is estimated
        by the regressors for ops the table never measured; None when the table covers them."""
        beyond = self.table.beyond_fit(archs)  # a transferred table, used outside the subnets it was fitted on
        parts = self.predict_parts(list(archs), n_classes)
        lut = sum(p.lut_ms for p in parts)
        estimated = sum(p.estimated_ms for p in parts)
        share = estimated / lut if lut > 0 else 0.0
        if share <= threshold:
            return beyond
        prov = self.table.provenance
        n_missing, n_ops = sum(p.n_missing for p in parts), sum(p.n_ops for p in parts)
        what = f"{len(parts)} subnets" if len(parts) > 1 else str(archs[0])
        n_classes = self.table.n_classes if n_classes is None else n_classes
        advice = ["these resolutions or widths"] if self._outside_space(archs) else []
        # a classifier of a class count the table never measured (at any resolution): the flag that measures it
        if any(op.key not in self.table.ops for a in archs for op in arch_ops(a, n_classes) if op.kind == "Logits"):
            advice.append(f"with --n-classes {n_classes} (the table measured a classifier of {self.table.n_classes} "
                          "classes)")
        return (f"{100 * share:.0f}% of the predicted op latency of {what} is extrapolated by XGBoost ({n_missing} "
                f"of {n_ops} ops outside table {self.table.device!r}, which measured resolutions "
                f"{prov.get('resolutions')} and widths {prov.get('widths')}); profile {' '.join(advice) or 'them'} "
                "for a measured prediction") + (f"; {beyond}" if beyond else "")

    def _outside_space(self, archs: Sequence[Arch]) -> bool:
        """Whether any of ``archs`` has a resolution or width the table did not profile (or says nothing of)."""
        prov = self.table.provenance
        resolutions, widths = prov.get("resolutions"), prov.get("widths")
        if resolutions is None or widths is None:
            return True
        return any(a.r not in resolutions or a.w not in widths for a in archs)

    # ----- persistence --------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        obj = {"format": PREDICTOR_FORMAT, "version": MODEL_VERSION, "device": self.table.device,
               "table_fingerprint": self.table.fingerprint(), "op_kinds": list(OP_KINDS),
               "op_models": {k: _booster_to_json(b) for k, b in self.op_models.items()},
               "residual": None if self.residual is None else _booster_to_json(self.residual),
               "residual_linear": None if self.linear is None else self.linear.to_json(),
               "residual_range": self.residual_range, "residual_features": self.residual_features,
               **({"group_factors": self.group_factors} if self.group_factors else {})}
        atomic_write_text(path, json.dumps(obj) + "\n")
        return path

    @classmethod
    def load(cls, table_path: str | os.PathLike, model_path: str | os.PathLike | None = None) -> "LatencyPredictor":
        """Load a table and its models (``<table stem>.xgb.json`` by default; refitted when that is absent)."""
        table_path = Path(table_path)
        table = LatencyTable.load(table_path)
        model_path = Path(model_path) if model_path else models_path(table_path)
        if not model_path.is_file():
            log.info("no fitted models at %s; fitting them from the table", model_path)
            return cls.fit(table)
        try:
            obj = json.loads(model_path.read_text())
            if obj.get("format") != PREDICTOR_FORMAT:
                raise ValueError(f"format is {obj.get('format')!r}")
            fingerprint = obj.get("table_fingerprint")
            op_models = {k: _booster_from_json(v) for k, v in obj["op_models"].items()}
            residual = None if obj.get("residual") is None else _booster_from_json(obj["residual"])
            rng_ = obj.get("residual_range")
            linear = None if obj.get("residual_linear") is None else _Linear.from_json(obj["residual_linear"])
            features = obj.get("residual_features", "base")  # files written before the choice existed: "base"
            if features not in RESIDUAL_FEATURES + RETIRED_RESIDUAL_FEATURES:
                raise ValueError(f"residual_features is {features!r}")
        except Exception as exc:
            raise TableError(f"latency models {model_path} are corrupt ({type(exc).__name__}: {exc}); delete the "
                             f"file and natdeploy refits them from {table_path}") from None
        stale = obj.get("version") not in READABLE_VERSIONS.get(features, ()) or fingerprint != table.fingerprint()
        if stale:  # fitted to another version of the table (re-profiled), or by an older natdeploy: refit
            log.warning("latency models %s do not match %s (re-profiled table or older models); refitting",
                        model_path, table_path)
            pred = cls.fit(table)
            try:
                pred.save(model_path)
            except OSError as exc:
                log.warning("could not save the refitted models to %s: %s", model_path, exc)
            return pred
        return cls(table, op_models, residual, None if rng_ is None else (float(rng_[0]), float(rng_[1])), linear,
                   group_factors=obj.get("group_factors"), residual_features=features)


def choose_residual_features(table: LatencyTable, op_models: dict[str, Any], speed: SpeedModel, seed: int = 0,
                             folds: int = 5) -> tuple[str, dict[str, tuple[float, float]]]:
    """The feature set of :data:`RESIDUAL_FEATURES` whose residual model predicts the table's own subnets best in
    ``folds``-fold cross-validation (the share within +-5% plus the share within +-10%; ties keep "base"), and each
    set's (within +-5%, within +-10%). Below :data:`MIN_E2E_FOR_FEATURE_CHOICE` subnets: "base", no scores."""
    from sklearn.model_selection import KFold

    if len(table.e2e) < MIN_E2E_FOR_FEATURE_CHOICE:
        return "base", {}
    archs = [Arch.from_string(a) for a in table.e2e]
    measured = np.array([speed.normalise(m) for m in table.e2e.values()])
    splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(archs))
    scores = {}
    for name in RESIDUAL_FEATURES:
        lut, feats, kept = LatencyPredictor(table, op_models, speed=speed,
                                            residual_features=name)._evaluate_archs(archs, table.n_classes)
        y = log_factor_of(measured, lut, kept)
        pred = np.empty_like(y)
        for train, held in splits:
            linear, trees, (lo, hi) = _fit_residual(feats[train], y[train], seed)
            pred[held] = np.clip(linear.predict(feats[held]) + trees.inplace_predict(feats[held]), lo, hi)
        err = np.abs(apply_factor(lut, kept, pred) / measured - 1)
        scores[name] = (float((err <= 0.05).mean()), float((err <= 0.10).mean()))
    best = max(RESIDUAL_FEATURES, key=lambda k: (sum(scores[k]), k == "base"))
    return best, scores


def calibrate_speed_elasticity(table: LatencyTable, folds: int = 5, seed: int = 0,
                               grid: Sequence[float] = ELASTICITY_GRID) -> tuple[float, dict[float, float]]:
    """The speed elasticity that best explains the table's end-to-end measurements, and the score of every
    candidate: :func:`natdeploy.latency.speed.fit` cross-validating this predictor, fitted on the table's ops and
    the training folds' subnets at the whole table's nominal speed. Leaves the table as it was."""
    keys = list(table.e2e)
    archs = [Arch.from_string(k) for k in keys]

    def predict_held_out(model: SpeedModel, train: np.ndarray, held: np.ndarray) -> np.ndarray:
        part = LatencyTable(table.device, table.provenance, table.ops, {keys[i]: table.e2e[keys[i]] for i in train},
                            table.n_classes, statistic=table.statistic, speed_elasticity=model.elasticity)
        return LatencyPredictor.fit(part, seed, speed=model, residual_features="base").predict(
            [archs[i] for i in held])

    result = fit_speed(table.speed, list(table.e2e.values()), predict_held_out, folds, seed, grid)
    return result.model.elasticity, result.scores


def fit_table(table: LatencyTable, table_path: str | os.PathLike, seed: int = 0,
              elasticity: str | float = "auto") -> Path:
    """Set the table's speed elasticity (``"auto"``: calibrate it; a number: that), save the table, fit its
    predictor and save it beside the table: what ``natdeploy profile`` and ``natdeploy tables refit`` end with.
    Returns the models' path (``<table stem>.xgb.json``)."""
    table_path = Path(table_path)
    if elasticity == "auto":
        c, scores = calibrate_speed_elasticity(table, seed=seed)
        if scores:
            log.info("speed elasticity %+.2f (cross-validated 1 - R^2 %.4f; %.4f without correction)", c, scores[c],
                     scores.get(0.0, float("nan")))
        table.speed_elasticity = c
    else:
        table.speed_elasticity = float(elasticity)
    table.save(table_path)
    return LatencyPredictor.fit(table, seed=seed).save(models_path(table_path))
