"""Parse the text output of TFLite's ``benchmark_model`` tool.

Pure functions only: no device access, so the parser is tested on stored output samples
(``tests/data/benchmark_model/``). benchmark_model reports microseconds; everything here is milliseconds.

The tool prints one statistics line per benchmark phase, produced by ``Stat::OutputToStream``::

    count=50 first=1234 curr=1200 min=1190 max=1300 avg=1210.5 std=20   (several distinct values)
    count=5 curr=1200(all same)                                         (all values equal)
    count=1 curr=1200                                                   (a single value)
    count=0                                                             (no runs)

The first such line is the warm-up phase and the second the timed runs. Newer builds prefix every line
with ``INFO: ``; output captured from logcat carries logcat's own prefixes. Both are stripped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from natdeploy.errors import NatDeployError

__all__ = ["BenchmarkParseError", "BenchmarkResult", "parse_benchmark_output"]

_US_PER_MS = 1000.0
_TAIL_LINES = 15

# Prefixes that wrap benchmark_model's own messages. Tried repeatedly, since logcat may carry "INFO: " too.
_PREFIXES = (
    # logcat -v threadtime (optionally -v year / -v uid): "11-27 10:00:00.123  1234  1234 I tflite  : "
    re.compile(r"^(?:\d{4}-)?\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+(?:[A-Za-z_][\w.]*\s+)?\d+\s+\d+\s+"
               r"[VDIWEFA]\s+[^:]*?\s*:\s?"),
    # logcat -v brief: "I/tflite  ( 1234): "
    re.compile(r"^[VDIWEFA]/[^(:]*\(\s*\d+\):\s?"),
    # TFLite's own log severity (2.1x and later print it on every line)
    re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE|DEBUG|FATAL):\s?"),
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # avg can print as 1.04521e+06 (default stream precision)
_STAT_LINE = re.compile(r"^count=(\d+)\b(.*)$")
_STAT_FIELD = re.compile(rf"(\w+)=({_NUMBER})(\(all same\))?")
_SUMMARY = re.compile(r"Inference timings in us:(.*)$")
_SUMMARY_FIELD = re.compile(rf"(Init|First inference|Warmup \(avg\)|Inference \(avg\)):\s*({_NUMBER})")
_INIT_SESSION = re.compile(rf"Initialized session in ({_NUMBER})\s*ms")


class BenchmarkParseError(NatDeployError):
    """benchmark_model's output holds no usable timings (it failed, crashed, or was cut off)."""


@dataclass(frozen=True, kw_only=True)
class BenchmarkResult:
    """Timed-run statistics of one benchmark_model invocation, in milliseconds.

    ``median_ms`` (and ``p5_ms``/``p95_ms``) are None unless the tool printed percentile suffixes;
    ``raw`` is the statistics line the timed-run numbers came from.
    """

    mean_ms: float
    median_ms: float | None = None
    std_ms: float | None = None
    count: int | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    first_ms: float | None = None
    p5_ms: float | None = None
    p95_ms: float | None = None
    warmup_mean_ms: float | None = None
    warmup_count: int | None = None
    init_ms: float | None = None
    raw: str = ""


def strip_log_prefix(line: str) -> str:
    """The message of one output line, without TFLite severity or logcat prefixes."""
    line = line.rstrip("\r\n")
    for _ in range(3):
        before = line
        for pattern in _PREFIXES:
            line = pattern.sub("", line, count=1)
        if line == before:
            break
    return line.strip()


def _parse_stat(message: str) -> dict[str, float] | None:
    """The fields of a ``count=...`` statistics message, in microseconds; None when it is not one."""
    m = _STAT_LINE.match(message)
    if m is None:
        return None
    fields: dict[str, float] = {"count": float(m.group(1))}
    for key, value, all_same in _STAT_FIELD.findall(m.group(2)):
        fields[key] = float(value)
        if all_same or (key == "curr" and int(fields["count"]) == 1):
            # "(all same)" and single-value stats print only curr: every statistic equals it.
            fields.update(first=fields[key], min=fields[key], max=fields[key], avg=fields[key], std=0.0)
            fields.setdefault("median", fields[key])
    return fields


def _ms(fields: dict[str, float], key: str) -> float | None:
    return fields[key] / _US_PER_MS if key in fields else None


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-_TAIL_LINES:]) if lines else "(no output)"


def parse_benchmark_output(text: str) -> BenchmarkResult:
    """Parse benchmark_model output (plain, ``INFO:``-prefixed, or logcat) into a :class:`BenchmarkResult`.

    Raises :class:`BenchmarkParseError`, quoting the end of the output, when it has no timed runs.
    """
    stats: list[tuple[dict[str, float], str]] = []
    summary: dict[str, float] = {}
    init_session_ms: float | None = None
    for line in text.splitlines():
        message = strip_log_prefix(line)
        fields = _parse_stat(message)
        if fields is not None:
            stats.append((fields, message))
            continue
        m = _SUMMARY.search(message)
        if m is not None:
            summary = {k: float(v) for k, v in _SUMMARY_FIELD.findall(m.group(1))}
            continue
        m = _INIT_SESSION.search(message)
        if m is not None:
            init_session_ms = float(m.group(1))

    warmup = stats[0][0] if stats else {}
    init_ms = summary["Init"] / _US_PER_MS if "Init" in summary else init_session_ms
    first_ms = (summary["First inference"] / _US_PER_MS if "First inference" in summary
                else _ms(warmup, "first"))
    common = dict(warmup_mean_ms=_ms(warmup, "avg") if warmup.get("count") else None,
                  warmup_count=int(warmup["count"]) if warmup else None, init_ms=init_ms, first_ms=first_ms)

    if len(stats) >= 2:
        timed, raw = stats[1]
        count = int(timed["count"])
        if count == 0 or "avg" not in timed:
            raise BenchmarkParseError(f"benchmark_model reported no timed runs ({raw!r}); rerun with "
                                      f"--num_runs > 0. End of its output:\n{_tail(text)}")
        return BenchmarkResult(mean_ms=timed["avg"] / _US_PER_MS, median_ms=_ms(timed, "median"),
                               std_ms=_ms(timed, "std"), count=count, min_ms=_ms(timed, "min"),
                               max_ms=_ms(timed, "max"), p5_ms=_ms(timed, "p5"), p95_ms=_ms(timed, "p95"),
                               raw=raw, **common)
    if "Inference (avg)" in summary:
        # Only the summary line survived (e.g. a trimmed log): the mean is known, the spread is not.
        return BenchmarkResult(mean_ms=summary["Inference (avg)"] / _US_PER_MS,
                               raw=next(strip_log_prefix(ln) for ln in text.splitlines() if _SUMMARY.search(ln)),
                               **common)
    if stats:
        raise BenchmarkParseError("benchmark_model's output ends after the warm-up runs, with no timed runs (it "
                                  f"crashed or was cut off). End of its output:\n{_tail(text)}")
    raise BenchmarkParseError(f"no timings found in benchmark_model's output (it failed before running the "
                              f"model?). End of its output:\n{_tail(text)}")
