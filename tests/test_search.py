import json
import math
import shutil

import numpy as np
import pytest

from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search import NATConfig, SearchError, run_search
from natdeploy.search.problem import canonical, repair_genomes
from tiny_fixtures import TINY_NAT, tiny_budget, tiny_digits, tiny_space

SPACE = tiny_space()
TINY = TINY_NAT


@pytest.fixture(scope="module")
def predictor(tiny_table):
    return LatencyPredictor.load(tiny_table)


@pytest.fixture(scope="module")
def data():
    return tiny_digits()


def test_repair_keeps_two_blocks_per_stage_and_canonical_order():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 10, size=(200, 22)).astype(float)
    raw[:, :2] = 0
    fixed = repair_genomes(SPACE, raw + rng.normal(0, 0.3, raw.shape), rng)
    for g in fixed:
        SPACE.decode(g)  # valid
    assert (canonical(fixed) == fixed).all()


def test_budget_below_fastest_subnet_is_refused(tmp_path, data, predictor):
    with pytest.raises(SearchError, match=r"below the fastest subnet of the space \(\d+\.\d+ ms predicted\)"):
        run_search(tmp_path / "r", data, {"cpu": predictor}, {"cpu": 0.001}, SPACE, NATConfig(**TINY))
    assert not (tmp_path / "r").exists()


def test_search_outputs_budget_and_exact_resume(tmp_path, data, predictor, tiny_nat_run):
    budget = tiny_budget(predictor, SPACE)
    # the straight two-iteration run: the session's (conftest.tiny_nat_run, with these settings and this budget)
    assert tiny_nat_run.budget == budget
    straight = tiny_nat_run.result
    run_dir = shutil.copytree(tiny_nat_run.run, tmp_path / "a")
    for name in ("archive.jsonl", "pareto.json", "pareto.png", "best.json", "supernet.pt", "state.json"):
        assert (run_dir / name).exists(), name
    archive = [json.loads(line) for line in (run_dir / "archive.jsonl").read_text().splitlines()]
    assert len(archive) >= TINY["initial_archs"] + 2
    assert {e["iteration"] for e in archive} >= {0, 1}
    assert all(0 <= e["accuracy"] <= 1 and e["latency_ms"]["cpu"] > 0 for e in archive)
    best = straight["best"]
    assert best["latency_ms"]["cpu"] <= budget
    assert best["accuracy"] == max(e["accuracy"] for e in archive if e["latency_ms"]["cpu"] <= budget)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["completed_iteration"] == 2 and len(state["tau_history"]) == 2
    # NaN where every held-out fold's accuracies are equal (cross_validated_tau: no ranking to agree with)
    assert all(math.isnan(t["kendall_tau_cv"]) or -1 <= t["kendall_tau_cv"] <= 1 for t in state["tau_history"])
    assert all(t["search_overhead_s"] >= 0 for t in state["timings"] if "iteration" in t)

    # Killed after its first iteration, then resumed: the same archive as the straight run, to the last digit.
    def killed_after_first(kind, info):
        if kind == "iteration" and info["iteration"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(tmp_path / "b", data, {"cpu": predictor}, {"cpu": budget}, SPACE,
                   NATConfig(**{**TINY, "iterations": 2}), on_event=killed_after_first)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["completed_iteration"] == 1
    run_search(tmp_path / "b", data, {"cpu": predictor}, {"cpu": budget}, SPACE,
               NATConfig(**{**TINY, "iterations": 2}), resume=True)
    resumed = [json.loads(line) for line in (tmp_path / "b" / "archive.jsonl").read_text().splitlines()]
    assert resumed == archive
    # A finished run extended to more iterations goes on (the adaptation schedule is spread over the new total).
    run_search(tmp_path / "b", data, {"cpu": predictor}, {"cpu": budget}, SPACE,
               NATConfig(**{**TINY, "iterations": 3}), resume=True, extend=True)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["completed_iteration"] == 3

    with pytest.raises(SearchError, match="already holds a search"):
        run_search(tmp_path / "a", data, {"cpu": predictor}, {"cpu": budget}, SPACE, NATConfig(**TINY))


def test_adaptation_continues_one_cosine_schedule_over_the_iterations(data, monkeypatch):
    import math

    import torch

    from natdeploy.supernet import OFAMobileNetV3Supernet
    from natdeploy.train import train_epochs

    lrs = []
    real_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    net = OFAMobileNetV3Supernet(n_classes=10)
    sample = lambda rng, n: SPACE.sample(rng, n)  # noqa: E731
    # 64 training images in batches of 32: 2 steps an epoch; the second epoch of 2 is steps 2 and 3 of 4
    train_epochs(net, data, SPACE, 1, sample, 1, seed=0, lr=0.1, batch_size=32, schedule=(1, 2))
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * s / 4)) for s in (2, 3)])
    lrs.clear()
    train_epochs(net, data, SPACE, 1, sample, 1, seed=0, lr=0.1, batch_size=32)  # alone: a whole cosine
    assert lrs == pytest.approx([0.1, 0.05])
    with pytest.raises(ValueError, match="does not hold 2 more epochs"):
        train_epochs(net, data, SPACE, 2, sample, 1, seed=0, schedule=(1, 2))
