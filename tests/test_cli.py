"""The CLI's seams: one budget grammar, one error mapping, common flags after the command, a light --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from natdeploy.cli import build_parser, main, parse_budget
from natdeploy.cli.errors import BUG, USER_ERROR, run_command
from natdeploy.errors import ArchError, ConfigError, DeviceSpecError, NatDeployError

ROOT = Path(__file__).resolve().parent.parent


def test_one_budget_grammar():
    assert parse_budget(None, "--max-latency") is None
    assert parse_budget(["30ms"], "--max-latency") == 30.0
    assert parse_budget(["cpu=0.03s", "pixel4=30000us"], "--budget") == {"cpu": 30.0, "pixel4": 30.0}
    assert parse_budget(["1", "2"], "--max-latency", ["a", "b"]) == {"a": 1.0, "b": 2.0}
    with pytest.raises(ConfigError, match="mix of DEVICE=budget and plain budgets in --budget"):
        parse_budget(["cpu=1", "2"], "--budget")
    with pytest.raises(ConfigError, match="2 plain --budget values"):
        parse_budget(["1", "2"], "--budget")
    with pytest.raises(ConfigError, match="3 --max-latency values for 2 devices"):
        parse_budget(["1", "2", "3"], "--max-latency", ["a", "b"])
    with pytest.raises(ConfigError, match="names 'gpu', which is not a --device"):
        parse_budget(["gpu=1"], "--max-latency", ["cpu"])


def test_export_budget_alias_and_flags_after_the_command():
    ap = build_parser()
    a = ap.parse_args(["export", "runs/x", "--budget", "2ms"])
    b = ap.parse_args(["export", "runs/x", "--max-latency", "2ms", "-v", "--quiet"])
    assert a.budget == b.budget == ["2ms"] and (a.verbose, a.quiet) == (False, False) and b.verbose and b.quiet
    c = ap.parse_args(["-v", "--quiet", "predict", "--device", "cpu", "--arch", "x"])
    assert c.verbose and c.quiet
    assert ap.parse_args(["tables", "refit", "--device", "cpu", "-v"]).verbose


def test_validation_errors_are_known_errors_and_value_errors():
    for cls in (ArchError, DeviceSpecError):
        assert issubclass(cls, NatDeployError) and issubclass(cls, ValueError)


def test_known_error_prints_one_line(capsys):
    assert main(["arch", "w1.0-r224-3354-7376-3333-5566-7777"]) == USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not allowed" in err and len(err.strip().splitlines()) == 1


def test_bug_keeps_its_traceback_and_says_so(capsys):
    def broken(args):
        raise KeyError("oops")

    assert run_command(broken, None) == BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'oops'" in err and "this is a bug in natdeploy" in err


def test_debug_reraises_known_errors(monkeypatch):
    monkeypatch.setenv("NATDEPLOY_DEBUG", "1")

    def refused(args):
        raise ConfigError("no")

    with pytest.raises(ConfigError):
        run_command(refused, None)


@pytest.mark.parametrize("argv, heavy", [(["--help"], ("torch", "tensorflow", "numpy")),
                                         (["--version"], ("torch", "tensorflow", "numpy")),
                                         (["devices"], ("torch", "tensorflow", "xgboost")),
                                         (["supernets"], ("torch", "tensorflow", "xgboost"))])
def test_light_commands_import_no_torch(argv, heavy):
    """--help, --version, `natdeploy devices` (which reads every table's header) and `natdeploy supernets` (the
    catalogue and the cache) start in well under a second: torch alone takes ~2 s to import here."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "natdeploy", *argv], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time")]
    assert not [m for m in imported if m.split(".")[0] in heavy], argv


def test_a_closed_output_pipe_stops_quietly():
    """`natdeploy devices | head -1`: the reader goes away before the listing is written; no traceback, no bug note,
    and the exit status a shell gives a command stopped by SIGPIPE."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "natdeploy", "devices"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command has imported anything, so every write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
