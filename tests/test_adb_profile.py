"""``natdeploy profile`` on a phone over ADB, end to end, against the loopback ADB daemon (tests/adb_daemon.py).

The full CLI runs in this process: it converts every op of the small space at 32 px to .tflite with the LiteRT
backend's builder, pushes the files over the real ADB protocol, and the daemon's stand-in benchmark_model really
runs them with LiteRT. One scenario walks through the faults in order (a phone that reboots mid-profile, full
storage, a crashing binary, a transient disconnect), each on the same table, so every op is converted about
once: conversion dominates the run time.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from adb_daemon import AdbDaemon  # noqa: E402
from fake_phone import write_fake_benchmark_model  # noqa: E402

from natdeploy.cli import main  # noqa: E402
from natdeploy.latency import LatencyTable, space_ops  # noqa: E402
from natdeploy.latency.ops import profile_ops  # noqa: E402
from natdeploy.latency.backends.adb_backend import measurement_from_result  # noqa: E402
from natdeploy.latency.benchmark_model import BenchmarkParseError, parse_benchmark_output  # noqa: E402
from natdeploy.space import SearchSpace  # noqa: E402

REMOTE_DIR = "/data/local/tmp/natdeploy"
SMALL = SearchSpace.preset("small")
# pixel4.yaml, cut down for a test: few runs, one resolution, short waits (timeouts stay explicit).
TEST_PHONE_YAML = """\
description: Pixel 4 CPU over ADB, cut down for tests
transport: adb
runtime: litert
threads: 1
cpu_mask: "70"
xnnpack: true
precision: fp32
warmup: 2
runs: 5
e2e_warmup: 1
e2e_runs: 3
space: small
resolutions: [32]
extra:
  batch_size: 8
  connect_wait_s: 20
  reconnect_wait_s: 0.5
  run_timeout_s: 30
  call_timeout_s: 30
  connect_timeout_s: 5
  auth_timeout_s: 5
  cooldown_poll_s: 0.1
  cooldown_max_s: 5
  warmup_min_secs: 0
"""


@pytest.fixture
def adb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway ADB key folder: ~/.android is never read or written."""
    home = tmp_path / "android-home"
    monkeypatch.setenv("ANDROID_USER_HOME", str(home))
    monkeypatch.setenv("NATDEPLOY_NO_PROGRESS", "1")
    return home


@pytest.fixture
def phone(tmp_path: Path, adb_home: Path) -> Iterator[AdbDaemon]:
    with AdbDaemon(tmp_path / "phone", accept_unknown_keys=True, litert_zygote=True, lifetime_s=400) as daemon:
        yield daemon


def profile(daemon: AdbDaemon, spec: Path, binary: Path, out: Path, *extra: str) -> int:
    return main(["profile", "--device", str(spec), "--serial", daemon.serial, "--benchmark-binary", str(binary),
                 "--resolutions", "32", "--n-classes", "10", "--e2e-samples", "1", "--out", str(out), "--quiet",
                 *extra])


def n_ops(out: Path) -> int:
    try:
        return len(json.loads(out.read_text())["ops"])
    except (OSError, ValueError, KeyError):
        return 0


def when(condition, action, timeout_s: float = 120.0) -> threading.Thread:
    """Run ``action`` once ``condition()`` holds (polled), from a helper thread: a fault in mid-profile."""
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def graph_runs(daemon: AdbDaemon) -> list[str]:
    return [s for s in daemon.services if "--graph=" in s]


def test_profile_phone_end_to_end_with_faults_and_resume(phone: AdbDaemon, adb_home: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "testphone.yaml"
    spec.write_text(TEST_PHONE_YAML)
    binary = write_fake_benchmark_model(tmp_path / "benchmark_model")
    out = tmp_path / "tables" / "testphone.json"
    all_ops = len(profile_ops(SMALL, 10, [32]))

    # 1. The phone reboots mid-profile and does not come back in time: a clear error, the table keeps its ops.
    watcher = when(lambda: n_ops(out) >= 12, lambda: phone.reboot(down_s=3.0))
    assert profile(phone, spec, binary, out) == 2
    watcher.join(1)
    err = capsys.readouterr().err
    assert "did not come back within 0.5 s" in err and "rerun the same command" in err and "Traceback" not in err
    before = LatencyTable.load(out)
    assert 12 <= len(before.ops) < all_ops
    assert (adb_home / "adbkey").is_file()  # the temporary key, not ~/.android

    # 2. Rerun at once, while the phone is still rebooting: it waits for it, then the storage is full.
    phone.storage_full = True
    assert profile(phone, spec, binary, out) == 2
    err = capsys.readouterr().err
    assert "storage is full" in err and "No space left on device" in err and "everything measured" in err.lower()
    assert LatencyTable.load(out).ops == before.ops
    phone.storage_full = False

    # 3. A binary that crashes: retried, then reported with the op it was measuring.
    phone.crash_benchmark = True
    runs_before = len(graph_runs(phone))
    assert profile(phone, spec, binary, out) == 2
    err = capsys.readouterr().err
    in_space = space_ops(SMALL, 10, [32])
    reference = in_space[len(in_space) // 2].key  # the profiler measures its reference op first
    assert f"measuring {reference} failed 3 times" in err and "SIGSEGV" in err
    assert len(graph_runs(phone)) - runs_before == 3
    assert LatencyTable.load(out).ops == before.ops
    phone.crash_benchmark = False

    # 4. Resume, through one transient disconnect (retried after reconnecting), keeping the remote files.
    phone.disconnect_after(30)
    assert profile(phone, spec, binary, out, "--keep-remote") == 0
    printed = capsys.readouterr().out
    assert f"{all_ops} ops ({all_ops - len(before.ops)} measured now), 1 whole subnets" in printed
    assert phone._disconnect_after is None  # the disconnect did fire
    table = LatencyTable.load(out)
    assert len(table.ops) == all_ops and len(table.e2e) == 1
    assert all(table.ops[k] == m for k, m in before.ops.items())  # nothing re-measured, nothing lost
    remote = phone.host_path(REMOTE_DIR)
    assert (remote / "benchmark_model").is_file() and len(list(remote.glob("*.tflite"))) > 1  # --keep-remote

    # The table: statistics that benchmark_model measured, and the phone's provenance.
    assert table.statistic == "mean"
    for m in list(table.ops.values()) + list(table.e2e.values()):
        assert m.p10_ms is None  # benchmark_model prints no p10, and none is made up
        # benchmark_model prints whole microseconds: a tiny op's fastest run can read 0
        assert 0 <= m.min_ms <= m.median_ms and m.min_ms <= m.mean_ms and m.std_ms >= 0
    assert {(m.count, m.warmup) for m in table.ops.values()} == {(5, 2)}
    assert {(m.count, m.warmup) for m in table.e2e.values()} == {(3, 1)}
    prov = table.provenance
    assert prov["host"] == "Google Pixel 4 (SM8150)" and prov["statistic"] == "mean"
    assert prov["runtime"] == "litert" and prov["runtime_version"].startswith("TFLite benchmark_model")
    assert prov["platform"] == "Android 13 (SDK 33, arm64-v8a)" and prov["threads"] == 1 and prov["cpu_mask"] == "70"
    adb = prov["adb"]
    assert (adb["model"], adb["soc"], adb["android_release"], adb["serial"]) == ("Pixel 4", "SM8150", "13",
                                                                                  phone.serial)
    assert adb["binary_sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert adb["cpu_freqs_before_khz"]["4"] == 2419200 and adb["cpu_freqs_after_khz"]["7"] == 2841600
    assert adb["temperature_after_c"] == pytest.approx(38.0) and adb["runs"] > 0
    assert "--min_secs=0" in adb["benchmark_args"]
    assert Path(out.with_suffix(".xgb.json")).is_file()

    # 5. Without --keep-remote the phone is left clean (also of the files kept before).
    assert profile(phone, spec, binary, out) == 0
    assert "(0 measured now)" in capsys.readouterr().out
    assert not remote.exists()


def test_profile_on_another_phone_is_refused(phone: AdbDaemon, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A table measured on one phone model does not take measurements from another (provenance host)."""
    spec = tmp_path / "testphone.yaml"
    spec.write_text(TEST_PHONE_YAML)
    binary = write_fake_benchmark_model(tmp_path / "benchmark_model")
    out = tmp_path / "t.json"
    table = LatencyTable(device="testphone", n_classes=10, statistic="mean",
                         provenance={"host": "samsung SM-N975F (exynos9825)", "runtime": "litert"})
    table.save(out)
    assert profile(phone, spec, binary, out) == 2
    err = capsys.readouterr().err
    assert "host: table has 'samsung SM-N975F (exynos9825)', now 'Google Pixel 4 (SM8150)'" in err
    assert not phone.host_path(REMOTE_DIR).exists()  # the binary pushed to describe the phone was removed


def test_adb_flags_need_an_adb_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--device", "cpu", "--serial", "127.0.0.1:5037", "--keep-remote"]) == 2
    assert "--serial, --keep-remote only apply to phones" in capsys.readouterr().err


def test_measurement_keeps_only_what_benchmark_model_printed() -> None:
    data = Path(__file__).parent / "data" / "benchmark_model"
    plain = measurement_from_result(parse_benchmark_output((data / "tflite_2.10_cpu_xnnpack.txt").read_text()), 10)
    assert plain.p10_ms is None and math.isnan(plain.median_ms)  # no percentiles printed: none recorded
    assert plain.min_ms is not None and plain.min_ms <= plain.mean_ms and plain.count > 0
    with_pct = measurement_from_result(
        parse_benchmark_output((data / "tflite_2.14plus_cpu_percentiles.txt").read_text()), 10)
    assert with_pct.median_ms == pytest.approx(18.287) and with_pct.p10_ms is None
    summary_only = parse_benchmark_output("INFO: Inference timings in us: Init: 100, First inference: 50, "
                                          "Warmup (avg): 40, Inference (avg): 30\n")
    with pytest.raises(BenchmarkParseError, match="does not make them up"):
        measurement_from_result(summary_only, 10)
