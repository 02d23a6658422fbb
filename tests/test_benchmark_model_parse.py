"""parse_benchmark_output on reconstructed benchmark_model output samples (see tests/data/benchmark_model/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from natdeploy.errors import NatDeployError
from natdeploy.latency.benchmark_model import BenchmarkParseError, parse_benchmark_output, strip_log_prefix

DATA = Path(__file__).parent / "data" / "benchmark_model"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def test_tflite_2_4_plain_output() -> None:
    r = parse_benchmark_output(sample("tflite_2.4_cpu.txt"))
    assert r.count == 50
    assert r.mean_ms == pytest.approx(25.4017)
    assert r.std_ms == pytest.approx(0.297)
    assert (r.min_ms, r.max_ms) == (pytest.approx(25.044), pytest.approx(26.871))
    assert r.median_ms is None  # this format prints no percentiles; nothing is made up
    assert r.warmup_mean_ms == pytest.approx(25.8324) and r.warmup_count == 20
    assert r.init_ms == pytest.approx(2.507)
    assert r.first_ms == pytest.approx(29.417)
    assert r.raw.startswith("count=50 first=25390")


def test_tflite_2_4_single_warmup_and_exponent_avg() -> None:
    r = parse_benchmark_output(sample("tflite_2.4_slow_single_warmup.txt"))
    assert r.count == 5
    assert r.mean_ms == pytest.approx(4100.45)
    assert r.warmup_count == 1 and r.warmup_mean_ms == pytest.approx(4187.355)
    assert r.first_ms == pytest.approx(4187.355)
    assert r.init_ms == pytest.approx(118.442)


@pytest.mark.parametrize("name, count, mean_ms, std_ms, init_ms", [
    ("tflite_2.10_cpu_xnnpack.txt", 112, 8.84392, 0.164, 41.127),
    ("tflite_2.10_gpu_delegate.txt", 469, 2.1226, 0.061, 1094.31),
])
def test_tflite_2_10(name: str, count: int, mean_ms: float, std_ms: float, init_ms: float) -> None:
    r = parse_benchmark_output(sample(name))
    assert r.count == count
    assert r.mean_ms == pytest.approx(mean_ms)
    assert r.std_ms == pytest.approx(std_ms)
    assert r.init_ms == pytest.approx(init_ms)
    assert r.median_ms is None


def test_tflite_2_14_info_prefix_and_percentiles() -> None:
    r = parse_benchmark_output(sample("tflite_2.14plus_cpu_percentiles.txt"))
    assert r.count == 56
    assert r.mean_ms == pytest.approx(18.3428)
    assert r.median_ms == pytest.approx(18.287)
    assert (r.p5_ms, r.p95_ms) == (pytest.approx(18.121), pytest.approx(18.864))
    assert r.warmup_count == 27
    assert not r.raw.startswith("INFO")


def test_logcat_threadtime_capture() -> None:
    r = parse_benchmark_output(sample("logcat_threadtime_benchmark_apk.txt"))
    assert r.count == 98
    assert r.mean_ms == pytest.approx(10.2874)
    assert r.warmup_mean_ms == pytest.approx(10.5729)
    assert r.init_ms == pytest.approx(27.304)


def test_logcat_brief_all_same_warmup() -> None:
    r = parse_benchmark_output(sample("logcat_brief_all_same.txt"))
    assert r.warmup_count == 5 and r.warmup_mean_ms == pytest.approx(0.061)
    assert r.count == 20 and r.mean_ms == pytest.approx(0.06145)


@pytest.mark.parametrize("name, words", [
    ("failed_missing_model.txt", ["no timings", "Failed to mmap model"]),
    ("crashed_after_warmup.txt", ["warm-up", "Segmentation fault"]),
    ("zero_timed_runs.txt", ["no timed runs", "count=0"]),
])
def test_failures_raise_with_output_tail(name: str, words: list[str]) -> None:
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(sample(name))
    assert isinstance(info.value, NatDeployError)
    for word in words:
        assert word in str(info.value)


def test_all_same_timed_line_and_pty_line_endings() -> None:
    text = "count=3 first=5 curr=4 min=4 max=5 avg=4.3 std=0\r\ncount=10 curr=1200(all same)\r\n"
    r = parse_benchmark_output(text)
    assert r.count == 10
    assert r.mean_ms == r.median_ms == r.min_ms == r.max_ms == pytest.approx(1.2)
    assert r.std_ms == 0.0


def test_summary_line_only() -> None:
    r = parse_benchmark_output("INFO: Inference timings in us: Init: 1000, First inference: 3000, "
                               "Warmup (avg): 2500.5, Inference (avg): 2400.25\n")
    assert r.mean_ms == pytest.approx(2.40025)
    assert r.count is None and r.std_ms is None and r.median_ms is None
    assert r.init_ms == pytest.approx(1.0) and r.first_ms == pytest.approx(3.0)


def test_op_profiling_timings_are_not_stat_lines() -> None:
    text = sample("tflite_2.10_cpu_xnnpack.txt") + (
        "Timings (microseconds): count=112 first=1 curr=1 min=1 max=9 avg=2 std=1\n"
        "Memory (bytes): count=0\n")
    assert parse_benchmark_output(text).count == 112


def test_empty_output_raises() -> None:
    with pytest.raises(BenchmarkParseError, match="no output"):
        parse_benchmark_output("")


@pytest.mark.parametrize("line, message", [
    ("INFO: count=1 curr=5", "count=1 curr=5"),
    ("11-27 10:00:00.123  1234  1234 I tflite  : count=2", "count=2"),
    ("2024-11-27 10:00:00.123  1234  1234 I tflite: INFO: count=3", "count=3"),
    ("I/tflite  ( 1234): count=4", "count=4"),
    ("plain", "plain"),
])
def test_strip_log_prefix(line: str, message: str) -> None:
    assert strip_log_prefix(line) == message
