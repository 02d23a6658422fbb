"""``--tensorboard``: the event files hold the same metrics as metrics.jsonl, at the same steps."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from natdeploy.data import load_digits_data
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search import NATConfig, run_search
from natdeploy.space import SearchSpace
from natdeploy.tensorboard_log import TensorBoardError, TensorBoardLog, require_tensorboard

SPACE = SearchSpace(resolutions=(32,), widths=(1.0,), name="tiny")
TINY = dict(iterations=1, initial_archs=3, population=8, generations=2, candidates_per_iter=2, top_archs=8,
            subnets_per_step=1, epochs_per_iter=1, warmup_epochs=1, batch_size=32, bn_batches=1, val_limit=16)


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag's (step, value) pairs, read back with TensorBoard's own reader (on its TensorFlow stub:
    TensorFlow loaded before torch's first triton import crashes the process, see natdeploy.tensorboard_log)."""
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert np.allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6)


def test_search_writes_metrics_jsonl_as_tensorboard_events(tmp_path, tiny_table):
    data = load_digits_data(size=32)
    data.train_x, data.train_y = data.train_x[:32], data.train_y[:32]  # one step per epoch
    predictor = LatencyPredictor.load(tiny_table)  # the session's table covers 32 and 40 px
    budget = float(np.median(predictor.predict(SPACE.sample(np.random.default_rng(0), 20))))
    run_search(tmp_path / "r", data, {"cpu": predictor}, {"cpu": budget}, SPACE, NATConfig(**TINY),
               tensorboard=True)
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    iterations = [r for r in records if r["kind"] == "iteration"]
    assert {r["phase"] for r in steps} == {"warmup", "adapt-1"} and [r["iteration"] for r in iterations] == [0, 1]
    events = read_events(tmp_path / "r" / "tensorboard")
    for key in ("loss", "images_per_s"):  # per step, numbered across the phases
        assert [s for s, _ in events[f"step/{key}"]] == list(range(1, len(steps) + 1))
        assert np.allclose([v for _, v in events[f"step/{key}"]], [r[key] for r in steps], rtol=1e-6)
    for key in ("best_accuracy", "archive"):
        same(events[f"iteration/{key}"], [(r["iteration"], r[key]) for r in iterations])
    hv = [(r["iteration"], r["hypervolume"]["cpu"]) for r in iterations if r["hypervolume"]["cpu"] is not None]
    same(events.get("iteration/hypervolume/cpu", []), hv)
    taus = {k for r in iterations for k, v in r.items() if k.startswith("tau") and isinstance(v, (int, float))}
    for k in taus:
        assert [s for s, _ in events[f"iteration/{k}"]] == [r["iteration"] for r in iterations if k in r]
    assert not any(tag.startswith(("step/phase", "step/step", "iteration/iteration")) for tag in events)


def test_resumed_log_continues_the_step_count(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"kind": "step", "phase": "warmup", "step": i,
                                                                "loss": 1.0}) + "\n" for i in (1, 2)))
    log = TensorBoardLog(tmp_path, tmp_path / "metrics.jsonl")
    log.add({"kind": "step", "phase": "iteration 1", "step": 1, "loss": 0.5, "lr": None})
    log.close()
    assert read_events(tmp_path / "tensorboard") == {"step/loss": [(3, 0.5)]}


def test_missing_tensorboard_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` raise ImportError
    with pytest.raises(TensorBoardError, match=r"^--tensorboard needs the tensorboard package"):
        require_tensorboard()
