"""Timing with warm-up and robust statistics."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Measurement:
    """A latency measurement: the median is the statistic natdeploy uses; the others travel with it."""

    median_ms: float
    mean_ms: float
    std_ms: float
    count: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        return cls(median_ms=float(d["median_ms"]), mean_ms=float(d["mean_ms"]), std_ms=float(d["std_ms"]),
                   count=int(d["count"]), warmup=int(d["warmup"]))

    @classmethod
    def from_samples(cls, samples_ms: list[float], warmup: int) -> "Measurement":
        if not samples_ms:
            raise ValueError("a measurement needs at least one timed run")
        return cls(median_ms=statistics.median(samples_ms), mean_ms=statistics.fmean(samples_ms),
                   std_ms=statistics.pstdev(samples_ms), count=len(samples_ms), warmup=warmup)


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
