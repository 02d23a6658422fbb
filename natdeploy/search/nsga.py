"""NSGA-II on NumPy arrays, for the integer genomes of a :class:`SearchSpace`.

Deb's NSGA-II with the operators NAT uses through pymoo (binary tournament on feasibility, rank and crowding; SBX
with eta 15 on 90% of the pairs, each variable with probability 1/2; polynomial mutation with eta 20, one variable
in n on average; rounding and :meth:`SearchSpace.repair`'s rule; offspring identical to a member or to each other
dropped and re-drawn), each step one array operation over the population instead of pymoo's per-individual
objects. Constraint handling is Deb's: feasible before infeasible, infeasible ranked by total violation.
Two options aim a constrained search at its constraints: a cheap feasibility check that offspring must pass before
they are evaluated, and an elite niche of the best feasible rows in one objective that survives ahead of the fronts.
All randomness comes from the Generator passed in.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from natdeploy.space import DEPTHS, MAX_DEPTH, N_CHOICES, N_STAGES, PATTERN_KEPT, SearchSpace, stage_patterns

# evaluate(genomes, known) -> (objectives, total violation, all values by column); ``known``: the values the
# feasibility check computed for these genomes (its rows), or None
Evaluate = Callable[[np.ndarray, "np.ndarray | None"], tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]
# feasible(genomes) -> (whether each passes, an (N, k) array of what the check computed, handed on to evaluate)
Feasible = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
_MATING_ROUNDS = 20  # mating rounds per generation to find offspring that are new to the population


def _domination(F: np.ndarray) -> np.ndarray:
    """D[i, j]: row i dominates row j (no worse in every objective, better in one). One objective at a time:
    elementwise operations on (n, n) arrays are far cheaper than reductions over a length-2 axis."""
    le = F[:, None, 0] <= F[None, :, 0]
    lt = F[:, None, 0] < F[None, :, 0]
    for j in range(1, F.shape[1]):
        le &= F[:, None, j] <= F[None, :, j]
        lt |= F[:, None, j] < F[None, :, j]
    return le & lt


def _matrix_fronts(F: np.ndarray, needed: int) -> np.ndarray:
    """Non-dominated front of each row, whole fronts until ``needed`` rows have one (-1 for the others), from the
    domination matrix: any number of objectives."""
    fronts = np.full(len(F), -1, dtype=np.int64)
    D = _domination(F)
    count = D.sum(axis=0)
    left = np.ones(len(F), dtype=bool)
    done = r = 0
    while done < needed:
        front = np.flatnonzero(left & (count == 0))
        fronts[front] = r
        left[front] = False
        count -= D[front].sum(axis=0)
        done += len(front)
        r += 1
    return fronts


def _sweep_fronts(F: np.ndarray, needed: int) -> np.ndarray:
    """:func:`_matrix_fronts` for one or two finite objectives, by a sweep in lexicographic order instead of the
    (n, n) matrix. In that order, a row is dominated exactly when a row before its run of identical rows has a second
    objective no larger. With one objective, the fronts are its distinct values in order."""
    n = len(F)
    if F.shape[1] == 1:  # the fronts are the distinct values, in order
        _, front, count = np.unique(F[:, 0], return_inverse=True, return_counts=True)
        last = int(np.searchsorted(np.cumsum(count), needed)) if needed > 0 else -1
        return np.where(front <= last, front, -1)
    fronts = np.full(n, -1, dtype=np.int64)
    second = F[:, 1]
    left = np.lexsort((second, F[:, 0]))  # the rows not yet in a front, in lexicographic order
    done = r = 0
    while done < needed:
        a, b = F[left, 0], second[left]
        idx = np.arange(len(left))
        run_start = np.ones(len(left), dtype=bool)
        run_start[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        start = np.maximum.accumulate(np.where(run_start, idx, 0))
        best_before = np.empty(len(left))  # the smallest second objective among the rows before each position
        best_before[0] = np.inf
        np.minimum.accumulate(b[:-1], out=best_before[1:])
        front = best_before[start] > b
        fronts[left[front]] = r
        left = left[~front]
        done += int(front.sum())
        r += 1
    return fronts


def _crowding(F: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Crowding distance of every row within its front (all fronts at once); a front's extremes get inf."""
    n, m = F.shape
    cd = np.zeros(n)
    if n == 0:
        return cd
    idx = np.arange(n)
    first, last = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    prev, nxt = np.empty(n), np.empty(n)
    for j in range(m):
        order = np.lexsort((F[:, j], rank))
        r, f = rank[order], F[order, j]
        np.not_equal(r[1:], r[:-1], out=first[1:])
        last[:-1] = first[1:]
        lo = np.maximum.accumulate(np.where(first, idx, 0))
        hi = np.minimum.accumulate(np.where(last, idx, n - 1)[::-1])[::-1]
        span = f[hi] - f[lo]
        prev[0], prev[1:] = f[0], f[:-1]
        nxt[-1], nxt[:-1] = f[-1], f[1:]
        gap = (nxt - prev) / np.where(span > 0, span, 1.0)
        gap[first | last] = np.inf
        cd[order] += gap
    return cd


def rank_and_crowding(F: np.ndarray, CV: np.ndarray, needed: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rank, crowding) of each row. Feasible rows are ranked by non-dominated sorting until ``needed`` rows are
    ranked (the rest get a rank past every front); infeasible rows follow, one rank each, by violation."""
    n = len(F)
    rank = np.full(n, n + 1, dtype=np.int64)
    feas = np.flatnonzero(CV <= 0)
    if len(feas):
        Ff = F[feas]
        sweep = Ff.shape[1] <= 2 and np.isfinite(Ff).all()  # the sweep orders by value: NaN has no place in it
        fronts = (_sweep_fronts if sweep else _matrix_fronts)(Ff, min(needed, len(feas)))
        ranked = fronts >= 0
        rank[feas[ranked]] = fronts[ranked]
    infeas = np.nonzero(CV > 0)[0]
    if len(infeas):
        order = infeas[np.lexsort((rng.random(len(infeas)), CV[infeas]))]
        rank[order] = n + 2 + np.arange(len(order))
    return rank, _crowding(F, rank)


def _survive(F: np.ndarray, CV: np.ndarray, n: int, rng: np.random.Generator, elite: int = 0,
             column: int = 0) -> np.ndarray:
    """Indices of the ``n`` survivors, best first: whole fronts, the last one cut by crowding, ties at random.
    Infeasible rows rank after every feasible one, by violation, so this one order also decides tournaments.

    ``elite`` > 0: the ``elite`` rows best in objective ``column`` among the least violating (feasible first)
    survive first, ahead of the fronts of the other rows (a constrained single-objective niche)."""
    if elite <= 0:
        rank, cd = rank_and_crowding(F, CV, n, rng)
        return np.lexsort((rng.random(len(F)), -cd, rank))[:n]
    elite = min(elite, n, len(F))
    best = np.lexsort((rng.random(len(F)), F[:, column], CV))[:elite]
    others = np.ones(len(F), dtype=bool)
    others[best] = False
    rest = np.nonzero(others)[0]
    return np.concatenate([best, rest[_survive(F[rest], CV[rest], n - elite, rng)]])


def _tournament(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` binary-tournament winners among a population sorted best first (as :func:`_survive` leaves it): the
    better of two is the one with the lower index (lower violation, then rank, then larger crowding)."""
    return np.minimum(rng.integers(0, n, k), rng.integers(0, n, k))


def _sbx(p1: np.ndarray, p2: np.ndarray, xl: np.ndarray, xu: np.ndarray, rng: np.random.Generator,
         eta: float = 15.0, prob: float = 0.9, prob_var: float = 0.5) -> np.ndarray:
    """Bounded simulated binary crossover (Deb & Agrawal) of parent rows ``p1``, ``p2`` (floats): the children of
    the pairs, the first children then the second ones; the spread factors are computed only where a variable
    crosses over."""
    n, m = p1.shape
    do = (rng.random((n, 1)) < prob) & (rng.random((n, m)) < prob_var) & (np.abs(p1 - p2) > 1e-14)
    at = np.flatnonzero(do)  # flat indices (np.nonzero of a 2-D mask costs several times more)
    cols = at % m
    a, b = np.take(p1, at), np.take(p2, at)
    y1, y2 = np.minimum(a, b), np.maximum(a, b)
    lo, hi = xl[cols], xu[cols]
    delta = y2 - y1
    u = rng.random(len(at))
    k = len(at)
    # both children's spread factors in one pass: the first k entries for c1 (towards lo), the next k for c2
    u2, delta2 = np.concatenate([u, u]), np.concatenate([delta, delta])
    beta = 1.0 + 2.0 * np.concatenate([y1 - lo, hi - y2]) / delta2
    alpha = 2.0 - np.power(beta, -(eta + 1.0))
    ua = u2 * alpha
    betaq = np.where(u2 <= 1.0 / alpha, ua, 1.0 / np.maximum(2.0 - ua, 1e-300)) ** (1.0 / (eta + 1.0))
    spread = betaq * delta2
    mid = y1 + y2
    c1 = np.clip(0.5 * (mid - spread[:k]), lo, hi)
    c2 = np.clip(0.5 * (mid + spread[k:]), lo, hi)
    swap = rng.random(len(at)) < 0.5
    kids = np.concatenate([p1, p2])
    np.put(kids, at, np.where(swap, c2, c1))
    np.put(kids, at + p1.size, np.where(swap, c1, c2))
    return kids


def _pm(X: np.ndarray, xl: np.ndarray, xu: np.ndarray, rng: np.random.Generator, eta: float = 20.0) -> np.ndarray:
    """Bounded polynomial mutation (Deb), each variable with probability 1 / n_var (variables with a single value
    never move)."""
    n, m = X.shape
    at = np.flatnonzero((rng.random((n, m)) < 1.0 / m) & (xu > xl))
    cols = at % m
    x, lo, span = np.take(X, at), xl[cols], (xu - xl)[cols]
    u = rng.random(len(at))
    d1, d2 = (x - lo) / span, (lo + span - x) / span
    power = 1.0 / (eta + 1.0)
    low = np.power(2.0 * u + (1.0 - 2.0 * u) * np.power(1.0 - d1, eta + 1.0), power) - 1.0
    high = 1.0 - np.power(2.0 * (1.0 - u) + 2.0 * (u - 0.5) * np.power(1.0 - d2, eta + 1.0), power)
    out = X.copy()
    np.put(out, at, np.clip(x + np.where(u <= 0.5, low, high) * span, lo, lo + span))
    return out


def _reset(X: np.ndarray, xl: np.ndarray, xu: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """Random-reset mutation: each variable, with probability ``prob``, takes a uniformly random value in bounds
    (the categorical counterpart of polynomial mutation, which after rounding rarely moves a small integer range)."""
    at = np.flatnonzero(rng.random(X.shape) < prob)
    cols = at % X.shape[1]
    out = X.copy()
    np.put(out, at, np.floor(xl[cols] + rng.random(len(at)) * (xu[cols] - xl[cols] + 1.0)))
    return out


def _repair(space: SearchSpace, X: np.ndarray, rng: np.random.Generator, clip: bool = True) -> np.ndarray:
    """:meth:`SearchSpace.repair`'s rule (round, clip, give every stage at least two blocks by filling random empty
    slots with random choices, canonicalise) drawn for the whole batch at once; NAT's loop keeps the row-by-row
    original, whose random stream its runs were made with. ``clip=False`` skips clipping, for genes already within
    their bounds."""
    x = np.rint(X)
    if clip:
        xl, xu = _bounds(space)
        np.maximum(x, xl, out=x)
        np.minimum(x, xu, out=x)
    g = x.astype(np.int64)
    blocks = g[:, 2:].reshape(len(g), N_STAGES, MAX_DEPTH)
    patterns = stage_patterns(blocks)
    need = DEPTHS[0] - PATTERN_KEPT[patterns]
    rows = np.flatnonzero((need > 0).view(np.uint8) @ np.ones(N_STAGES, dtype=np.uint8))
    if len(rows):
        # each slot of these rows gets a random key; in each stage short of blocks, the ``need`` empty slots with
        # the lowest keys (in a stable order) are filled, in the order of the slots
        sub = blocks[rows]
        draws = rng.random(sub.shape).reshape(-1, MAX_DEPTH)
        stage_need = need[rows].reshape(-1)
        short = np.flatnonzero(stage_need > 0)  # stages of ``sub``, flat
        slots = sub.reshape(-1, MAX_DEPTH)
        keys = np.where(slots[short] == 0, draws[short], np.inf)
        lowest = np.argsort(keys, axis=1, kind="stable")
        taken = np.arange(MAX_DEPTH) < stage_need[short][:, None]
        at = np.sort((MAX_DEPTH * short[:, None] + lowest)[taken])
        np.put(sub, at, rng.integers(1, N_CHOICES + 1, len(at)))
        g[rows, 2:] = sub.reshape(len(rows), -1)
        patterns[rows] = stage_patterns(sub)
    space.order_stages(g, patterns)
    return g


def _keys(X: np.ndarray, places: np.ndarray) -> np.ndarray:
    """One exact complex key per genome: the mixed-radix value of each half of the genes as real and imaginary
    parts (sums of non-negative integers below 2**53, so exact in floats in any order); equal keys mean equal
    genomes. ``places``: :func:`_radix`'s."""
    return np.ascontiguousarray(X @ places).view(np.complex128)[:, 0]


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """The index of each distinct key's first occurrence, in increasing order (what ``np.unique(keys,
    return_index=True)`` gives, sorted). Keys are sorted by one float that mixes both parts: equal keys mix
    equally, and only the keys whose mix another key shares (duplicates, or a rare clash) are compared exactly."""
    mixed = keys.real + 0.6180339887498949 * keys.imag
    order = np.argsort(mixed)
    mixed = mixed[order]
    tie = mixed[1:] == mixed[:-1]
    shared = np.zeros(len(keys), dtype=bool)  # positions, in mix order, whose mix another key shares
    shared[1:] = tie
    shared[:-1] |= tie
    alone = order[~shared]
    if len(alone) < len(keys):
        rest = np.sort(order[shared])
        _, first = np.unique(keys[rest], return_index=True)
        alone = np.concatenate([alone, rest[first]])
    return np.sort(alone)


@functools.lru_cache(maxsize=16)
def _bounds(space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    """The genes' lower and upper bounds as (read-only) floats, as the operators take them."""
    xl, xu = space.lower_bounds.astype(float), space.upper_bounds.astype(float)
    xl.setflags(write=False)
    xu.setflags(write=False)
    return xl, xu


@functools.lru_cache(maxsize=16)
def _radix(space: SearchSpace) -> np.ndarray:
    """(n_genes, 2): each gene's place value in the mixed-radix number of its half of the genome (the first half in
    column 0, the second in column 1, zero elsewhere)."""
    size = space.upper_bounds.astype(float) + 1.0
    half = (len(size) + 1) // 2
    places = np.zeros((len(size), 2))
    for col, part in enumerate((slice(0, half), slice(half, len(size)))):
        places[part, col] = np.concatenate([[1.0], np.cumprod(size[part][:-1])])
        if np.prod(size[part]) >= 2.0 ** 53:
            raise ValueError("genomes too wide for exact duplicate keys")
    places.setflags(write=False)
    return places


def _offspring(X: np.ndarray, n: int, space: SearchSpace, rng: np.random.Generator, mutation: float | None,
               feasible: Feasible | None = None,
               share: list[float] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to ``n`` repaired offspring of the population ``X`` (sorted best first), none equal to a member or to
    another offspring, and what ``feasible`` computed for them (None without it). Each round mates enough pairs for
    the share of usable offspring the last round had.

    ``feasible(genomes)`` (a cheap check, such as latency within the budgets): offspring it rejects are kept only
    to fill the batch when the rounds run out, so the costly evaluation is spent on subnets that can survive.
    ``share``: a one-item list carrying the usable share from one generation to the next (updated in place), so
    that a tight budget costs about one mating round per generation rather than several."""
    xl, xu = _bounds(space)
    places = _radix(space)
    seen = _keys(X, places)
    Xf = X.astype(float)
    out: list[np.ndarray] = []
    out_known: list[np.ndarray] = []
    spare: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (offspring, known, rejected), taken if need be
    found = 0
    share = share if share is not None else [0.5]
    for _ in range(_MATING_ROUNDS):
        pairs = min(8 * n, int(np.ceil((n - found) / (2 * share[0]))))
        p1 = Xf[_tournament(len(X), pairs, rng)]
        p2 = Xf[_tournament(len(X), pairs, rng)]
        kids = _sbx(p1, p2, xl, xu, rng)
        # the operators keep every gene within its bounds, and so does rounding: no clipping needed
        kids = _repair(space, _pm(kids, xl, xu, rng) if mutation is None else _reset(kids, xl, xu, rng, mutation),
                       rng, clip=False)
        keys = _keys(kids, places)
        # a kid is new when its key first occurs among the population's and the kids' keys
        first = _first_occurrences(np.concatenate([seen, keys]))
        new = first[first >= len(seen)] - len(seen)
        seen = np.concatenate([seen, keys[new]])
        fresh = kids[new]
        if feasible is not None and len(fresh):
            ok, known = feasible(fresh)
            spare.append((fresh, known, ~ok))
            fresh = fresh[ok]
            out_known.append(known[ok])
        out.append(fresh)
        found += len(fresh)
        if found >= n:
            break
        share[0] = max(len(fresh) / len(kids), 1.0 / 16)
    if found < n and spare:
        out.append(np.concatenate([f[rejected] for f, _, rejected in spare])[:n - found])
        out_known.append(np.concatenate([k[rejected] for _, k, rejected in spare])[:n - found])
    kids = np.concatenate(out)[:n] if out else np.zeros((0, X.shape[1]), dtype=np.int64)
    return kids, np.concatenate(out_known)[:n] if out_known else None


def nsga2(evaluate: Evaluate, space: SearchSpace, start: np.ndarray, population: int, generations: int,
          rng: np.random.Generator, mutation: float | None = None, elite: int = 0, elite_column: int = 0,
          feasible: Feasible | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], int]:
    """Run NSGA-II from the canonical genomes ``start`` for ``generations`` (the first being ``start`` itself).
    ``mutation``: None for polynomial mutation, else the per-variable probability of random-reset mutation.
    ``elite``: rows kept each generation for being best in objective ``elite_column`` among the least violating
    (see :func:`_survive`). ``feasible``: a cheap check offspring must pass before they are evaluated (see
    :func:`_offspring`).
    ``evaluate(genomes, known)`` returns (objectives, total violation, all values by column); ``known`` is what
    ``feasible`` computed for the offspring (None for ``start``). Returns the final
    population's genomes, objectives, violations and values, and the number of evaluations."""
    X = np.unique(np.asarray(start, dtype=np.int64).reshape(-1, len(space.lower_bounds)), axis=0)
    X = X[rng.permutation(len(X))]
    if not len(X):
        raise ValueError("NSGA-II needs a non-empty start population")
    F, CV, V = evaluate(X, None)
    n_eval = len(X)
    keep = _survive(F, CV, population, rng, elite, elite_column)
    X, F, CV, V = X[keep], F[keep], CV[keep], {k: v[keep] for k, v in V.items()}
    share = [0.5] if feasible is not None else None  # carried over generations when offspring are filtered
    for _ in range(generations - 1):
        kids, known = _offspring(X, population, space, rng, mutation, feasible, share)
        if not len(kids):
            break  # every offspring the operators can make is already in the population
        Fk, CVk, Vk = evaluate(kids, known)
        n_eval += len(kids)
        X, F, CV = np.concatenate([X, kids]), np.concatenate([F, Fk]), np.concatenate([CV, CVk])
        V = {k: np.concatenate([V[k], Vk[k]]) for k in V}
        keep = _survive(F, CV, population, rng, elite, elite_column)
        X, F, CV, V = X[keep], F[keep], CV[keep], {k: v[keep] for k, v in V.items()}
    return X, F, CV, V, n_eval
