"""The public search engine: the accuracy/latency front of a search space under any accuracy predictor.

:func:`search_front` needs no data and no supernet: an accuracy predictor (a fitted surrogate, or any callable on a
batch of genomes or Archs), latency predictors and budgets. It returns every objective value of the front it finds.

Two algorithms share the objectives and constraints of :class:`natdeploy.search.problem.NATProblem`:

* ``"fast"`` (the default): NSGA-II written on NumPy arrays (tournament, SBX, polynomial mutation, repair,
  duplicate removal and survival each one array operation per generation), with its own seeded Generator; given
  budgets, it draws offspring within them and keeps a niche of the most accurate subnets within them;
* ``"pymoo"``: pymoo's NSGA-II (NSGA-III for 3+ objectives), the path NAT's loop takes (:func:`pymoo_population`),
  kept so that NAT runs stay what they were. It costs several times more per generation.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from natdeploy.errors import NatDeployError
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search.problem import CostCache, NATProblem, evaluate_columns, objective_columns
from natdeploy.search.nsga import nsga2, rank_and_crowding
from natdeploy.space import GENOME_LENGTH, KERNELS, N_CHOICES, Arch, SearchSpace

__all__ = ["search_front", "SearchResult", "SearchEngineError", "AccuracyModel", "accuracy_model", "load_callable",
           "genomes_to_archs", "pymoo_population", "OFAAccuracyPredictor"]

Takes = Literal["genomes", "archs"]


class SearchEngineError(NatDeployError, ValueError):
    """The search engine was given something it cannot use (an accuracy predictor, a budget, a setting)."""


# ----- plugging in an accuracy predictor -------------------------------------------------------------------------
def load_callable(spec: str) -> Callable[..., Any]:
    """The object ``module:attribute`` names (``attribute`` may be dotted: ``pkg.mod:Class.method``)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise SearchEngineError(f"{spec!r} is not of the form module:function (e.g. my_package.predictors:accuracy)")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SearchEngineError(f"cannot import module {module_name!r} for {spec!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SearchEngineError(f"module {module_name!r} has no attribute {attr!r} (looked up for {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj) and not callable(getattr(obj, "predict", None)):
        raise SearchEngineError(f"{spec!r} is a {type(obj).__name__}, not a callable or an object with predict()")
    return obj


def genomes_to_archs(space: SearchSpace, genomes: np.ndarray) -> list[Arch]:
    """The Archs of a batch of genomes (the same as :meth:`SearchSpace.decode` row by row, decoded in one pass)."""
    g = space.check_genomes(genomes)
    if not len(g):
        return []
    ks, e, _ = space.kernel_expand(g)
    d = space.depths(g)
    res, wid = np.asarray(space.resolutions)[g[:, 0]], np.asarray(space.widths)[g[:, 1]]
    return [Arch(ks=k, e=x, d=dd, r=int(r), w=float(w))
            for k, x, dd, r, w in zip(ks.tolist(), e.tolist(), d.tolist(), res, wid)]


def _as_vector(values: Any, n: int, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    out = np.asarray(values, dtype=float).reshape(-1)
    if out.shape != (n,):
        raise SearchEngineError(f"{what} returned {out.size} values for {n} architectures; it must return one each")
    if not np.all(np.isfinite(out)):
        raise SearchEngineError(f"{what} returned NaN or infinite values")
    return out


class AccuracyModel:
    """An accuracy predictor as the search uses it: ``predict(genomes)`` returns predicted *errors* (what the
    problem minimises), and ``seconds`` is the time spent inside the user's predictor."""

    def __init__(self, accuracy: Any, space: SearchSpace, takes: Takes, predicts: Literal["accuracy", "error"]):
        self.accuracy, self.space, self.takes, self.predicts = accuracy, space, takes, predicts
        self._call = accuracy.predict if callable(getattr(accuracy, "predict", None)) else accuracy
        self.seconds = self.cpu_seconds = 0.0
        self.calls = 0
        self.evaluations = 0

    def predict(self, X: np.ndarray) -> np.ndarray:
        g = np.rint(np.asarray(X, dtype=float)).astype(np.int64).reshape(-1, GENOME_LENGTH)
        if not len(g):
            return np.zeros(0)
        if self.takes == "archs":
            batch: Any = genomes_to_archs(self.space, g)
        else:
            batch = np.asarray(X, dtype=float) if self._call is not self.accuracy else g
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self._call(batch)
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.thread_time() - c0
        self.calls += 1
        self.evaluations += len(g)
        values = _as_vector(out, len(g), f"the accuracy predictor {self.accuracy!r}")
        return values if self.predicts == "error" else 1.0 - values


def accuracy_model(accuracy: Any, space: SearchSpace, takes: Takes | None = None,
                   predicts: Literal["accuracy", "error"] | None = None) -> AccuracyModel:
    """Wrap ``accuracy`` for the search.

    * An object with ``predict(X)`` (a fitted :class:`~natdeploy.search.surrogates.Surrogate`) is called with genomes
      as a float (N, 22) array, like NAT's surrogates.
    * Any other callable is called with a batch: an int64 (N, 22) array of canonical genomes of ``space``, or, with
      ``takes="archs"``, a list of :class:`Arch`.
    * ``takes`` and ``predicts`` default to the predictor's own attributes of those names, else ``"genomes"`` and
      ``"accuracy"``. ``predicts="error"`` reads the output as an error to minimise (NAT's surrogates are fitted on
      ``1 - accuracy``). Any score where higher is better works as an accuracy; the result's ``error`` is then
      ``1 - score``.
    """
    if isinstance(accuracy, AccuracyModel):
        return accuracy
    if not callable(accuracy) and not callable(getattr(accuracy, "predict", None)):
        raise SearchEngineError(f"the accuracy predictor must be callable or have predict(); got "
                                f"{type(accuracy).__name__}")
    takes = takes or getattr(accuracy, "takes", None) or "genomes"
    predicts = predicts or getattr(accuracy, "predicts", None) or "accuracy"
    if takes not in ("genomes", "archs"):
        raise SearchEngineError(f"takes={takes!r}: an accuracy predictor takes 'genomes' or 'archs'")
    if predicts not in ("accuracy", "error"):
        raise SearchEngineError(f"predicts={predicts!r}: an accuracy predictor predicts 'accuracy' or 'error'")
    if takes == "archs" and callable(getattr(accuracy, "predict", None)):
        raise SearchEngineError("an object with predict() is called with genomes; pass a plain callable for Archs")
    return AccuracyModel(accuracy, space, takes, predicts)


# Per block gene (0: skipped, else 1 + k_idx + 3 * e_idx): its kernel one-hot and its expand one-hot (zero when
# skipped), the block's part of OFA's encodings.
_BLOCK_ONE_HOTS = np.zeros((N_CHOICES + 1, 2, len(KERNELS)), dtype=np.float32)
_BLOCK_ONE_HOTS[1 + np.arange(N_CHOICES), 0, np.arange(N_CHOICES) % len(KERNELS)] = 1.0
_BLOCK_ONE_HOTS[1 + np.arange(N_CHOICES), 1, np.arange(N_CHOICES) // len(KERNELS)] = 1.0


class OFAAccuracyPredictor:
    """OFA's accuracy MLP as an accuracy predictor on genomes: the one-hot features it was trained on, built for a
    whole batch at once, then one forward pass of ``model`` (a torch module from (N, D) float features to (N,) or
    (N, 1) accuracies).

    ``layout="tutorial"`` is the 128-feature input of OFA's tutorial predictor (``ofa/tutorial``): per block a
    kernel one-hot (3 x 20), then per block an expand one-hot (3 x 20), then 8 resolution bins ``(r - 112) // 16``;
    skipped blocks are all zero. ``layout="nas"`` is ``ofa.nas.accuracy_predictor.MobileNetArchEncoder``'s: a
    resolution one-hot over ``image_sizes`` first, then the kernel and expand one-hots. Load OFA's weights into a
    module of the same shape yourself (``torch.load(..., weights_only=True)``); nothing is downloaded here.
    """

    takes = "genomes"
    predicts = "accuracy"

    def __init__(self, model: Any, space: SearchSpace, layout: Literal["tutorial", "nas"] = "tutorial",
                 image_sizes: Sequence[int] | None = None, device: Any = "cpu") -> None:
        if layout not in ("tutorial", "nas"):
            raise SearchEngineError(f"unknown OFA feature layout {layout!r}; allowed: ['tutorial', 'nas']")
        res = np.asarray(space.resolutions)
        if layout == "tutorial":
            if res.min() < 112 or res.max() >= 240:
                raise SearchEngineError(f"OFA's tutorial predictor encodes resolutions 112..239 only; the space has "
                                        f"{list(space.resolutions)} (use layout='nas' with image_sizes)")
            self._r_col = 120 + (res - 112) // 16
            self.n_features = 128
        else:
            sizes = list(space.resolutions if image_sizes is None else image_sizes)
            missing = sorted(set(space.resolutions) - set(sizes))
            if missing:
                raise SearchEngineError(f"resolutions {missing} of the space are not among image_sizes {sizes}")
            self._r_col = np.array([sizes.index(r) for r in space.resolutions])
            self.n_features = len(sizes) + 120
        self.model, self.space, self.layout, self.device = model, space, layout, device

    def features(self, genomes: np.ndarray) -> np.ndarray:
        """(N, n_features) float32 one-hot features of genomes."""
        g = self.space.canonical(genomes)
        n = len(g)
        out = np.zeros((n, self.n_features), dtype=np.float32)
        offset = 0 if self.layout == "tutorial" else self.n_features - 120
        # (N, 20, 2, 3) one-hots by block gene, laid out as every block's kernel one-hot, then every expand one-hot
        out[:, offset:offset + 120] = _BLOCK_ONE_HOTS[g[:, 2:]].transpose(0, 2, 1, 3).reshape(n, 120)
        out[np.arange(n), self._r_col[g[:, 0]]] = 1.0
        return out

    def __call__(self, genomes: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(self.features(genomes)).to(self.device)
        with torch.no_grad():
            y = self.model(x)
        return y.reshape(-1).float().cpu().numpy().astype(float)


class _TimedPredictor:
    """A latency predictor whose ``predict_genomes`` time is added up (the engine's own time excludes it)."""

    def __init__(self, predictor: LatencyPredictor) -> None:
        self.predictor, self.seconds, self.cpu_seconds = predictor, 0.0, 0.0

    def predict_genomes(self, space: SearchSpace, genomes: np.ndarray, n_classes: int | None = None) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return self.predictor.predict_genomes(space, genomes, n_classes)
        finally:
            self.seconds += time.perf_counter() - t0
            self.cpu_seconds += time.thread_time() - c0


# ----- the result ------------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """The front: one row per architecture, a column per value.

    ``values`` holds ``accuracy``, ``error``, ``latency:<device>`` for every device, ``madds`` and ``params``.
    ``columns`` are the objective columns searched (``latency`` expanded per device). Rows are sorted by the first
    cost objective, then by error. ``timings`` splits the wall time into the predictors' and the engine's own
    (``engine_s``; ``engine_cpu_s`` is the same in CPU time of the calling thread).
    """

    space: SearchSpace
    genomes: np.ndarray
    values: dict[str, np.ndarray]
    columns: list[str]
    budgets: dict[str, float]
    n_evaluations: int
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.genomes)

    @cached_property
    def archs(self) -> list[Arch]:
        return genomes_to_archs(self.space, self.genomes)

    @property
    def accuracy(self) -> np.ndarray:
        return self.values["accuracy"]

    @property
    def error(self) -> np.ndarray:
        return self.values["error"]

    @property
    def madds(self) -> np.ndarray:
        return self.values["madds"]

    @property
    def params(self) -> np.ndarray:
        return self.values["params"]

    def latency(self, device: str) -> np.ndarray:
        key = f"latency:{device}"
        if key not in self.values:
            raise SearchEngineError(f"no latency for device {device!r}; searched: "
                                    f"{[k.split(':', 1)[1] for k in self.values if k.startswith('latency:')]}")
        return self.values[key]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per architecture: ``arch`` (its string), ``genome``, and every value."""
        return [{"arch": str(a), "genome": [int(v) for v in g], **{k: float(v[i]) for k, v in self.values.items()}}
                for i, (a, g) in enumerate(zip(self.archs, self.genomes))]

    def best(self, budgets: Mapping[str, float] | None = None) -> int | None:
        """Index of the most accurate row within ``budgets`` (ms per device; default: the searched budgets), or
        None when no row meets them."""
        ok = np.ones(len(self), dtype=bool)
        for device, budget in (self.budgets if budgets is None else budgets).items():
            ok &= self.latency(device) <= budget
        if not ok.any():
            return None
        idx = np.nonzero(ok)[0]
        return int(idx[np.argmax(self.accuracy[idx])])


# ----- the search --------------------------------------------------------------------------------------------------
def _start_population(space: SearchSpace, initial: Any, population: int, rng: np.random.Generator,
                      feasible: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The given genomes or Archs (a random ``population`` of them when more), then the smallest subnet, then random
    Archs, drawn first among those within the budgets (up to 20 batches), to fill the population."""
    try:
        if initial is None or len(initial) == 0:
            start = np.zeros((0, GENOME_LENGTH), dtype=np.int64)
        elif isinstance(initial[0], Arch):
            start = space.canonical(np.stack([space.encode(a) for a in initial]))
        else:
            start = space.canonical(space.check_genomes(np.asarray(initial)))
    except ValueError as exc:
        raise SearchEngineError(f"initial population: {exc}") from None
    start = np.unique(start, axis=0) if len(start) else start
    if len(start) > population:
        return start[rng.permutation(len(start))[:population]]
    if len(start) < population:  # the smallest subnet meets any budget that anything meets
        smallest = space.canonical(np.stack([space.encode(space.smallest(w)) for w in space.widths]))
        start = np.unique(np.concatenate([start, smallest]), axis=0)[:population]
    need = population - len(start)
    fill: list[np.ndarray] = []
    spare: list[np.ndarray] = []
    for _ in range(20):
        if need <= 0:
            break
        batch = space.sample_genomes(rng, population)
        ok = feasible(batch)[0]
        fill.append(batch[ok][:need])
        spare.append(batch[~ok])
        need -= len(fill[-1])
    if need > 0 and spare:
        fill.append(np.concatenate(spare)[:need])
    return np.concatenate([start, *fill]) if fill else start


def search_front(space: SearchSpace, accuracy: Any, predictors: Mapping[str, LatencyPredictor],
                 budgets: Mapping[str, float] | None = None, objectives: Sequence[str] = ("error", "latency"),
                 population: int = 100, generations: int = 100, seed: int = 0, initial: Any = None, *,
                 takes: Takes | None = None, predicts: Literal["accuracy", "error"] | None = None,
                 n_classes: int | None = None, algorithm: Literal["fast", "pymoo"] = "fast",
                 mutation: float | None = 0.1, budget_share: float = 0.5) -> SearchResult:
    """Search ``space`` for the non-dominated front of ``objectives`` under ``budgets`` (max ms per device).

    ``accuracy``: a fitted surrogate or a callable on a batch of genomes or Archs (see :func:`accuracy_model` for
    ``takes`` and ``predicts``). ``predictors``: a latency predictor per device; every device's latency is in the
    result, ``latency`` in ``objectives`` makes each one an objective. ``generations`` counts the initial population
    as the first, as pymoo does: at most ``population * generations`` accuracy evaluations. ``initial``: genomes or
    Archs to start from (may be empty). ``n_classes`` sizes the classifier for latency, MAdds and params (default:
    the first latency table's). The same arguments and seed give the same result. The front is empty when no
    subnet the search met keeps the budgets.

    ``algorithm="fast"`` mutates by random reset with probability ``mutation`` per gene (``None``: NAT's polynomial
    mutation); ``"pymoo"`` is NAT's own pymoo path and ignores ``mutation`` and ``budget_share``.

    With budgets, ``"fast"`` aims at them: offspring that break a budget are redrawn before the accuracy predictor
    sees them (they could not survive), and ``budget_share`` of the population survives each generation as the most
    accurate subnets within the budgets, ahead of the front's non-dominated sorting (with 2+ objectives, error
    among them). A front spread over the whole latency range would otherwise spend few evaluations near the budget,
    where the best subnet is; the niche costs the front some accuracy far below the budget. ``budget_share=0``
    gives plain NSGA-II's evenly spread front.
    """
    budgets = dict(budgets or {})
    unknown = sorted(set(budgets) - set(predictors))
    if unknown:
        raise SearchEngineError(f"budgets given for {unknown}, which have no latency predictor; given: "
                                f"{sorted(predictors)}")
    if population < 2 or generations < 1:
        raise SearchEngineError(f"population must be >= 2 and generations >= 1; got {population}, {generations}")
    try:
        columns = objective_columns(objectives, list(predictors))
    except ValueError as exc:
        raise SearchEngineError(str(exc)) from None
    if not columns:
        raise SearchEngineError("no objectives to search: give at least one of error, latency, madds, params")
    if not 0.0 <= budget_share < 1.0:
        raise SearchEngineError(f"budget_share must be in [0, 1); got {budget_share}")
    if algorithm not in ("fast", "pymoo"):
        raise SearchEngineError(f"unknown algorithm {algorithm!r}; allowed: ['fast', 'pymoo']")
    t_start, c_start = time.perf_counter(), time.thread_time()
    model = accuracy_model(accuracy, space, takes, predicts)
    timed = {d: _TimedPredictor(p) for d, p in predictors.items()}
    if n_classes is None:
        n_classes = next(iter(predictors.values())).table.n_classes if predictors else 1000
    costs = CostCache(space, n_classes)
    rng = np.random.default_rng(seed)

    def feasible(genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each genome keeps every budget, and its latency per budgeted device (a column each)."""
        latency = np.zeros((len(genomes), len(budgets)))
        ok = np.ones(len(genomes), dtype=bool)
        for i, (d, b) in enumerate(budgets.items()):
            latency[:, i] = timed[d].predict_genomes(space, genomes, n_classes)
            ok &= latency[:, i] <= b
        return ok, latency

    start = _start_population(space, initial, population, rng, feasible)

    def evaluate(genomes: np.ndarray,
                 known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Objectives, total violation and every value; ``known``: the latencies ``feasible`` gave these genomes."""
        given = {} if known is None else {f"latency:{d}": known[:, i] for i, d in enumerate(budgets)}
        values = evaluate_columns(genomes, columns, model, timed, space, costs, given)
        F = np.column_stack([values[c] for c in columns])
        G = (np.column_stack([values[f"latency:{d}"] - b for d, b in budgets.items()]) if budgets
             else np.zeros((len(genomes), 0)))
        return F, np.maximum(G, 0.0).sum(axis=1), values

    if algorithm == "fast":
        elite = int(round(budget_share * population)) if budgets and "error" in columns and len(columns) > 1 else 0
        X, F, CV, values, n_eval = nsga2(evaluate, space, start, population, generations, rng, mutation, elite,
                                         columns.index("error") if elite else 0,
                                         feasible if budgets else None)
    else:
        problem = NATProblem(space, model, objectives, timed, budgets, costs)
        X, CV = pymoo_population(problem, space, start, population, generations, seed)
        F, CV, values = evaluate(X)
        n_eval = model.evaluations
    rank, _ = rank_and_crowding(F, CV, len(F), rng)
    front = np.nonzero((rank == 0) & (CV <= 0))[0]
    X, F = X[front], F[front]
    values = {k: v[front] for k, v in values.items()}
    keep = np.sort(np.unique(X, axis=0, return_index=True)[1])
    X, F = X[keep], F[keep]
    values = {k: v[keep] for k, v in values.items()}
    if "error" not in values:
        values["error"] = model.predict(X)
    if "madds" not in values:
        values["madds"], values["params"] = costs(X)
    values["accuracy"] = 1.0 - values["error"]
    order = np.lexsort((values["error"], F[:, next((i for i, c in enumerate(columns) if c != "error"), 0)]))
    ordered = {k: values[k][order] for k in ["accuracy", "error", *(f"latency:{d}" for d in predictors),
                                             "madds", "params"]}
    total, cpu = time.perf_counter() - t_start, time.thread_time() - c_start
    latency_s = sum(t.seconds for t in timed.values())
    latency_cpu = sum(t.cpu_seconds for t in timed.values())
    # the engine's own time, wall-clock and this thread's CPU (the latter is what contention on shared cores
    # disturbs least)
    timings = {"total_s": total, "accuracy_s": model.seconds, "latency_s": latency_s,
               "engine_s": total - model.seconds - latency_s, "total_cpu_s": cpu,
               "accuracy_cpu_s": model.cpu_seconds, "latency_cpu_s": latency_cpu,
               "engine_cpu_s": cpu - model.cpu_seconds - latency_cpu}
    return SearchResult(space, X[order], ordered, columns, budgets, int(n_eval), timings)


def pymoo_population(problem: NATProblem, space: SearchSpace, start: np.ndarray, population: int,
                     generations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """NAT's NSGA through pymoo (NSGA-II for up to 2 objectives, NSGA-III above), from ``start``: the final
    population's canonical genomes and constraint violations."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.optimize import minimize
    from pymoo.util.ref_dirs import get_reference_directions

    from natdeploy.search.problem import StageRepair

    ops = dict(sampling=start.astype(float), crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
               mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), repair=StageRepair(space, seed),
               eliminate_duplicates=True)
    if problem.n_obj <= 2:
        algo = NSGA2(pop_size=population, **ops)
    else:
        ref = get_reference_directions("energy", problem.n_obj, population, seed=seed)
        algo = NSGA3(ref_dirs=ref, pop_size=population, **ops)
    res = minimize(problem, algo, ("n_gen", generations), seed=seed, verbose=False)
    pop = res.pop
    X = space.canonical(np.rint(pop.get("X")))
    cv = pop.get("CV").ravel() if pop.get("CV") is not None else np.zeros(len(X))
    return X, cv
