"""The pymoo problem NAT optimises: surrogate error, predicted latency per device, MAdds, params; latency budgets
as real inequality constraints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair

from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.space import SearchSpace, madds, params

OBJECTIVES = ("error", "latency", "madds", "params")


canonical = SearchSpace.canonical  # the search's name for it (natdeploy.search.nat and the tests import it)


class StageRepair(Repair):
    """Round to integers, clip to bounds, give every stage at least two blocks, and canonicalise the genome."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        super().__init__()
        self.space = space
        self.rng = np.random.default_rng(seed)

    def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.space.repair(X, self.rng)


def repair_genomes(space: SearchSpace, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:meth:`SearchSpace.repair` (the name the search uses)."""
    return space.repair(X, rng)


@dataclass
class CostCache:
    """MAdds and params per genome, memoised (the search revisits genomes often)."""

    space: SearchSpace
    n_classes: int

    def __post_init__(self) -> None:
        self._cache: dict[tuple, tuple[int, int]] = {}

    def __call__(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for row in genomes:
            key = tuple(int(v) for v in row)
            if key not in self._cache:
                arch = self.space.decode(row)
                self._cache[key] = (madds(arch, self.n_classes), params(arch, self.n_classes))
            out.append(self._cache[key])
        arr = np.array(out, dtype=float).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]


class NATProblem(Problem):
    """Minimise the chosen objectives over NAT genomes; ``latency[d] <= budget[d]`` for each budgeted device."""

    def __init__(self, space: SearchSpace, surrogate: Any, objectives: Sequence[str],
                 predictors: dict[str, LatencyPredictor], budgets: dict[str, float], costs: CostCache) -> None:
        self.space, self.surrogate, self.objectives = space, surrogate, list(objectives)
        self.predictors, self.budgets, self.costs = predictors, budgets, costs
        self.columns = objective_columns(self.objectives, list(predictors))
        super().__init__(n_var=len(space.lower_bounds), n_obj=len(self.columns), n_ieq_constr=len(budgets),
                         xl=space.lower_bounds, xu=space.upper_bounds, vtype=int)

    def _evaluate(self, X: np.ndarray, out: dict, *args: Any, **kwargs: Any) -> None:
        g = self.space.canonical(np.rint(X))
        values = evaluate_columns(g, self.columns, self.surrogate, self.predictors, self.space, self.costs)
        out["F"] = np.column_stack([values[c] for c in self.columns])
        if self.budgets:
            out["G"] = np.column_stack([values[f"latency:{d}"] - b for d, b in self.budgets.items()])


def objective_columns(objectives: Sequence[str], devices: Sequence[str]) -> list[str]:
    """Expand ``latency`` into one column per device: ``["error", "latency:cpu", "madds"]``."""
    cols = []
    for obj in objectives:
        if obj not in OBJECTIVES:
            raise ValueError(f"unknown objective {obj!r}; allowed: {list(OBJECTIVES)}")
        cols += [f"latency:{d}" for d in devices] if obj == "latency" else [obj]
    return cols


def evaluate_columns(genomes: np.ndarray, columns: Sequence[str], surrogate: Any,
                     predictors: dict[str, LatencyPredictor], space: SearchSpace,
                     costs: CostCache) -> dict[str, np.ndarray]:
    """Objective values (and every device's latency, for constraints) of a batch of canonical genomes."""
    values: dict[str, np.ndarray] = {}
    for d, p in predictors.items():
        values[f"latency:{d}"] = p.predict_genomes(space, genomes, costs.n_classes)
    if "error" in columns:
        values["error"] = surrogate.predict(genomes.astype(float))
    if "madds" in columns or "params" in columns:
        values["madds"], values["params"] = costs(genomes)
    return values
