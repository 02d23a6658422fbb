"""Few-shot transfer: a new device's latency predictor from an existing table and a few whole subnets measured on
the new device (``natdeploy profile --device NEW --few-shot N --from SOURCE_TABLE``).

The model. A source predictor says ``log P = log L + R(f)``: ``L`` the sum of the table's op latencies, ``R`` its
residual model (ridge plus trees) on the subnet's features ``f`` (``f[0]`` is ``log L``; a "body-groups" source
scales the sum but its classifier's op ``K``, ``P = K + (L - K) e^R``, and so does its transfer). The transfer keeps
``R`` and changes two things, fitted on the ``N`` new measurements ``T``:

- **Op groups** (:data:`~natdeploy.latency.predictor.OP_GROUPS`: stem and head, then the MBConv blocks by kernel
  size) are rescaled relative to each other by ``r_g``: the sum becomes ``L' = sum_g r_g L_g``, while ``R`` still
  sees the source's features (its trees were fitted on them, and it would largely undo a rescaled ``f[0]``). The
  ``r_g`` are normalised to keep the median subnet's sum; the constant below carries the overall speed.
- **A correction** ``D(f)`` is added to the residual: a constant (the device's overall speed) or a ridge regression on
  the standardised features (the residual's shape on the new device).

Four methods combine these: ``scale`` (constant only), ``group`` (groups + constant), ``scale+refit`` and
``group+refit``. ``auto`` picks the one with the lowest cross-validated squared log error on the ``N`` subnets
themselves (leave-one-out up to 10, else 10-fold; a simpler method wins within 5%); nothing held out is looked at.

The result is a normal table: the source's ops at its nominal speed (anchorless values, read as they are), the
``N`` new measurements as its whole subnets, and provenance ``transferred_from``, ``few_shot_n`` and ``transfer``
(method, factors, cross-validated scores, and the resolutions and widths of the fitted subnets: a prediction beyond
them gets a warning, :meth:`LatencyTable.beyond_fit`). Its models file holds the source's op regressors and residual
trees, the correction folded into the linear part, and the group factors, so ``predictor_for`` serves it as any
table. (``natdeploy tables refit`` on it fits a plain predictor on the ``N`` subnets instead: the transfer is lost.)
Its speed elasticity is the spec's number, or for ``auto`` the source table's (:func:`transfer_elasticity`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from natdeploy.devices import DeviceSpec
from natdeploy.errors import ConfigError
from natdeploy.latency.backends import E2E_BATCH, Backend, get_backend
from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import arch_ops
from natdeploy.latency.predictor import OP_GROUPS as GROUPS
from natdeploy.latency.predictor import LatencyPredictor, _Linear, apply_factor, log_factor_of, models_path, op_group
from natdeploy.latency.speed import SpeedModel
from natdeploy.latency.table import LatencyTable, TableError
from natdeploy.space import Arch, SearchSpace

METHODS = ("scale", "group", "scale+refit", "group+refit")
MIN_SHOTS = 2
GROUP_PRIOR = 0.01  # ridge weight on log r_g (log units, summed over subnets): groups move only as far as data says
REFIT_ALPHAS = tuple(np.logspace(-1, 3, 9))
RANGE_MARGIN = 0.1  # the residual's clip range grows by this much (log) beyond what the fit needed
PARSIMONY = 1.05  # auto keeps a simpler method unless a richer one cuts the cross-validated error by more than 5%


@dataclass(frozen=True)
class Parts:
    """What the transfer fits on, per subnet: the source's op sum per group (ms, at the source's nominal speed)
    and the source's residual features."""

    groups: np.ndarray  # (n, len(GROUPS))
    feats: np.ndarray  # (n, n_features), feats[:, 0] = log of the unscaled sum
    kept: np.ndarray  # (n,) the part of the "fixed" group the residual factor leaves unscaled (keeps_head)

    def take(self, idx: np.ndarray) -> "Parts":
        return Parts(self.groups[idx], self.feats[idx], self.kept[idx])

    def kept_at(self, r: np.ndarray) -> np.ndarray:
        """The unscaled part with group factors ``r``."""
        return self.kept * r[GROUPS.index("fixed")]


def parts_of(source: LatencyPredictor, archs: Sequence[Arch], n_classes: int | None = None) -> Parts:
    """The source predictor's per-group op sums, residual features and unscaled classifier part for ``archs``."""
    n_classes = source.table.n_classes if n_classes is None else n_classes
    groups, kept = np.zeros((len(archs), len(GROUPS))), np.zeros(len(archs))
    for i, arch in enumerate(archs):
        ops = arch_ops(arch, n_classes)
        for op, ms in zip(ops, source.op_latency(ops, arch.r)):
            groups[i, GROUPS.index(op_group(op))] += ms
            if source.keeps_head and op.kind == "Logits":
                kept[i] += ms
    _, feats, _ = source._evaluate_archs(list(archs), n_classes)
    return Parts(groups, np.asarray(feats, dtype=float), kept)


@dataclass(frozen=True)
class TransferModel:
    """A fitted transfer: relative group factors ``r`` and the linear correction added to the residual."""

    method: str
    r: tuple[float, ...]
    delta_coef: tuple[float, ...]  # on the source's standardised features
    delta_intercept: float
    residual_range: tuple[float, float]
    n_features: int
    scores: dict[str, float] = field(default_factory=dict)  # cross-validated mean squared log error per method

    def delta(self, source: LatencyPredictor, feats: np.ndarray) -> np.ndarray:
        """The correction to the source's log residual at ``feats``."""
        if not self.delta_coef or source.linear is None:
            return np.full(len(feats), self.delta_intercept)
        z = (feats - source.linear.mean) / source.linear.scale
        return z @ np.asarray(self.delta_coef) + self.delta_intercept


def _source_residual(source: LatencyPredictor, feats: np.ndarray) -> np.ndarray:
    """The source's unclipped log(measured / sum) at ``feats``."""
    out = np.zeros(len(feats))
    if source.residual is not None:
        out = out + np.asarray(source.residual.inplace_predict(feats.astype(np.float32)), dtype=float)
    if source.linear is not None:
        out = out + source.linear.predict(feats)
    return out


def _scaled(parts: Parts, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The op sum with group factors ``r``, the residual features (which keep the unscaled sum), and the part of
    the sum the residual factor leaves unscaled."""
    return parts.groups @ r, parts.feats, parts.kept_at(r)


def predict(source: LatencyPredictor, model: TransferModel, parts: Parts) -> np.ndarray:
    """The transferred prediction in ms: what the saved transferred predictor computes."""
    lut, feats, kept = _scaled(parts, np.asarray(model.r))
    log_factor = np.clip(_source_residual(source, feats) + model.delta(source, feats), *model.residual_range)
    return apply_factor(lut, kept, log_factor)


def _fit_groups(source: LatencyPredictor, parts: Parts, y: np.ndarray) -> np.ndarray:
    """Relative group factors by ridge-regularised least squares in log space (each log factor pulled towards 0),
    normalised to keep the median subnet's sum."""
    from scipy.optimize import least_squares

    source_log = _source_residual(source, parts.feats)
    present = parts.groups.sum(0) > 0

    def residuals(theta: np.ndarray) -> np.ndarray:
        scales = np.ones(len(GROUPS))
        scales[present] = np.exp(theta[1:])
        fit = np.log(apply_factor(parts.groups @ scales, parts.kept_at(scales), theta[0] + source_log)) - y
        return np.concatenate([fit, np.sqrt(GROUP_PRIOR) * theta[1:]])

    theta = least_squares(residuals, np.zeros(int(present.sum()) + 1)).x
    r = np.ones(len(GROUPS))
    r[present] = np.exp(theta[1:])
    return r / np.exp(np.median(np.log(parts.groups @ r) - np.log(parts.groups.sum(1))))


def fit_method(source: LatencyPredictor, parts: Parts, y: np.ndarray, method: str) -> TransferModel:
    """One method's transfer fitted on log target latencies ``y`` (ms at the target's nominal speed)."""
    from sklearn.linear_model import RidgeCV

    if method not in METHODS:
        raise ConfigError(f"unknown transfer method {method!r}; choose from {', '.join(METHODS)} or auto")
    r = _fit_groups(source, parts, y) if method.startswith("group") else np.ones(len(GROUPS))
    lut, feats, kept = _scaled(parts, r)
    seen = log_factor_of(np.exp(y), lut, kept)  # the log factors these subnets showed
    left = seen - _source_residual(source, feats)
    coef, intercept = np.zeros(0), float(left.mean())
    if method.endswith("+refit") and source.linear is not None and len(y) >= 3:
        z = (feats - source.linear.mean) / source.linear.scale
        ridge = RidgeCV(alphas=REFIT_ALPHAS).fit(z, left)
        coef, intercept = np.asarray(ridge.coef_, dtype=float), float(ridge.intercept_)
    model = TransferModel(method, tuple(float(v) for v in r), tuple(float(c) for c in coef), intercept, (0.0, 0.0),
                          feats.shape[1])
    d = model.delta(source, feats)
    lo, hi = source.residual_range or (float(seen.min() - d.min()), float(seen.max() - d.max()))
    lo, hi = min(lo + d.min(), seen.min()), max(hi + d.max(), seen.max())
    return replace(model, residual_range=(float(lo - RANGE_MARGIN), float(hi + RANGE_MARGIN)))


def fold_errors(source: LatencyPredictor, parts: Parts, y: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """Log error of ``method`` on each of the N subnets, predicted from the other folds (leave-one-out up to 10)."""
    from sklearn.model_selection import KFold

    n = len(y)
    folds = KFold(n_splits=min(n, 10), shuffle=True, random_state=seed).split(np.arange(n))
    err = np.empty(n)
    for train, held in folds:
        model = fit_method(source, parts.take(train), y[train], method)
        err[held] = np.log(predict(source, model, parts.take(held))) - y[held]
    return err


def cross_validate(source: LatencyPredictor, parts: Parts, y: np.ndarray, method: str, seed: int = 0) -> float:
    """Mean squared log error of ``method`` on held-out folds of the N subnets (leave-one-out up to 10)."""
    return float((fold_errors(source, parts, y, method, seed) ** 2).mean())


def simplest_best(scores: dict[str, float]) -> str:
    """The simplest method (METHODS is ordered so) whose error is within PARSIMONY of the lowest: N subnets tell
    little."""
    return next(m for m in METHODS if scores[m] <= min(scores.values()) * PARSIMONY + 1e-12)


def fit_transfer(source: LatencyPredictor, archs: Sequence[Arch], target_ms: Sequence[float],
                 method: str = "auto", n_classes: int | None = None, seed: int = 0) -> TransferModel:
    """The transfer of ``source`` to the device on which ``archs`` measured ``target_ms`` (ms at its nominal
    speed): ``method``, or with ``auto`` the method with the lowest cross-validated error on these subnets."""
    if len(archs) < MIN_SHOTS:
        raise ConfigError(f"a transfer needs at least {MIN_SHOTS} measured subnets, got {len(archs)}")
    parts = parts_of(source, archs, n_classes)
    y = np.log(np.asarray(target_ms, dtype=float))
    if method != "auto":
        return fit_method(source, parts, y, method)
    scores = {m: cross_validate(source, parts, y, m, seed) for m in METHODS}
    return replace(fit_method(source, parts, y, simplest_best(scores)), scores=scores)


def transferred_table(source: LatencyPredictor, model: TransferModel, device: str, e2e: dict[str, Measurement],
                      provenance: dict[str, Any], source_path: str | os.PathLike,
                      speed_elasticity: float = 0.0, speed_elasticity_from: str = "spec") -> LatencyTable:
    """The table of a transfer: the source's ops at its nominal speed (anchorless), the target's measured subnets,
    and provenance naming the source, N and the fit."""
    r = dict(zip(GROUPS, model.r))

    def nominal(m: Measurement) -> Measurement:  # anchorless: read as it is, at the source's speed
        v = source.speed.normalise(m)
        return Measurement(median_ms=v, mean_ms=v, std_ms=0.0, count=m.count, warmup=m.warmup, p10_ms=v, min_ms=v)

    src = source.table
    archs = [Arch.from_string(a) for a in e2e]
    prov = {**provenance,
            "transferred_from": {"path": str(source_path), "device": src.device, "host": src.provenance.get("host"),
                                 "runtime_version": src.provenance.get("runtime_version"),
                                 "precision": src.precision, "fingerprint": src.fingerprint()},
            "few_shot_n": len(e2e),
            "transfer": {"method": model.method, "source_device": src.device,
                         "group_factors": {g: round(v, 6) for g, v in r.items()},
                         "correction": {"coef": list(model.delta_coef), "intercept": model.delta_intercept},
                         "cv_msle": {k: round(v, 8) for k, v in model.scores.items()},
                         "speed_elasticity_from": speed_elasticity_from,
                         "fitted_resolutions": sorted({a.r for a in archs}),
                         "fitted_widths": sorted({a.w for a in archs})},
            "space": src.provenance.get("space"), "widths": src.provenance.get("widths"),
            "resolutions": src.provenance.get("resolutions")}
    return LatencyTable(device=device, provenance=prov, ops={k: nominal(m) for k, m in src.ops.items()},
                        e2e=dict(e2e), n_classes=src.n_classes, statistic=src.statistic,
                        speed_elasticity=speed_elasticity,
                        resolution_ops={res: {k: nominal(m) for k, m in ops.items()}
                                        for res, ops in src.resolution_ops.items()})


def transferred_predictor(source: LatencyPredictor, model: TransferModel, table: LatencyTable) -> LatencyPredictor:
    """The predictor of a transferred table: the source's op regressors (the table holds the source's op values)
    and residual trees, its linear part plus the correction (same standardisation), and the group factors."""
    lin = source.linear
    n_feat = model.n_features
    coef = np.asarray(model.delta_coef) if len(model.delta_coef) else np.zeros(n_feat)
    if lin is None:
        lin = _Linear(np.zeros(n_feat), np.ones(n_feat), np.zeros(n_feat), 0.0)
    combined = _Linear(lin.mean, lin.scale, lin.coef + coef, lin.intercept + model.delta_intercept)
    return LatencyPredictor(table, dict(source.op_models), source.residual, model.residual_range, combined,
                            group_factors=dict(zip(GROUPS, model.r)), residual_features=source.residual_features)


@dataclass
class FewShotResult:
    table_path: Path
    model_path: Path
    n: int
    method: str
    measure_s: float
    fit_s: float
    scores: dict[str, float]


def few_shot_archs(space: SearchSpace, n: int, seed: int, exclude: Sequence[str] = ()) -> list[Arch]:
    """``n`` seeded random subnets of ``space``, none of them in ``exclude`` (Arch strings)."""
    skip = set(exclude)
    rng = np.random.default_rng(seed)
    out: list[Arch] = []
    while len(out) < n:
        for a in space.sample(rng, n):
            if a.to_string() not in skip:
                skip.add(a.to_string())
                out.append(a)
    return out[:n]


def measure_subnets(backend: Backend, archs: Sequence[Arch], n_classes: int) -> list[Measurement]:
    """Whole subnets measured as the profiler measures its own (interleaved batches where the backend can)."""
    from natdeploy.latency.profiler import _measured_archs

    batch = E2E_BATCH if backend.interleaves else 1
    out: list[Measurement] = []
    for start in range(0, len(archs), batch):
        out += [m for _, m in _measured_archs(backend, archs[start:start + batch], n_classes)]
    return out


def profile_few_shot(spec: DeviceSpec, source_path: str | os.PathLike, n: int, out: str | os.PathLike,
                     resolutions: Sequence[int] | None = None, method: str = "auto", seed: int = 0,
                     backend: Backend | None = None) -> FewShotResult:
    """Measure ``n`` seeded whole subnets on ``spec`` and save the transfer of the table at ``source_path``
    (with its models) to ``out``."""
    if n < MIN_SHOTS:
        raise ConfigError(f"--few-shot needs at least {MIN_SHOTS} subnets, got {n}")
    source = LatencyPredictor.load(source_path)
    src = source.table
    resolutions = list(resolutions or src.provenance.get("resolutions") or spec.resolutions or [])
    widths = tuple(src.provenance.get("widths") or (1.0,))
    if not resolutions:
        raise TableError(f"source table {source_path} records no resolutions; pass --resolutions")
    space = SearchSpace(resolutions=tuple(resolutions), widths=widths)
    archs = few_shot_archs(space, n, seed)

    def measure(b: Backend) -> tuple[dict[str, Any], list[Measurement]]:
        if b.statistic != src.statistic:  # before measuring: the source's values could not be compared
            raise TableError(f"{source_path} uses the {src.statistic!r} statistic, but {spec.name} measures "
                             f"{b.statistic!r}; transfer from a table of the same statistic")
        return b.describe(), measure_subnets(b, archs, src.n_classes)

    t0 = time.perf_counter()
    if backend is None:
        with get_backend(spec) as made:
            provenance, measured = measure(made)
    else:
        provenance, measured = measure(backend)
    measure_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = transfer_measured(source, source_path, spec, provenance, archs, measured, method, seed)
    out = Path(out)
    pred.table.save(out)
    model_path = pred.save(models_path(out))
    transfer = pred.table.provenance["transfer"]
    return FewShotResult(out, model_path, n, transfer["method"], measure_s, time.perf_counter() - t0,
                         transfer["cv_msle"])


def transfer_measured(source: LatencyPredictor, source_path: str | os.PathLike, spec: DeviceSpec,
                      provenance: dict[str, Any], archs: Sequence[Arch], measured: Sequence[Measurement],
                      method: str = "auto", seed: int = 0) -> LatencyPredictor:
    """The transferred predictor (with its table, unsaved) of ``source`` to ``spec``, from ``archs`` measured there
    as ``measured`` under ``provenance`` (the backend's description)."""
    src = source.table
    elasticity, elasticity_from = transfer_elasticity(spec, src)
    target = SpeedModel.of(measured, elasticity, src.statistic)
    model = fit_transfer(source, archs, [target.normalise(m) for m in measured], method, seed=seed)
    e2e = {a.to_string(): m for a, m in zip(archs, measured)}
    table = transferred_table(source, model, spec.name, e2e, {**provenance, "statistic": src.statistic},
                              source_path, elasticity, elasticity_from)
    return transferred_predictor(source, model, table)


def transfer_elasticity(spec: DeviceSpec, source: LatencyTable) -> tuple[float, str]:
    """The speed elasticity of a transferred table, and where it came from. A number in the spec is used as it is.
    ``auto`` cannot be fitted on a few subnets (:data:`~natdeploy.latency.speed.MIN_E2E_FOR_ELASTICITY`), so it
    takes the source table's fitted value where the source ran the same runtime (how anchor ratios move with the
    machine's speed is the runtime's: the Xeon and EPYC onnxruntime tables fitted -0.5 and -0.3), else 0."""
    if isinstance(spec.speed_elasticity, (int, float)):
        return float(spec.speed_elasticity), "spec"
    if source.provenance.get("runtime") == spec.runtime:
        return float(source.speed_elasticity), "source table"
    return 0.0, f"none: the source ran {source.provenance.get('runtime')}, not {spec.runtime}"
