"""Timing with warm-up and robust statistics."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Measurement:
    """A latency measurement and its statistics.

    natdeploy's tables use the 10th percentile (``p10_ms``): on a shared machine, interference only ever adds
    time, and a low percentile of many runs repeats far better than the median or mean (see the issue notes).
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    count: int
    warmup: int
    p10_ms: float | None = None
    min_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # A statistic the runtime did not report is NaN in memory and null in JSON (strict JSON has no NaN).
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        opt = {k: (None if d.get(k) is None else float(d[k])) for k in ("p10_ms", "min_ms")}
        return cls(median_ms=math.nan if d.get("median_ms") is None else float(d["median_ms"]), mean_ms=float(d["mean_ms"]), std_ms=float(d["std_ms"]),
                   count=int(d["count"]), warmup=int(d["warmup"]), **opt)

    def value(self, statistic: str) -> float:
        """The named statistic (``p10``, ``median``, ``mean``, ``min``) in ms."""
        v = getattr(self, f"{statistic}_ms", None)
        if v is None:
            raise ValueError(f"this measurement has no {statistic!r} statistic")
        return v

    @classmethod
    def from_samples(cls, samples_ms: list[float], warmup: int) -> "Measurement":
        if not samples_ms:
            raise ValueError("a measurement needs at least one timed run")
        ordered = sorted(samples_ms)
        return cls(median_ms=statistics.median(ordered), mean_ms=statistics.fmean(ordered),
                   std_ms=statistics.pstdev(ordered), count=len(ordered), warmup=warmup,
                   p10_ms=percentile(ordered, 10), min_ms=ordered[0])


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_callable(fn: Callable[[], Any], warmup: int, runs: int) -> Measurement:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed; wall-clock milliseconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Measurement.from_samples(samples, warmup)
