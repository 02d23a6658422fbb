"""NSGA-II on NumPy arrays, for the integer genomes of a :class:`SearchSpace`.

Deb's NSGA-II with the operators NAT uses through pymoo (binary tournament on feasibility, rank and crowding; SBX
with eta 15 on 90% of the pairs, each variable with probability 1/2; polynomial mutation with eta 20, one variable
in n on average; rounding and :meth:`SearchSpace.repair`; offspring identical to a member or to each other
dropped and re-drawn), each step one array operation over the population instead of pymoo's per-individual
objects. Constraint handling is Deb's: feasible before infeasible, infeasible ranked by total violation.
All randomness comes from the Generator passed in.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from natdeploy.space import SearchSpace

Evaluate = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]
_MATING_ROUNDS = 20  # mating rounds per generation to find offspring that are new to the population


def _domination(F: np.ndarray) -> np.ndarray:
    """D[i, j]: row i dominates row j (no worse in every objective, better in one)."""
    le = (F[:, None, :] <= F[None, :, :]).all(axis=2)
    lt = (F[:, None, :] < F[None, :, :]).any(axis=2)
    return le & lt


def _crowding(F: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Crowding distance of every row within its front (all fronts at once); a front's extremes get inf."""
    n, m = F.shape
    cd = np.zeros(n)
    if n == 0:
        return cd
    idx = np.arange(n)
    for j in range(m):
        order = np.lexsort((F[:, j], rank))
        r, f = rank[order], F[order, j]
        first = np.r_[True, r[1:] != r[:-1]]
        last = np.r_[r[1:] != r[:-1], True]
        lo = np.maximum.accumulate(np.where(first, idx, 0))
        hi = np.minimum.accumulate(np.where(last, idx, n - 1)[::-1])[::-1]
        span = f[hi] - f[lo]
        gap = (np.r_[f[1:], f[-1]] - np.r_[f[0], f[:-1]]) / np.where(span > 0, span, 1.0)
        gap[first | last] = np.inf
        cd[order] += gap
    return cd


def rank_and_crowding(F: np.ndarray, CV: np.ndarray, needed: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rank, crowding) of each row. Feasible rows are ranked by non-dominated sorting until ``needed`` rows are
    ranked (the rest get a rank past every front); infeasible rows follow, one rank each, by violation."""
    n = len(F)
    rank = np.full(n, n + 1, dtype=np.int64)
    feas = np.nonzero(CV <= 0)[0]
    r = 0
    if len(feas):
        D = _domination(F[feas])
        count = D.sum(axis=0)
        left = np.ones(len(feas), dtype=bool)
        done = 0
        while done < min(needed, len(feas)):
            front = np.nonzero(left & (count == 0))[0]
            rank[feas[front]] = r
            left[front] = False
            count -= D[front].sum(axis=0)
            done += len(front)
            r += 1
    infeas = np.nonzero(CV > 0)[0]
    if len(infeas):
        order = infeas[np.lexsort((rng.random(len(infeas)), CV[infeas]))]
        rank[order] = n + 2 + np.arange(len(order))
    return rank, _crowding(F, rank)


def _survive(F: np.ndarray, CV: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Indices of the ``n`` survivors (whole fronts, the last one cut by crowding), with their rank and crowding."""
    rank, cd = rank_and_crowding(F, CV, n, rng)
    keep = np.lexsort((rng.random(len(F)), -cd, rank))[:n]
    return keep, rank[keep], cd[keep]


def _tournament(rank: np.ndarray, cd: np.ndarray, CV: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` binary-tournament winners: lower violation, then lower rank, then larger crowding, else a coin."""
    a, b = rng.integers(0, len(rank), k), rng.integers(0, len(rank), k)
    key_a = np.stack([CV[a], rank[a], -cd[a]])
    key_b = np.stack([CV[b], rank[b], -cd[b]])
    with np.errstate(invalid="ignore"):
        diff = np.where(key_a == key_b, 0.0, np.sign(key_a - key_b))
    # the first key that differs decides
    first = np.argmax(diff != 0, axis=0)
    decided = diff[first, np.arange(k)]
    coin = rng.random(k) < 0.5
    return np.where((decided < 0) | ((decided == 0) & coin), a, b)


def _sbx(p1: np.ndarray, p2: np.ndarray, xl: np.ndarray, xu: np.ndarray, rng: np.random.Generator,
         eta: float = 15.0, prob: float = 0.9, prob_var: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Bounded simulated binary crossover (Deb & Agrawal) of parent rows ``p1``, ``p2`` (floats)."""
    n, m = p1.shape
    y1, y2 = np.minimum(p1, p2), np.maximum(p1, p2)
    delta = y2 - y1
    do = ((rng.random((n, 1)) < prob) & (rng.random((n, m)) < prob_var) & (delta > 1e-14) & (xu > xl))
    safe = np.where(delta > 1e-14, delta, 1.0)
    u = rng.random((n, m))

    def betaq(beta: np.ndarray) -> np.ndarray:
        alpha = 2.0 - np.power(beta, -(eta + 1.0))
        ua = u * alpha
        return np.where(u <= 1.0 / alpha, np.power(ua, 1.0 / (eta + 1.0)),
                        np.power(1.0 / np.maximum(2.0 - ua, 1e-300), 1.0 / (eta + 1.0)))

    c1 = 0.5 * (y1 + y2 - betaq(1.0 + 2.0 * (y1 - xl) / safe) * delta)
    c2 = 0.5 * (y1 + y2 + betaq(1.0 + 2.0 * (xu - y2) / safe) * delta)
    swap = rng.random((n, m)) < 0.5
    c1, c2 = np.where(swap, c2, c1), np.where(swap, c1, c2)
    c1, c2 = np.clip(c1, xl, xu), np.clip(c2, xl, xu)
    return np.where(do, c1, p1), np.where(do, c2, p2)


def _pm(X: np.ndarray, xl: np.ndarray, xu: np.ndarray, rng: np.random.Generator, eta: float = 20.0) -> np.ndarray:
    """Bounded polynomial mutation (Deb), each variable with probability 1 / n_var."""
    n, m = X.shape
    span = np.where(xu > xl, xu - xl, 1.0)
    do = (rng.random((n, m)) < 1.0 / m) & (xu > xl)
    u = rng.random((n, m))
    d1, d2 = (X - xl) / span, (xu - X) / span
    power = 1.0 / (eta + 1.0)
    low = np.power(2.0 * u + (1.0 - 2.0 * u) * np.power(1.0 - d1, eta + 1.0), power) - 1.0
    high = 1.0 - np.power(2.0 * (1.0 - u) + 2.0 * (u - 0.5) * np.power(1.0 - d2, eta + 1.0), power)
    moved = np.clip(X + np.where(u <= 0.5, low, high) * span, xl, xu)
    return np.where(do, moved, X)


def _keys(X: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(X, dtype=np.int64)]


def _offspring(X: np.ndarray, rank: np.ndarray, cd: np.ndarray, CV: np.ndarray, n: int, space: SearchSpace,
               rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` repaired offspring, none equal to a member of ``X`` or to another offspring."""
    xl, xu = space.lower_bounds.astype(float), space.upper_bounds.astype(float)
    seen = set(_keys(X))
    out: list[np.ndarray] = []
    for _ in range(_MATING_ROUNDS):
        pairs = (n - len(out) + 1) // 2
        p1 = X[_tournament(rank, cd, CV, pairs, rng)].astype(float)
        p2 = X[_tournament(rank, cd, CV, pairs, rng)].astype(float)
        c1, c2 = _sbx(p1, p2, xl, xu, rng)
        kids = space.repair(_pm(np.concatenate([c1, c2]), xl, xu, rng), rng)
        for row, key in zip(kids, _keys(kids)):
            if key not in seen:
                seen.add(key)
                out.append(row)
        if len(out) >= n:
            break
    return np.array(out[:n], dtype=np.int64).reshape(-1, X.shape[1])


def nsga2(evaluate: Evaluate, space: SearchSpace, start: np.ndarray, population: int, generations: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], int]:
    """Run NSGA-II from the canonical genomes ``start`` for ``generations`` (the first being ``start`` itself).
    ``evaluate(genomes)`` returns (objectives, total violation, all values by column). Returns the final
    population's genomes, objectives, violations and values, and the number of evaluations."""
    X = np.unique(np.asarray(start, dtype=np.int64).reshape(-1, len(space.lower_bounds)), axis=0)
    X = X[rng.permutation(len(X))]
    if not len(X):
        raise ValueError("NSGA-II needs a non-empty start population")
    F, CV, V = evaluate(X)
    n_eval = len(X)
    keep, rank, cd = _survive(F, CV, population, rng)
    X, F, CV, V = X[keep], F[keep], CV[keep], {k: v[keep] for k, v in V.items()}
    for _ in range(generations - 1):
        kids = _offspring(X, rank, cd, CV, population, space, rng)
        if not len(kids):
            break  # every offspring the operators can make is already in the population
        Fk, CVk, Vk = evaluate(kids)
        n_eval += len(kids)
        X, F, CV = np.concatenate([X, kids]), np.concatenate([F, Fk]), np.concatenate([CV, CVk])
        V = {k: np.concatenate([V[k], Vk[k]]) for k in V}
        keep, rank, cd = _survive(F, CV, population, rng)
        X, F, CV, V = X[keep], F[keep], CV[keep], {k: v[keep] for k, v in V.items()}
    return X, F, CV, V, n_eval
