"""NAT's width gene: one search over two supernets (w1.0 and w1.2), each Arch evaluated and adapted on its own."""

import json

import numpy as np
import pytest
import torch

from natdeploy.data import load_digits_data
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.search import NATConfig, NATSearch, SearchError, run_search
from natdeploy.search import nat as nat_module
from natdeploy.space import Arch, SearchSpace

SPACE = SearchSpace(resolutions=(32, 40), widths=(1.0, 1.2), name="tiny")
TINY = dict(iterations=1, initial_archs=5, population=8, generations=2, candidates_per_iter=2, top_archs=8,
            subnets_per_step=1, epochs_per_iter=1, warmup_epochs=1, batch_size=32, bn_batches=1, val_limit=32)
WIDTHS = (1.0, 1.2)


@pytest.fixture(scope="module")
def predictor(tiny_table):
    # the session's tiny table, profiled at w1.0 only: w1.2's ops are the predictor's estimates (the search warns
    # with their share)
    assert SPACE.at_width(1.0).resolutions == (32, 40)
    return LatencyPredictor.load(tiny_table)


@pytest.fixture(scope="module")
def data():
    d = load_digits_data(size=40)
    d.train_x, d.train_y = d.train_x[:64], d.train_y[:64]
    return d


def _search(run_dir, data, predictor, **kw):
    config = NATConfig(**{**TINY, **kw.pop("config", {})})
    return run_search(run_dir, data, {"cpu": predictor}, {"cpu": 100.0}, SPACE, config, widths=WIDTHS, **kw)


def _archive(run_dir):
    return [json.loads(line) for line in (run_dir / "archive.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_width_run(tmp_path_factory, data, predictor):
    """A finished one-iteration search over both widths."""
    run_dir = tmp_path_factory.mktemp("widths") / "a"
    _search(run_dir, data, predictor)
    return run_dir


def test_archive_holds_both_widths_each_with_its_own_supernet(two_width_run):
    names = {p.name for p in two_width_run.iterdir()}
    assert {"supernet-w1.0.pt", "supernet-w1.2.pt", "supernet-w1.0.prev.pt", "supernet-w1.2.prev.pt"} <= names
    assert "supernet.pt" not in names and not any(n.startswith("phase") for n in names)
    state = json.loads((two_width_run / "state.json").read_text())
    assert state["space"]["widths"] == [1.0, 1.2] and state["supernet_source"] == "scratch"
    archive = _archive(two_width_run)
    assert {Arch.from_string(e["arch"]).w for e in archive} == {1.0, 1.2}
    steps = [json.loads(line) for line in (two_width_run / "metrics.jsonl").read_text().splitlines()]
    assert {(r["phase"], r["width"]) for r in steps if r["kind"] == "step"} == {
        (phase, w) for phase in ("warmup", "adapt-1") for w in WIDTHS}


def test_an_arch_is_evaluated_on_its_widths_supernet(two_width_run, data, predictor, monkeypatch):
    search = NATSearch.resume(two_width_run, data, {"cpu": predictor})
    archive = search.archive
    pick = [next(e for e in archive if Arch.from_string(e.arch).w == w) for w in WIDTHS]
    archs = [Arch.from_string(e.arch) for e in pick]
    # which supernet evaluates which Arch (a perturbed supernet would not tell: a tiny run's subnets can sit at
    # chance accuracy, where perturbing their weights changes nothing)
    routed = []

    def recording(net, subnets, *args, **kwargs):
        routed.append((net, [a.w for a in subnets]))
        return real(net, subnets, *args, **kwargs)

    real = nat_module.evaluate_archs
    monkeypatch.setattr(nat_module, "evaluate_archs", recording)
    before = search._accuracies(archs, lambda *a: None)
    assert before == [e.accuracy for e in pick]  # the archive's accuracies were measured on these checkpoints
    assert routed == [(search.supernets[w], [w]) for w in WIDTHS]
    assert search.supernets[1.0] is not search.supernets[1.2]


def test_resume_inside_the_second_widths_adaptation_is_exact(tmp_path, two_width_run, data, predictor):
    def killed(kind, info):
        if kind == "phase" and info["name"] == "adapt-1: the w1.2 supernet":
            raise KeyboardInterrupt

    run_dir = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        _search(run_dir, data, predictor, on_event=killed)
    assert (run_dir / "phase-w1.0.pt").exists()  # w1.0's finished adaptation is kept
    seen = []
    _search(run_dir, data, predictor, resume=True,
            on_event=lambda kind, info: seen.append(info.get("name")) if kind == "phase" else None)
    assert "adapt-1: w1.0 already trained (from its checkpoint)" in seen
    assert _archive(run_dir) == _archive(two_width_run)
    for w in WIDTHS:
        a = torch.load(run_dir / f"supernet-w{w}.pt", weights_only=True)["state_dict"]
        b = torch.load(two_width_run / f"supernet-w{w}.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_changed_widths_is_refused(two_width_run, data, predictor):
    with pytest.raises(SearchError, match=r"--resume with changed --width \(1 1.2 -> 1\)"):
        run_search(two_width_run, data, {"cpu": predictor}, {"cpu": 100.0}, SPACE, NATConfig(**TINY), resume=True,
                   widths=(1.0,))


def test_export_of_a_w12_arch_uses_the_w12_supernet(two_width_run, tmp_path, predictor):
    from natdeploy.export import export_bundle
    from natdeploy.export.source import from_run

    entry = max((e for e in _archive(two_width_run) if Arch.from_string(e["arch"]).w == 1.2),
                key=lambda e: e["accuracy"])
    src = from_run(two_width_run, arch=entry["arch"])
    assert src.supernet.width == 1.2 and src.supernet_path.name == "supernet-w1.2.pt"
    assert src.archive_entry["accuracy"] == entry["accuracy"]
    res = export_bundle(two_width_run, tmp_path / "out", formats="onnx", arch=entry["arch"], parity_images=4,
                        measure_latency=False, predictors={"cpu": predictor})
    assert res.arch == Arch.from_string(entry["arch"]) and res.metadata["source"]["supernet"].endswith("w1.2.pt")


@pytest.mark.parametrize("kw,match", [
    (dict(widths=(1.0, 1.0)), "names a width twice"),
    (dict(widths=(1.0,), supernet=["scratch", "x.pt"]), "cannot be combined"),
    (dict(widths=(1.2,), supernet="ofa_mbv3_d234_e346_k357_w1.2"), "--width applies from scratch"),
])
def test_bad_widths_are_refused_before_anything_is_written(tmp_path, data, predictor, kw, match):
    with pytest.raises(SearchError, match=match):
        run_search(tmp_path / "r", data, {"cpu": predictor}, {"cpu": 100.0}, SPACE, NATConfig(**TINY), **kw)
    assert not (tmp_path / "r").exists()


def test_two_supernets_of_one_width_are_refused(tmp_path, data, predictor):
    from natdeploy.supernet import OFAMobileNetV3Supernet, save_supernet

    paths = [save_supernet(OFAMobileNetV3Supernet(n_classes=10), tmp_path / f"{i}.pt") for i in range(2)]
    with pytest.raises(SearchError, match="two supernets of width 1.0"):
        run_search(tmp_path / "r", data, {"cpu": predictor}, {"cpu": 100.0}, SPACE, NATConfig(**TINY),
                   supernet=[str(p) for p in paths])
    assert not (tmp_path / "r").exists()
