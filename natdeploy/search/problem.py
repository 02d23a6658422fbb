"""The pymoo problem NAT optimises: surrogate error, predicted latency per device, MAdds, params; latency budgets
as real inequality constraints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair

from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.space import (GENOME_LENGTH, MAX_DEPTH, N_BLOCKS, N_CHOICES, N_STAGES, Arch, SearchSpace,
                             choice_kernel_expand, layer_cost, layer_plan)

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
    """MAdds and params of a batch of genomes, by array indexing into per-(resolution, width, block, choice) costs
    built once from :func:`natdeploy.space.layer_plan` (a subnet's cost is the sum of its layers' costs, and a
    block's layer depends only on the resolution, width, slot and choice, never on the other blocks)."""

    space: SearchSpace
    n_classes: int

    def __post_init__(self) -> None:
        n_r, n_w = len(self.space.resolutions), len(self.space.widths)
        self._block = np.zeros((2, n_r, n_w, N_BLOCKS, N_CHOICES), dtype=np.int64)
        self._fixed = np.zeros((2, n_r, n_w), dtype=np.int64)
        for ri, r in enumerate(self.space.resolutions):
            for wi, w in enumerate(self.space.widths):
                for c in range(N_CHOICES):
                    k, e = choice_kernel_expand(c)
                    arch = Arch(ks=[int(k)] * N_BLOCKS, e=[int(e)] * N_BLOCKS, d=[MAX_DEPTH] * N_STAGES, r=r, w=w)
                    b = 0
                    for layer in layer_plan(arch, self.n_classes):
                        cost = layer_cost(layer)
                        if layer.kind == "mbconv":
                            self._block[:, ri, wi, b, c] = cost
                            b += 1
                        elif c == 0:
                            self._fixed[:, ri, wi] += cost

    def __call__(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = np.asarray(genomes, dtype=np.int64).reshape(-1, GENOME_LENGTH)
        if not len(g):
            return np.zeros(0), np.zeros(0)
        ri, wi = g[:, 0], g[:, 1]
        choice, active = self.space.block_choices(g)
        per_block = self._block[:, ri[:, None], wi[:, None], np.arange(N_BLOCKS)[None, :], choice]
        total = self._fixed[:, ri, wi] + (per_block * active).sum(axis=2)
        return total[0].astype(float), total[1].astype(float)


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
                     predictors: dict[str, LatencyPredictor], space: SearchSpace, costs: CostCache,
                     known: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Objective values (and every device's latency, for constraints) of a batch of canonical genomes. ``known``:
    values already computed for these genomes (such as ``latency:<device>``), taken as they are."""
    values: dict[str, np.ndarray] = dict(known or {})
    for d, p in predictors.items():
        if f"latency:{d}" not in values:
            values[f"latency:{d}"] = p.predict_genomes(space, genomes, costs.n_classes)
    if "error" in columns:
        values["error"] = surrogate.predict(genomes.astype(float))
    if "madds" in columns or "params" in columns:
        values["madds"], values["params"] = costs(genomes)
    return values
