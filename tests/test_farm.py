"""``natdeploy profile`` with several ``--serial``: a farm of loopback ADB daemons (tests/adb_daemon.py).

One scenario runs on one table, so that every op is converted about once (conversion dominates the run time):
a farm of four phones, one of another model and one 30% slow, is killed (SIGKILL) mid-run; the rerun loses
both working phones at once and ends with a resumable partial table; the last rerun loses one phone for good and
the other finishes its work. Nothing saved is measured again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from adb_daemon import AdbDaemon  # noqa: E402
from fake_phone import write_fake_benchmark_model  # noqa: E402
from test_adb_profile import TEST_PHONE_YAML, adb_home, n_ops, when  # noqa: E402,F401  (adb_home: a fixture)

from natdeploy.cli import main  # noqa: E402
from natdeploy.latency import LatencyTable  # noqa: E402
from natdeploy.latency.farm import (MAX_REFERENCE_REPEATS, REFERENCE_REPEATS, TOLERANCE_FLOOR,  # noqa: E402
                                    WIDE_TOLERANCE, _check_speed, _Phone, phone_speeds, reference_ops,
                                    speed_tolerance)
from natdeploy.latency.measure import Measurement  # noqa: E402
from natdeploy.latency.ops import profile_ops  # noqa: E402
from natdeploy.space import SearchSpace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The phones of tests/test_adb_profile.py, with more timed runs, profiled at 64 px: the speed check compares the
# fastest run of each reference op. At 32 px those ops took 25-60 us, where the fastest of 40 runs moved by up to 18%
# between repeats and between the fake phones' processes on an idle machine (a good phone was refused at 0.88x, or
# a 37% tolerance let the 30%-slow phone in); at 64 px they take 0.2-0.7 ms, and three idle runs measured the good
# phones at 0.98-1.00x and the slow one at 1.30-1.31x. The runs cost milliseconds.
FARM_PHONE_YAML = TEST_PHONE_YAML.replace("\nruns: 5\n", "\nruns: 200\n")
PIXEL5 = {"ro.product.model": "Pixel 5", "ro.product.manufacturer": "Google", "ro.soc.model": "SM7250",
          "ro.build.version.release": "13", "ro.build.version.sdk": "33", "ro.product.cpu.abi": "arm64-v8a"}


@pytest.fixture
def farm(tmp_path: Path, adb_home: Path) -> Iterator[dict[str, AdbDaemon]]:
    """Phones a and c (good), b (30% slow), d (a Pixel 5)."""
    daemons = {"a": AdbDaemon(tmp_path / "a", accept_unknown_keys=True, litert_zygote=True, lifetime_s=500),
               "b": AdbDaemon(tmp_path / "b", accept_unknown_keys=True, litert_zygote=True, lifetime_s=500),
               "c": AdbDaemon(tmp_path / "c", accept_unknown_keys=True, litert_zygote=True, lifetime_s=500),
               "d": AdbDaemon(tmp_path / "d", accept_unknown_keys=True, props=PIXEL5, lifetime_s=500)}
    daemons["b"].speed_factor = 1.3
    try:
        for d in daemons.values():
            d.start()
        yield daemons
    finally:
        for d in daemons.values():
            d.stop()


def farm_args(daemons: list[AdbDaemon], spec: Path, binary: Path, out: Path) -> list[str]:
    serials = [x for d in daemons for x in ("--serial", d.serial)]
    return ["profile", "--device", str(spec), *serials, "--benchmark-binary", str(binary), "--resolutions", "64",
            "--n-classes", "10", "--e2e-samples", "1", "--out", str(out), "--quiet"]


def test_farm_end_to_end_kill_dropouts_and_resume(farm: dict[str, AdbDaemon], adb_home: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "testphone.yaml"
    spec.write_text(FARM_PHONE_YAML)
    binary = write_fake_benchmark_model(tmp_path / "benchmark_model")
    out = tmp_path / "tables" / "testphone.json"
    a, b, c, d = (farm[k] for k in "abcd")
    args = farm_args([a, b, c, d], spec, binary, out)
    all_ops = len(profile_ops(SearchSpace.preset("small"), 10, [64]))

    # 1. In a subprocess, killed (SIGKILL) mid-run: d (another model) and b (30% slow) are refused by name.
    log = tmp_path / "run1.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "natdeploy", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 240
            while n_ops(out) < 12 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    text = log.read_text()
    assert n_ops(out) >= 12, text
    assert f"refusing phone {d.serial}: it differs (host: the farm has 'Google Pixel 4 (SM8150)', this phone " \
           "'Google Pixel 5 (SM7250)')" in text
    slow = re.search(rf"refusing phone {re.escape(b.serial)}: it runs at ([\d.]+)x the farm's time on the reference "
                     r"ops, beyond the tolerance of (\d+)%", text)
    assert slow and 1.15 < float(slow[1]) < 1.45 and 10 <= int(slow[2]) < 100 * (float(slow[1]) - 1), text
    killed = LatencyTable.load(out)
    farm_prov = killed.provenance["farm"]
    assert set(farm_prov["ops"].values()) <= {a.serial, c.serial} and set(farm_prov["ops"]) == set(killed.ops)
    assert farm_prov["phones"][b.serial]["speed"] == pytest.approx(1.3, rel=0.12)
    assert abs(farm_prov["phones"][a.serial]["speed"] - 1) < TOLERANCE_FLOOR
    b_runs = len(b.services)

    # 2. Both working phones drop out (rebooting for longer than reconnect_wait_s): a one-line message, and the
    # partial table resumes. The phones' reference timings are kept: b is refused again without a run.
    def both_reboot() -> None:  # down until the test powers them on: conversion may outlast any fixed down time
        a.reboot(down_s=600.0)
        c.reboot(down_s=600.0)

    watcher = when(lambda: n_ops(out) >= len(killed.ops) + 10, both_reboot)
    assert main(args) == 2
    watcher.join(1)
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "all 2 phones dropped out (" in line and a.serial in line and c.serial in line
    assert "rerun the same command to resume" in line and "Traceback" not in err
    partial = LatencyTable.load(out)
    assert len(killed.ops) + 10 <= len(partial.ops) < all_ops
    assert all(partial.ops[k] == m for k, m in killed.ops.items())  # nothing saved is measured again
    assert not any("--graph=" in s for s in b.services[b_runs:])

    # 3. c drops out for good mid-run; a takes over its work and finishes the table.
    a.power_on()
    c.power_on()
    watcher = when(lambda: n_ops(out) >= len(partial.ops) + 8, lambda: c.reboot(down_s=600.0))
    assert main(args) == 0
    watcher.join(1)
    printed = capsys.readouterr().out
    assert f"{all_ops} ops ({all_ops - len(partial.ops)} measured now), 1 whole subnets, on 1 of 4 phones" in printed
    assert f"{c.serial}: " in printed and "then dropped out" in printed
    assert f"{d.serial}: refused: it differs (host:" in printed and f"{b.serial}: refused: it runs at 1." in printed
    table = LatencyTable.load(out)
    assert len(table.ops) == all_ops and len(table.e2e) == 1
    assert all(table.ops[k] == m for k, m in partial.ops.items())
    farm_prov = table.provenance["farm"]
    assert set(farm_prov["ops"]) == set(table.ops) and set(farm_prov["e2e"]) == set(table.e2e)
    assert set(farm_prov["ops"].values()) == {a.serial, c.serial}
    assert farm_prov["e2e"][next(iter(table.e2e))] == a.serial
    assert table.provenance["host"] == "Google Pixel 4 (SM8150)" and "adb" not in table.provenance
    assert farm_prov["phones"][a.serial]["model"] == "Pixel 4" and farm_prov["phones"][a.serial]["runs"] > 0
    assert not any("--graph=" in s for s in d.services)  # the Pixel 5 never measured anything
    assert out.with_suffix(".xgb.json").is_file()


def test_farm_refuses_other_builds_and_models_by_name(tmp_path: Path, adb_home: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Resuming a table made with another benchmark_model build: every phone is refused, each by name."""
    spec = tmp_path / "testphone.yaml"
    spec.write_text(FARM_PHONE_YAML)
    binary = write_fake_benchmark_model(tmp_path / "benchmark_model")
    out = tmp_path / "t.json"
    other_build = "TFLite benchmark_model (no version printed) sha256:0123456789abcdef (XNNPACK)"
    LatencyTable(device="testphone", n_classes=10, statistic="mean",
                 provenance={"host": "Google Pixel 4 (SM8150)", "runtime": "litert",
                             "runtime_version": other_build}).save(out)
    with AdbDaemon(tmp_path / "a", accept_unknown_keys=True) as a, \
            AdbDaemon(tmp_path / "d", accept_unknown_keys=True, props=PIXEL5) as d:
        assert main(farm_args([a, d], spec, binary, out)) == 2
        err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "no phone of the farm can measure" in line
    assert f"{a.serial} differs (runtime_version: the table has {other_build!r}" in line
    assert f"{d.serial} differs (" in line
    assert "host: the table has 'Google Pixel 4 (SM8150)', this phone 'Google Pixel 5 (SM7250)'" in line
    assert not any("--graph=" in s for s in a.services + d.services)
    assert LatencyTable.load(out).ops == {}


def test_speeds_and_tolerance() -> None:
    ref = {"a": {"x": [1.0, 1.005, 0.998], "y": [2.0, 2.01, 1.998]},
           "b": {"x": [1.3, 1.305, 1.298], "y": [2.6, 2.61, 2.598]},
           "c": {"x": [1.002, 1.0, 1.004], "y": [2.002, 2.0, 2.006]}}
    speeds = phone_speeds(ref)
    assert speeds["b"] == pytest.approx(1.3, rel=0.02) and abs(speeds["a"] - 1) < 0.02
    assert speed_tolerance(ref) == TOLERANCE_FLOOR  # 1% repeat noise: the floor
    assert "runs: 200" in FARM_PHONE_YAML
    pair = phone_speeds({"a": ref["a"], "b": ref["b"]})  # two that disagree: the faster one sets the speed
    assert pair["a"] == pytest.approx(1.0) and pair["b"] == pytest.approx(1.3, rel=0.02)
    noisy = {s: {k: [v[0] * 0.7, v[0], v[0] * 1.4] for k, v in by.items()} for s, by in ref.items()}
    assert phone_speeds(noisy)["b"] == pytest.approx(1.3, rel=0.01)  # the fastest run: one slow repeat does not move it
    assert speed_tolerance(noisy) > 0.25  # noise alone must not refuse a phone
    assert json.dumps(speeds)  # plain floats, stored in the table's provenance


class BurstyPhone:
    """A phone's measuring side for the speed check: each call times the reference ops at ``speed`` x their cost,
    1.5x slower in the calls listed in ``slow_calls`` (noise that comes in bursts, as on a phone switching cores or
    on this host's shared cores). Call 0 is the warm-up round."""

    def __init__(self, speed: float, slow_calls: set[int]) -> None:
        self.speed, self.slow_calls, self.calls, self.closed = speed, slow_calls, 0, False

    def measure_ops(self, ops: list) -> list:
        factor = self.speed * (1.5 if self.calls in self.slow_calls else 1.0)
        self.calls += 1
        out = []
        for i, op in enumerate(ops):
            ms = (1.0 + i) * factor * (1 + 0.002 * ((self.calls + i) % 3))
            out.append((op, Measurement(median_ms=ms, mean_ms=ms, std_ms=0.0, count=200, warmup=2, min_ms=ms)))
        return out

    def close(self) -> None:
        self.closed = True


def check_speed(tmp_path: Path, slow_calls: set[int], tolerance: float | None = None
                ) -> tuple[float, dict[str, str], dict[str, BurstyPhone], LatencyTable]:
    backends = {"a": BurstyPhone(1.0, slow_calls), "b": BurstyPhone(1.3, slow_calls),
                "c": BurstyPhone(1.0, slow_calls)}
    phones = [_Phone(s, backend, {}) for s, backend in backends.items()]  # type: ignore[arg-type]
    table = LatencyTable(device="testphone", n_classes=10, statistic="min",
                         provenance={"farm": {"phones": {s: {} for s in backends}}})
    refs = reference_ops(profile_ops(SearchSpace.preset("small"), 10, [64]))
    refused: dict[str, str] = {}
    tol = _check_speed(phones, refs, table, tmp_path / "t.json", threading.Lock(), tolerance, refused)
    return tol, refused, backends, table


def test_bursty_reference_rounds_get_more_rounds_until_the_slow_phone_shows(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    # Rounds 2 and 4 (of 5, after the warm-up) slow on every phone: one half of the rounds has no fast round, the
    # tolerance from 5 rounds would be far wider than 30%, and the 30% slow phone would join the farm.
    bursts = {2, 4}
    five_rounds = [1.5 if call in bursts else 1.0 for call in range(1, 1 + REFERENCE_REPEATS)]
    assert speed_tolerance({s: {k: five_rounds for k in "xyz"} for s in "ac"}) > 0.3
    with caplog.at_level("INFO", logger="natdeploy.latency.farm"):
        tol, refused, backends, table = check_speed(tmp_path, bursts)
    assert "measuring 5 more rounds" in caplog.text and "too unevenly" not in caplog.text
    assert all(b.calls == 1 + 2 * REFERENCE_REPEATS for b in backends.values())  # warm-up, 5, then 5 more
    assert tol == TOLERANCE_FLOOR and set(refused) == {"b"} and "runs at 1.30x" in refused["b"]
    stored = table.provenance["farm"]["phones"]
    assert all(len(v) == 2 * REFERENCE_REPEATS for v in stored["a"]["reference_ms"].values())
    assert LatencyTable.load(tmp_path / "t.json").provenance["farm"]["phones"]["b"]["speed"] == pytest.approx(1.3,
                                                                                                             rel=0.01)

    # Bursts that never stop: rounds end at MAX_REFERENCE_REPEATS, with the warning.
    caplog.clear()
    with caplog.at_level("INFO", logger="natdeploy.latency.farm"):
        tol, refused, backends, _ = check_speed(tmp_path / "x", set(range(2, 40, 2)))
    assert all(b.calls == 1 + MAX_REFERENCE_REPEATS for b in backends.values())
    assert tol > WIDE_TOLERANCE and "too unevenly" in caplog.text and not refused

    # A tolerance the user gives is used as it is: no more rounds.
    tol, refused, backends, _ = check_speed(tmp_path / "y", bursts, tolerance=0.2)
    assert tol == 0.2 and all(b.calls == 1 + REFERENCE_REPEATS for b in backends.values()) and set(refused) == {"b"}
