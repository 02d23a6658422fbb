"""Timing with warm-up and robust statistics: what was measured, never a model of it (that is
natdeploy.latency.speed)."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Measurement:
    """A latency measurement and its statistics.

    natdeploy's local tables use the 10th percentile (``p10_ms``): on a shared machine, interference only ever adds
    time, and a low percentile of many runs repeats far better than the median or mean.
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    count: int
    warmup: int
    p10_ms: float | None = None
    min_ms: float | None = None
    # p10 of the anchor subnet timed in the same interleaved batch (time_interleaved), so that measurements taken
    # at different machine speeds can be brought to one speed (natdeploy.latency.speed).
    anchor_ms: float | None = None
    # The median over rounds of (this item's fastest run in the round) / (the mean of the anchor's fastest runs
    # in its visits just before and after): the item's latency in units of the anchor's.
    anchor_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # A statistic the runtime did not report is NaN in memory and null in JSON (strict JSON has no NaN).
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        opt = {k: (None if d.get(k) is None else float(d[k]))
               for k in ("p10_ms", "min_ms", "anchor_ms", "anchor_ratio")}
        return cls(median_ms=math.nan if d.get("median_ms") is None else float(d["median_ms"]), mean_ms=float(d["mean_ms"]), std_ms=float(d["std_ms"]),
                   count=int(d["count"]), warmup=int(d["warmup"]), **opt)

    def value(self, statistic: str) -> float:
        """The named statistic (``p10``, ``median``, ``mean``, ``min``) in ms."""
        v = getattr(self, f"{statistic}_ms", None)
        if v is None:
            raise ValueError(f"this measurement has no {statistic!r} statistic")
        return v

    @classmethod
    def combine(cls, parts: Sequence["Measurement"]) -> "Measurement":
        """One measurement from independent measurements of the same model (other batches, fresh sessions):
        the median of each statistic (the minimum of minima), counts added, the spread pooled."""
        if not parts:
            raise ValueError("nothing to combine")
        if len(parts) == 1:
            return parts[0]

        def med(name: str) -> float | None:
            vals = [getattr(m, name) for m in parts]
            return None if any(v is None for v in vals) else statistics.median(vals)

        means = [m.mean_ms for m in parts]
        var = statistics.fmean(m.std_ms ** 2 for m in parts) + statistics.pvariance(means)
        mins = [m.min_ms for m in parts]
        return cls(median_ms=statistics.median(m.median_ms for m in parts), mean_ms=statistics.fmean(means),
                   std_ms=math.sqrt(var), count=sum(m.count for m in parts), warmup=parts[0].warmup,
                   p10_ms=med("p10_ms"), min_ms=None if None in mins else min(mins), anchor_ms=med("anchor_ms"),
                   anchor_ratio=med("anchor_ratio"))

    @classmethod
    def from_samples(cls, samples_ms: list[float], warmup: int) -> "Measurement":
        if not samples_ms:
            raise ValueError("a measurement needs at least one timed run")
        ordered = sorted(samples_ms)
        return cls(median_ms=statistics.median(ordered), mean_ms=statistics.fmean(ordered),
                   std_ms=statistics.pstdev(ordered), count=len(ordered), warmup=warmup,
                   p10_ms=float(np.percentile(ordered, 10)), min_ms=ordered[0])


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_callable(fn: Callable[[], Any], warmup: int, runs: int, rounds: int = 1,
                  min_span_s: float = 0.0) -> Measurement:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed; wall-clock milliseconds per call. With
    ``rounds`` > 1 the timed runs are spread over at least ``min_span_s`` seconds (see :func:`time_interleaved`)."""
    return time_interleaved([fn], warmup, runs, rounds, min_span_s)[0]


def time_interleaved(fns: Sequence[Callable[[], Any]], warmup: int, runs: int, rounds: int = 1,
                     min_span_s: float = 0.0, anchor: Callable[[], Any] | Sequence[Callable[[], Any]] | None = None,
                     anchor_every_s: float = 0.02) -> list[Measurement]:
    """Time several callables in ``rounds`` round-robin rounds (each callable runs ``runs / rounds`` times per
    round; at most one round per run), sleeping between rounds so that they span at least ``min_span_s`` seconds.

    Why: a machine whose speed wanders within seconds can put a whole back-to-back window of one model into a
    slow stretch. Sampling every item at many moments spread over seconds gives each item the same mix of fast and
    slow moments, and their low percentile then repeats much better (natdeploy.latency.speed explains the whole
    scheme; benchmarks/RESULTS.md has the numbers).

    With an ``anchor`` (a fixed reference workload), the anchor is also timed at the start of every round and
    again whenever ``anchor_every_s`` has passed since its last visit, and at the end of the round. Each item's
    fastest run in a round is divided by the mean of the anchor's fastest runs in the visits just before and
    after it; the median of these ratios over the rounds is ``anchor_ratio``, and the anchor's own p10 over the
    batch is ``anchor_ms``.

    ``anchor`` may be several sessions of the same anchor model: each visit then times the next one in turn, so
    that the ratios are to their average (one session's offset would otherwise shift every ratio taken in the
    process).
    """
    if rounds < 1 or runs < 1:
        raise ValueError(f"need rounds >= 1 and runs >= 1, got rounds={rounds}, runs={runs}")
    rounds = min(rounds, runs)
    anchors = ([] if anchor is None else [anchor] if callable(anchor) else list(anchor))
    for fn in (*fns, *anchors):
        for _ in range(warmup):
            fn()
    per_round = [runs // rounds + (1 if k < runs % rounds else 0) for k in range(rounds)]
    samples: list[list[float]] = [[] for _ in fns]
    anchor_samples: list[float] = []
    ratios: list[list[float]] = [[] for _ in fns]

    def visit_anchor(n: int, k: int, visits: list[float]) -> None:
        # The sessions take turns visit by visit, and each round starts one further along, so that over the rounds
        # every item sits between every pair of neighbouring sessions whatever the number of visits per round.
        session = anchors[(len(visits) + k) % len(anchors)]
        times = [_timed(session) for _ in range(n)]
        anchor_samples.extend(times)
        visits.append(min(times))

    start = time.perf_counter()
    for k, n in enumerate(per_round):
        visits: list[float] = []  # the anchor's fastest run at each of its visits
        if anchors:
            visit_anchor(n, k, visits)
        last_visit = time.perf_counter()
        fastest: list[tuple[int, float, int]] = []  # (item, fastest run, index of the anchor visit before it)
        for i, fn in enumerate(fns):
            times = [_timed(fn) for _ in range(n)]
            samples[i].extend(times)
            if not anchors:
                continue
            fastest.append((i, min(times), len(visits) - 1))
            if i == len(fns) - 1 or time.perf_counter() - last_visit >= anchor_every_s:
                visit_anchor(n, k, visits)
                last_visit = time.perf_counter()
        for i, t, before in fastest:
            ratios[i].append(t / ((visits[before] + visits[before + 1]) / 2))
        if min_span_s > 0 and k + 1 < rounds:
            wait = start + min_span_s * (k + 1) / rounds - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
    out = [Measurement.from_samples(s, warmup) for s in samples]
    if not anchors:
        return out
    anchor_p10 = float(np.percentile(anchor_samples, 10))
    return [replace(m, anchor_ms=anchor_p10, anchor_ratio=statistics.median(r)) for m, r in zip(out, ratios)]
