"""The search's progress printer: the run plan, the one-time run-time estimate, phase records, bars."""

from __future__ import annotations

import pytest

from natdeploy.progress import (Progress, estimate_line, estimate_seconds, evaluations, format_duration,
                                run_plan)
from natdeploy.search import NATConfig


def test_the_plan_counts_nats_reference_run():
    cfg = NATConfig()  # 30 iterations, 100 initial subnets, 8 candidates, archive re-evaluated every iteration
    assert evaluations(cfg, 0) == 100
    assert evaluations(cfg, 30) == 100 + 30 * (8 + 100) + 8 * sum(range(1, 31))
    plan = run_plan(cfg, n_train=1437, n_val=360, scratch=True)
    per_epoch = 23  # 1437 images in batches of 64
    assert plan["steps_total"] == 10 * per_epoch + 30 * 5 * per_epoch and plan["steps_done"] == 0
    assert plan["evals_done"] == 0 and plan["iterations"] == 30
    assert plan["step_images"] == 64 * 5 and plan["eval_images"] == 4 * 256 + 360
    resumed = run_plan(cfg, 1437, 360, scratch=True, warmed_up=True, completed_iteration=3)
    assert resumed["steps_done"] == 10 * per_epoch + 3 * 5 * per_epoch
    assert resumed["evals_done"] == evaluations(cfg, 3)
    assert run_plan(cfg, 1437, 360, scratch=False)["steps_total"] == 30 * 5 * per_epoch  # no warm-up


def test_the_estimate_and_its_line():
    plan = {"steps_total": 100, "evals_total": 10, "step_images": 30, "eval_images": 90}
    assert estimate_seconds(plan, 2.0 / 30, 5.0) == pytest.approx(250.0)  # steps of 2 s, evaluations of 5 s
    assert estimate_seconds(plan, 2.0 / 30) == pytest.approx(100 * 2.0 + 10 * 2.0)  # 90 forward = 3 x 30 trained
    assert estimate_seconds({**plan, "step_images": 15}, 2.0 / 30, 5.0) == pytest.approx(150.0)  # half the work
    assert [format_duration(s) for s in (0.2, 40, 130, 7800)] == ["~1 s", "~40 s", "~2 min", "~2 h 10 min"]
    assert estimate_line(7800, "--settings paper (30 iterations)", ("--settings quick", 360)) == (
        "estimated total: ~2 h 10 min on this machine for --settings paper (30 iterations); --settings quick "
        "takes ~6 min, or lower --iterations")
    assert estimate_line(100, "--settings quick (2 iterations)").endswith(
        "lower --iterations or --initial-archs to shorten it")


def _steps(progress: Progress, n: int, start: int = 1, seconds: float = 2.0) -> None:
    for step in range(start, start + n):
        progress("step", {"step": step, "total": 1000, "images": 64, "seconds": seconds, "loss": 1.0})


def test_the_estimate_is_printed_once_after_the_first_steps(capsys):
    plan = {"steps_total": 3600, "steps_done": 0, "evals_total": 0, "step_images": 10, "eval_images": 0}
    shorter = ("--settings quick", {**plan, "steps_total": 120, "step_images": 5})  # 60 paper steps' work
    progress = Progress(False, "--settings paper (30 iterations)", shorter)
    progress("plan", plan)
    progress("phase", {"name": "warm-up"})
    _steps(progress, 3)
    assert "estimated" not in capsys.readouterr().err
    _steps(progress, 10, start=4)
    progress("phase", {"name": "initial archive"})
    progress.close()
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "estimated" in line] == [
        "[natdeploy] estimated total: ~2 h 0 min on this machine for --settings paper (30 iterations); "
        "--settings quick takes ~2 min, or lower --iterations"]
    assert any(line.startswith("[natdeploy] warm-up: done in ") for line in err)
    assert not any("initial archive: done" in line for line in err)  # not finished: no record


def test_a_short_phase_still_gives_the_estimate_with_measured_evaluations(capsys, monkeypatch):
    clock = iter([0.0, 10.0, 10.0, 10.0, 20.0, 20.0])
    monkeypatch.setattr("natdeploy.progress.time.perf_counter", lambda: next(clock))
    progress = Progress(False)
    progress("plan", {"steps_total": 2, "steps_done": 0, "evals_total": 5, "step_images": 1, "eval_images": 1})
    progress("phase", {"name": "initial archive"})  # t = 0
    progress("evaluated", {"done": 5, "total": 5})  # t = 10: 2 s an evaluation
    progress("phase", {"name": "adapting"})  # t = 10 (record), t = 10 (start)
    _steps(progress, 2, seconds=3.0)
    progress("iteration", {"iteration": 1, "archive": 5, "kendall_tau_unseen": 0.1})  # t = 20
    err = capsys.readouterr().err
    assert "estimated total: ~16 s on this machine for these settings" in err  # 2 x 3 s + 5 x 2 s
    assert "initial archive: done in 10.0 s" in err and "adapting: done in 10.0 s" in err


def test_a_resumed_phase_shows_no_absurd_first_rate(monkeypatch):
    progress = Progress(False)
    progress.disable = False  # a bar even though stderr is not a terminal here
    progress("plan", {"steps_total": 1000, "steps_done": 0})
    progress("step", {"step": 500, "total": 1000, "images": 64, "seconds": 1.0})
    bar = progress.bar
    assert bar.n == 500 and bar.format_dict["initial"] == 500  # the rate counts from the resumed step only
    progress.close()
