"""Accuracy surrogates for NAT: predict a subnet's accuracy (or error) from its genome.

NAT (Lu et al., TPAMI 2021) fits a cheap regressor on the archive of evaluated subnets (100-300 points) and lets
NSGA search against its predictions. This module holds the candidates NAT compares: an ensemble of radial-basis-
function models (NAT's default), a Gaussian process, a decision tree (CART), a random forest and an MLP, plus
NAT's *adaptive switching*, which picks one of them per iteration by cross-validated Kendall tau.

Inputs are NAT's 22-integer genomes (``SearchSpace.encode``), one per row. By default a surrogate regresses on 27
ordinal features derived from the genome (``genome_features``), not on the genome as NAT's reference did:

* skipped blocks are pushed to the end of their stage first, so genomes of the same network give the same row
  (NSGA's crossover makes non-canonical genomes);
* the depth of each stage is added, because depth drives accuracy strongly and is otherwise spread over 4 genes;
* the block genes stay as they are: ``1 + k_idx + 3 * e_idx`` orders a block by expand ratio, then kernel, which is
  roughly its capacity, with 0 (skipped) below all. Splitting each into kernel and expand ordinals (47 features)
  was measured and ranked worse for the distance-based models (Kendall tau on the synthetic benchmark of the tests,
  200 points: RBF 0.73 vs 0.77, GP 0.79 vs 0.80; trees equal): more dimensions dilute the distances.

``encoding="genome"`` regresses on the raw columns instead (any number of them). Either way the columns are
min-max scaled on the training data and the targets standardised, so every model sees a well-conditioned problem.

All randomness comes from the ``seed`` each surrogate is built with; nothing reads or sets a global RNG.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Protocol, Self, Sequence, runtime_checkable

import numpy as np
from scipy import linalg, stats

from natdeploy.errors import NatDeployError
from natdeploy.space import GENOME_LENGTH, MAX_DEPTH, N_CHOICES, N_STAGES, SearchSpace

log = logging.getLogger(__name__)

__all__ = ["Surrogate", "TrainableSurrogate", "NotFittedError",
           "RBFEnsemble", "GaussianProcess", "CART", "RandomForest", "MLP",
           "AdaptiveSwitching", "make_surrogate", "kendall_tau", "genome_features", "SURROGATE_NAMES", "ENCODINGS"]

SURROGATE_NAMES = ("rbf", "gp", "cart", "rf", "mlp", "as")
ENCODINGS = ("features", "genome")
N_FEATURES = 2 + N_STAGES + N_STAGES * MAX_DEPTH
_CHUNK = 512  # query rows per RBF kernel block; measured 2-3x faster than 10k rows at once (cache-sized blocks)


@runtime_checkable
class Surrogate(Protocol):
    """What the search needs of an accuracy predictor: predict a batch of genomes (one row each). An already
    trained predictor needs nothing else."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        ...


@runtime_checkable
class TrainableSurrogate(Surrogate, Protocol):
    """A surrogate NAT refits on its archive every iteration: ``fit(genomes, targets)`` returns the fitted model."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> "TrainableSurrogate":
        ...


class NotFittedError(NatDeployError, RuntimeError):
    """``predict`` was called on a surrogate that has not been fitted."""


# ----- helpers -------------------------------------------------------------------------------------------------
def kendall_tau(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between truth and prediction; NaN when it is undefined (fewer than 2 points or a constant
    input), since there is then no ranking to agree with."""
    a = np.asarray(y_true, dtype=float).ravel()
    b = np.asarray(y_pred, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"kendall_tau needs equal lengths, got {a.size} true and {b.size} predicted values")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("kendall_tau got NaN or infinite values")
    # Checked here rather than left to scipy, which warns on constant input.
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.kendalltau(a, b).statistic)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_seed(seed: Any) -> int:
    return _check_int("seed", seed, 0)


def _check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; allowed: {list(ENCODINGS)}")
    return encoding


def _check_X(X: Any, n_columns: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (one genome per row), got shape {X.shape}; "
                         "for a single genome use X.reshape(1, -1)")
    if n_columns is not None and X.shape[1] != n_columns:
        raise ValueError(f"X has {X.shape[1]} columns but the surrogate was fitted on {n_columns}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X holds NaN or infinite values")
    return X


def _check_Xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = _check_X(X)
    y = np.asarray(y, dtype=float)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one target per genome), got shape {y.shape}")
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} values; they must match")
    if len(y) < 2:
        raise ValueError(f"a surrogate needs at least 2 samples to fit, got {len(y)}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y holds NaN or infinite values")
    return X, y


def genome_features(X: np.ndarray) -> np.ndarray:
    """The 27 ordinal features of NAT genomes (rows of 22 integers): resolution index, width index, the depth of
    each of the 5 stages, then the 20 block genes with skipped blocks pushed to the end of their stage."""
    X = _check_X(X)
    if X.shape[1] != GENOME_LENGTH:
        raise ValueError(f"NAT genomes have {GENOME_LENGTH} integers per row, got {X.shape[1]} columns; "
                         "pass encoding='genome' to regress on arbitrary columns")
    g = np.rint(X)
    if not np.allclose(g, X, atol=1e-6):
        raise ValueError("genomes must hold integers (round them, e.g. np.rint, before predicting)")
    if g.min(initial=0) < 0 or g[:, 2:].max(initial=0) > N_CHOICES:
        raise ValueError(f"genome values out of range: indices must be >= 0 and block genes in 0..{N_CHOICES}")
    out = np.empty((len(g), N_FEATURES), dtype=float)
    out[:, :2] = g[:, :2]
    out[:, 2:2 + N_STAGES] = SearchSpace.depths(g)
    out[:, 2 + N_STAGES:] = SearchSpace.canonical(g)[:, 2:]
    return out


# ----- the shared base ----------------------------------------------------------------------------------------
class _ScaledSurrogate:
    """Validation, the genome encoding, column scaling and target standardisation, shared by every model.

    Subclasses implement ``_fit(F, z)`` and ``_predict(F)`` on scaled features ``F`` and standardised targets ``z``.
    """

    name = ""

    def __init__(self, seed: int = 0, encoding: str = "features") -> None:
        self.seed = _check_seed(seed)
        self.encoding = _check_encoding(encoding)
        self._n_columns: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, encoding={self.encoding!r})"

    @property
    def is_fitted(self) -> bool:
        return self._n_columns is not None

    def _features(self, X: np.ndarray) -> np.ndarray:
        return genome_features(X) if self.encoding == "features" else X

    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        """Fit on genomes ``X`` (n x 22) and targets ``y`` (n,); returns self."""
        X, y = _check_Xy(X, y)
        F = self._features(X)
        self._lo = F.min(axis=0)
        span = F.max(axis=0) - self._lo
        # A column constant in the archive carries no information; scaling it by 1 keeps it finite on new data.
        self._span = np.where(span > 0, span, 1.0)
        self._y_mean = float(y.mean())
        self._y_std = float(y.std()) or 1.0
        self._n_columns = None  # a failed refit must not leave a half-updated model looking fitted
        self._fit((F - self._lo) / self._span, (y - self._y_mean) / self._y_std)
        self._n_columns = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted targets for genomes ``X`` (m x 22), shape (m,)."""
        if self._n_columns is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) before predict(X)")
        X = _check_X(X, self._n_columns)
        if len(X) == 0:
            return np.zeros(0)
        z = self._predict((self._features(X) - self._lo) / self._span)
        return np.asarray(z, dtype=float).ravel() * self._y_std + self._y_mean

    def _fit(self, F: np.ndarray, z: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, F: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# ----- RBF ensemble (NAT's default) ---------------------------------------------------------------------------
def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances via one matrix product (far faster than cdist for thousands of rows)."""
    d = (A * A).sum(axis=1)[:, None] + (B * B).sum(axis=1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(d, 0.0, out=d)


def _kernel(sq: np.ndarray, kind: str, eps: float) -> np.ndarray:
    """phi(r) from squared distances, in place. Cubic r^3 needs a linear tail (conditionally positive definite of
    order 2); the Gaussian exp(-(r/eps)^2) is positive definite and takes the tail only to model a linear trend."""
    if kind == "cubic":
        r = np.sqrt(sq)
        r *= sq
        return r
    sq *= -1.0 / (eps * eps)
    return np.exp(sq, out=sq)


class _RBFModel:
    """One RBF regressor: s(x) = sum_i w_i phi(|x - c_i|) + c_0 + c^T x, fitted by solving
    [[Phi + lam I, P], [P^T, 0]] [w; c] = [y; 0]. The ridge ``lam`` makes it a smoothing spline rather than an exact
    interpolant, which matters because archive accuracies are noisy and may hold coinciding points."""

    def __init__(self, centres: np.ndarray, z: np.ndarray, kind: str, ridge: float) -> None:
        n, d = centres.shape
        sq = _sq_dists(centres, centres)
        # Gaussian width: the median distance between centres, so the kernel neither collapses nor goes flat.
        self.eps = 1.0
        if kind == "gaussian" and n > 1:
            self.eps = float(np.sqrt(np.median(sq[np.triu_indices(n, 1)]))) or 1.0
        phi = _kernel(sq, kind, self.eps)
        # Relative ridge: phi's scale grows with the number of features (r^3 up to d^1.5), lam should follow it.
        lam = ridge * max(float(np.mean(np.abs(phi))), 1e-12)
        P = np.hstack([np.ones((n, 1)), centres])
        A = np.zeros((n + d + 1, n + d + 1))
        A[:n, :n] = phi
        A[np.arange(n), np.arange(n)] += lam
        A[:n, n:] = P
        A[n:, :n] = P.T
        b = np.concatenate([z, np.zeros(d + 1)])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", linalg.LinAlgWarning)
                sol = linalg.solve(A, b, assume_a="sym", check_finite=False)
        except (linalg.LinAlgError, linalg.LinAlgWarning):
            # Rank-deficient tail (fewer distinct points than features): the least-squares solution still fits.
            sol = linalg.lstsq(A, b, check_finite=False)[0]
        self.kind = kind
        self.w, self.c0, self.c = sol[:n], sol[n], sol[n + 1:]
        self._aug = np.hstack([centres, np.ones((n, 1)), (centres * centres).sum(axis=1, keepdims=True)])

    def predict(self, F: np.ndarray) -> np.ndarray:
        # |a|^2 + |c|^2 - 2 a.c as a single matrix product of augmented rows: the elementwise adds and the
        # temporaries they need cost more than the product itself.
        rows = np.hstack([-2.0 * F, (F * F).sum(axis=1, keepdims=True), np.ones((len(F), 1))])
        sq = rows @ self._aug.T
        phi = _kernel(np.maximum(sq, 0.0, out=sq), self.kind, self.eps)
        return phi @ self.w + self.c0 + F @ self.c


class RBFEnsemble(_ScaledSurrogate):
    """NAT's default surrogate: the mean of ``n_members`` RBF regressors, each fitted on a random subset of the
    samples and a random subset of the features.

    NAT used 500 near-interpolating members, each on all samples and a random 1..m of the m features. Here each
    member draws ``sample_fraction`` of the samples without replacement (with replacement would repeat centres,
    which adds no diversity to an interpolant) and a uniform number of features in
    ``[ceil(min_feature_fraction * m), m]``, and smooths with a relative ``ridge``. Measured on the synthetic
    benchmark of the tests (300 points, tau on 2000 unseen): these defaults 0.81, NAT's settings 0.77; 500 members
    0.81 at 5x the cost, 25 members 0.80; features from 5% of m 0.78, from 50% 0.80.
    """

    name = "rbf"

    def __init__(self, seed: int = 0, n_members: int = 100, kernel: str = "cubic", ridge: float = 0.1,
                 sample_fraction: float = 0.7, min_feature_fraction: float = 0.75,
                 encoding: str = "features") -> None:
        super().__init__(seed, encoding)
        _check_int("n_members", n_members, 1)
        if kernel not in ("cubic", "gaussian"):
            raise ValueError(f"unknown RBF kernel {kernel!r}; allowed: ['cubic', 'gaussian']")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction!r}")
        if not 0 < min_feature_fraction <= 1:
            raise ValueError(f"min_feature_fraction must be in (0, 1], got {min_feature_fraction!r}")
        self.n_members, self.kernel, self.ridge = int(n_members), kernel, float(ridge)
        self.sample_fraction, self.min_feature_fraction = float(sample_fraction), float(min_feature_fraction)

    def _fit(self, F: np.ndarray, z: np.ndarray) -> None:
        rng = np.random.default_rng(self.seed)
        n, m = F.shape
        # Columns constant over the archive cannot inform any member, and would make the linear tail singular.
        useful = np.nonzero(np.ptp(F, axis=0) > 0)[0]
        if useful.size == 0:
            useful = np.arange(m)
        n_sub = max(2, min(n, math.ceil(self.sample_fraction * n)))
        lo = max(1, math.ceil(self.min_feature_fraction * useful.size))
        self._members: list[tuple[np.ndarray, _RBFModel]] = []
        for _ in range(self.n_members):
            rows = np.sort(rng.choice(n, size=n_sub, replace=False))
            k = int(rng.integers(lo, useful.size + 1))
            cols = np.sort(rng.choice(useful, size=k, replace=False))
            self._members.append((cols, _RBFModel(F[np.ix_(rows, cols)], z[rows], self.kernel, self.ridge)))

    def _predict(self, F: np.ndarray) -> np.ndarray:
        out = np.zeros(len(F))
        # Chunks keep each member's (rows x centres) kernel block in cache.
        for start in range(0, len(F), _CHUNK):
            chunk = F[start:start + _CHUNK]
            acc = np.zeros(len(chunk))
            for cols, model in self._members:
                acc += model.predict(chunk[:, cols])
            out[start:start + _CHUNK] = acc / len(self._members)
        return out


# ----- scikit-learn models ------------------------------------------------------------------------------------
class GaussianProcess(_ScaledSurrogate):
    """GP regression: constant x Matern-5/2 kernel plus white noise, hyperparameters by maximum marginal likelihood
    on the standardised targets. The length scale is shared by all features unless ``ard=True``: one per feature
    ranked better on the tests' synthetic targets (tau 0.86 vs 0.81 smooth, 0.84 vs 0.71 peaked, 300 points) but
    fits about 10x slower (8 s on 300 points), too slow for the default."""

    name = "gp"

    def __init__(self, seed: int = 0, ard: bool = False, n_restarts: int = 0, encoding: str = "features") -> None:
        super().__init__(seed, encoding)
        self.ard, self.n_restarts = bool(ard), int(n_restarts)

    def _fit(self, F: np.ndarray, z: np.ndarray) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        scale = np.ones(F.shape[1]) if self.ard else 1.0
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(scale, (1e-2, 1e3), nu=2.5)
                  + WhiteKernel(1e-1, (1e-6, 1e1)))
        self._model = GaussianProcessRegressor(kernel, normalize_y=False, n_restarts_optimizer=self.n_restarts,
                                               random_state=self.seed)
        with warnings.catch_warnings():
            # A length scale at its bound only means a feature is irrelevant; the fit is still usable.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._model.fit(F, z)

    def _predict(self, F: np.ndarray) -> np.ndarray:
        return self._model.predict(F)


def _leaf(min_samples_leaf: int, n: int) -> int:
    """Leaf size capped at n/4, so that a tree on a tiny archive still splits instead of predicting a constant."""
    return max(1, min(min_samples_leaf, n // 4))


class CART(_ScaledSurrogate):
    """A single regression tree. ``min_samples_leaf`` > 1 keeps it from memorising the noise of single points."""

    name = "cart"

    def __init__(self, seed: int = 0, min_samples_leaf: int = 5, max_depth: int | None = None,
                 encoding: str = "features") -> None:
        super().__init__(seed, encoding)
        self.min_samples_leaf, self.max_depth = int(min_samples_leaf), max_depth

    def _fit(self, F: np.ndarray, z: np.ndarray) -> None:
        from sklearn.tree import DecisionTreeRegressor

        self._model = DecisionTreeRegressor(min_samples_leaf=_leaf(self.min_samples_leaf, len(F)),
                                            max_depth=self.max_depth, random_state=self.seed).fit(F, z)

    def _predict(self, F: np.ndarray) -> np.ndarray:
        return self._model.predict(F)


class RandomForest(_ScaledSurrogate):
    """A random forest of ``n_estimators`` trees, each split seeing ``max_features`` of the features. Single-thread
    (``n_jobs=1``): on 2 shared cores joblib's process start-up costs more than it saves."""

    name = "rf"

    def __init__(self, seed: int = 0, n_estimators: int = 200, max_features: float = 0.33,
                 min_samples_leaf: int = 3, encoding: str = "features") -> None:
        super().__init__(seed, encoding)
        self.n_estimators, self.max_features = int(n_estimators), max_features
        self.min_samples_leaf = int(min_samples_leaf)

    def _fit(self, F: np.ndarray, z: np.ndarray) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self._model = RandomForestRegressor(n_estimators=self.n_estimators, max_features=self.max_features,
                                            min_samples_leaf=_leaf(self.min_samples_leaf, len(F)), n_jobs=1,
                                            random_state=self.seed).fit(F, z)

    def _predict(self, F: np.ndarray) -> np.ndarray:
        return self._model.predict(F)


class MLP(_ScaledSurrogate):
    """A one-hidden-layer MLP trained full-batch with L-BFGS, the right solver for a few hundred points. The strong
    L2 penalty (``alpha``) is what makes it rank well on noisy archives: measured tau 0.85 at alpha=1 against
    0.80 at 0.1 or 10 on the synthetic benchmark of the tests."""

    name = "mlp"

    def __init__(self, seed: int = 0, hidden: tuple[int, ...] = (64,), alpha: float = 1.0, max_iter: int = 300,
                 encoding: str = "features") -> None:
        super().__init__(seed, encoding)
        self.hidden, self.alpha, self.max_iter = tuple(int(h) for h in hidden), float(alpha), int(max_iter)

    def _fit(self, F: np.ndarray, z: np.ndarray) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor

        self._model = MLPRegressor(hidden_layer_sizes=self.hidden, activation="tanh", solver="lbfgs",
                                   alpha=self.alpha, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            # Stopping at max_iter is the intended early stop, not a failure.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._model.fit(F, z)

    def _predict(self, F: np.ndarray) -> np.ndarray:
        return self._model.predict(F)


# ----- adaptive switching -------------------------------------------------------------------------------------
_CLASSES: dict[str, type[_ScaledSurrogate]] = {
    "rbf": RBFEnsemble, "gp": GaussianProcess, "cart": CART, "rf": RandomForest, "mlp": MLP}

# Cheaper settings used only inside cross-validation (RBF 4x, RF 2x less work); measured tau within 0.01 of full.
_CV_OPTIONS: dict[str, dict[str, Any]] = {"rbf": {"n_members": 25}, "rf": {"n_estimators": 100}}


def cross_validated_tau(make: Callable[[], Surrogate], X: np.ndarray, y: np.ndarray, n_folds: int = 5,
                        seed: int = 0) -> float:
    """Mean Kendall tau of fresh models from ``make`` on ``n_folds`` held-out folds of (``X``, ``y``): how well
    a surrogate ranks archive members it has not seen. Each fold needs >= 2 points, so small archives get fewer
    folds (NaN below 4 points); a fold whose truth is constant tells nothing and is skipped; a model that predicts
    a constant on a fold ranks nothing there and scores 0."""
    k = min(n_folds, len(X) // 2)
    if k < 2:
        return float("nan")
    from sklearn.model_selection import KFold

    # Contiguous folds of one seeded permutation, training rows in their original order.
    order = np.random.default_rng(seed).permutation(len(X))
    taus = []
    for train_pos, test_pos in KFold(n_splits=k).split(order):
        train, test = np.sort(order[train_pos]), order[test_pos]
        if np.ptp(y[test]) == 0:
            continue
        tau = kendall_tau(y[test], make().fit(X[train], y[train]).predict(X[test]))
        taus.append(0.0 if math.isnan(tau) else tau)
    return float(np.mean(taus)) if taus else float("nan")


class AdaptiveSwitching:
    """NAT's adaptive switching: k-fold cross-validate each candidate, keep the one with the best mean Kendall tau
    on the held-out folds, refit it on all data.

    After ``fit``: ``chosen`` is the winner's name, ``scores`` maps each candidate to its mean tau, ``model`` is the
    refitted winner. Ties go to the earlier candidate. A fold whose truth is constant tells nothing and is skipped;
    a model that predicts a constant on a fold ranks nothing there and scores 0.

    The default candidates leave out NAT's single CART for the random forest, its smooth version (pass
    ``candidates`` to bring CART back). A single tree predicts a handful of values, and NSGA-II then crowds its
    population onto the cheapest subnet of each plateau. Refitted on the 32-member archive of a CIFAR-10 run
    (benchmarks/nat_cifar10.py, 2026-11-30), CART won the switch on cross-validated tau (0.60) but made 5 distinct
    predictions over the search's 99 final candidates, all between 1.20 and 1.53 ms, and the 8 subnets it picked
    were near-copies of the smallest; a random forest on the same archive spread them over 1.41-2.86 ms.
    """

    name = "as"

    def __init__(self, seed: int = 0, candidates: Sequence[str] = ("rbf", "gp", "rf", "mlp"),
                 n_folds: int = 5, cv_options: dict[str, dict[str, Any]] | None = None,
                 encoding: str = "features") -> None:
        self.seed = _check_seed(seed)
        candidates = tuple(candidates)
        unknown = [c for c in candidates if c not in _CLASSES]
        if not candidates or unknown:
            raise ValueError(f"unknown or no candidates {unknown or list(candidates)}; allowed: {list(_CLASSES)}")
        _check_int("n_folds", n_folds, 2)
        self.candidates, self.n_folds, self.encoding = candidates, int(n_folds), _check_encoding(encoding)
        self.cv_options = dict(_CV_OPTIONS if cv_options is None else cv_options)
        self.chosen: str | None = None
        self.scores: dict[str, float] = {}
        self.model: _ScaledSurrogate | None = None

    def __repr__(self) -> str:
        return f"AdaptiveSwitching(seed={self.seed}, candidates={list(self.candidates)}, chosen={self.chosen!r})"

    @property
    def is_fitted(self) -> bool:
        return self.model is not None

    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        """Cross-validate every candidate, then refit the best on all of ``X``, ``y``; returns self."""
        X, y = _check_Xy(X, y)
        if self.encoding == "features":
            genome_features(X[:1])  # reject non-genomes before spending time on cross-validation
        scores = {name: cross_validated_tau(
            lambda: _CLASSES[name](seed=self.seed, encoding=self.encoding, **self.cv_options.get(name, {})),
            X, y, self.n_folds, self.seed) for name in self.candidates}
        ranked = [c for c in self.candidates if not math.isnan(scores[c])]
        chosen = max(ranked, key=lambda c: scores[c]) if ranked else self.candidates[0]
        log.debug("adaptive switching: %s -> %s", scores, chosen)
        model = _CLASSES[chosen](seed=self.seed, encoding=self.encoding).fit(X, y)
        self.chosen, self.scores, self.model = chosen, scores, model
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions of the chosen, refitted model."""
        if self.model is None:
            raise NotFittedError("AdaptiveSwitching is not fitted yet; call fit(X, y) before predict(X)")
        return self.model.predict(X)


def make_surrogate(name: str | Surrogate, seed: int = 0, **options: Any) -> Surrogate:
    """A new, unfitted surrogate by name (``rbf``, ``gp``, ``cart``, ``rf``, ``mlp``, ``as``), ``options`` going to
    its constructor; or ``name`` itself when it is already a surrogate object (anything with ``predict``)."""
    if not isinstance(name, str):
        if not isinstance(name, Surrogate):
            raise ValueError(f"a surrogate must be a name {list(SURROGATE_NAMES)} or an object with predict(X); "
                             f"got {type(name).__name__}")
        if options:
            raise ValueError(f"options {sorted(options)} apply only to a surrogate made by name, not to {name!r}")
        return name
    factories: dict[str, Callable[..., Surrogate]] = {**_CLASSES, "as": AdaptiveSwitching}
    if name not in factories:
        raise ValueError(f"unknown surrogate {name!r}; allowed: {list(SURROGATE_NAMES)}")
    return factories[name](seed=seed, **options)
