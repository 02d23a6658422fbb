"""Few-shot transfer (natdeploy.latency.transfer): known scales are recovered, the table keeps its provenance and
predicts as fitted, and a prediction beyond the fitted subnets says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from natdeploy.latency import transfer as T
from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import arch_ops
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.store import predictor_for
from natdeploy.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace(resolutions=(32, 40, 48, 56, 64), widths=(1.0,))


@pytest.fixture(scope="module")
def source() -> LatencyPredictor:
    return LatencyPredictor.load(ROOT / "latency_tables" / "cpu.json")


def _measured(values) -> list[Measurement]:
    return [Measurement(v, v, 0.0, 1, 0, v, v) for v in values]


def test_a_global_scale_is_recovered_exactly(source):
    archs, held = T.few_shot_archs(SPACE, 12, 1), T.few_shot_archs(SPACE, 40, 2)
    model = T.fit_transfer(source, archs, 0.5 * source.predict(archs))
    assert model.method == "scale"  # the simplest method wins when nothing richer helps
    assert model.delta_intercept == pytest.approx(np.log(0.5), abs=1e-6)
    pred = T.predict(source, model, T.parts_of(source, held))
    np.testing.assert_allclose(pred, 0.5 * source.predict(held), rtol=1e-6)


def test_group_factors_are_recovered(source):
    archs, held = T.few_shot_archs(SPACE, 40, 3), T.few_shot_archs(SPACE, 40, 4)
    true = T.TransferModel("group", (1.0, 1.0, 1.0, 2.0), (), float(np.log(0.7)), (-9.0, 9.0), 10)
    y = T.predict(source, true, T.parts_of(source, archs))
    model = T.fit_method(source, T.parts_of(source, archs), np.log(y), "group")
    r = dict(zip(T.GROUPS, model.r))
    assert r["k7"] / r["k3"] == pytest.approx(2.0, rel=0.1)
    held_true = T.predict(source, true, T.parts_of(source, held))
    assert np.abs(T.predict(source, model, T.parts_of(source, held)) / held_true - 1).max() < 0.03
    assert T.fit_transfer(source, archs, y).method.startswith("group")  # auto sees that groups pay


def test_the_table_round_trips_with_its_provenance_and_predicts_as_fitted(source, tmp_path):
    archs = T.few_shot_archs(SearchSpace(resolutions=(32, 40), widths=(1.0,)), 8, 5)
    target = 1.3 * source.predict(archs)
    model = T.fit_transfer(source, archs, target)
    e2e = {a.to_string(): m for a, m in zip(archs, _measured(target))}
    src_path = ROOT / "latency_tables" / "cpu.json"
    table = T.transferred_table(source, model, "cpu", e2e, {"host": "test"}, src_path)
    path = table.save(tmp_path / "fs.json")
    T.transferred_predictor(source, model, table).save(tmp_path / "fs.xgb.json")
    loaded = predictor_for("cpu", path)
    prov = loaded.table.provenance
    assert prov["few_shot_n"] == 8 and prov["transferred_from"]["device"] == "cpu"
    assert prov["transferred_from"]["fingerprint"] == source.table.fingerprint()
    assert prov["transfer"]["method"] == model.method and prov["transfer"]["fitted_resolutions"] == [32, 40]
    np.testing.assert_allclose(loaded.predict(archs), T.predict(source, model, T.parts_of(source, archs)),
                               rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(archs), target, rtol=1e-5)


def test_a_body_groups_source_transfers_with_its_classifier_kept_apart(source, tmp_path):
    body = LatencyPredictor.fit(source.table, residual_features="body-groups")
    archs = T.few_shot_archs(SPACE, 20, 8)
    true = T.TransferModel("group", (1.5, 1.0, 1.0, 2.0), (), float(np.log(0.8)), (-9.0, 9.0), 1)
    parts = T.parts_of(body, archs)
    assert (parts.kept > 0).all() and (T.parts_of(source, archs).kept == 0).all()
    target = T.predict(body, true, parts)
    model = T.fit_transfer(body, archs, target, method="group")
    np.testing.assert_allclose(T.predict(body, model, parts), target, rtol=0.03)
    table = T.transferred_table(body, model, "cpu", dict(zip([a.to_string() for a in archs], _measured(target))),
                                {}, "src.json")
    pred = T.transferred_predictor(body, model, table)
    # the saved predictor computes what the transfer fitted, the classifier scaled by its group's factor only
    np.testing.assert_allclose(pred.predict(archs), T.predict(body, model, parts), rtol=1e-5)
    fixed = model.r[T.GROUPS.index("fixed")]
    head = [np.array([body.op_latency([op for op in arch_ops(a, n) if op.kind == "Logits"], a.r).sum()
                      for a in archs]) for n in (10, 1000)]
    np.testing.assert_allclose(pred.predict(archs, 1000) - pred.predict(archs, 10), fixed * (head[1] - head[0]),
                               rtol=1e-5, atol=1e-9)


def test_beyond_the_fitted_subnets_a_warning_says_so(source, tmp_path):
    archs = T.few_shot_archs(SearchSpace(resolutions=(32,), widths=(1.0,)), 4, 6)
    target = source.predict(archs)
    model = T.fit_transfer(source, archs, target, method="scale")
    table = T.transferred_table(source, model, "cpu", dict(zip([a.to_string() for a in archs], _measured(target))),
                                {}, "src.json")
    pred = T.transferred_predictor(source, model, table)
    assert pred.coverage_warning(archs) is None
    far = T.few_shot_archs(SearchSpace(resolutions=(48,), widths=(1.0,)), 1, 7)
    warning = pred.coverage_warning(far)
    assert "transferred from 'cpu'" in warning and "resolutions [48]" in warning and "outside" in warning
    assert source.table.beyond_fit(far) is None  # a measured table never says so


def test_the_cli_measures_n_subnets_and_saves_a_transferred_table(tmp_path, capsys):
    from natdeploy.cli import main

    spec = tmp_path / "fast.yaml"  # one quick timing pass per subnet: seconds, not the spec's 20 rounds
    spec.write_text("description: test\ntransport: local\nruntime: onnxruntime\nwarmup: 1\nruns: 5\n"
                    "e2e_warmup: 1\ne2e_runs: 5\n")
    src = shutil.copy(ROOT / "latency_tables" / "cpu.json", tmp_path / "src.json")
    shutil.copy(ROOT / "latency_tables" / "cpu.xgb.json", tmp_path / "src.xgb.json")
    out = tmp_path / "new.json"
    assert main(["profile", "--device", str(spec), "--few-shot", "3", "--from", str(src), "--resolutions", "32",
                 "--out", str(out)]) == 0
    assert "with 3 subnets measured here" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    assert raw["provenance"]["few_shot_n"] == 3 and len(raw["e2e"]) == 3
    assert raw["provenance"]["transferred_from"]["path"] == str(src)
    assert out.with_suffix(".xgb.json").is_file()
    assert LatencyPredictor.load(out).predict(T.few_shot_archs(SPACE, 2, 0)).min() > 0


def test_an_auto_speed_elasticity_comes_from_a_source_of_the_same_runtime(source):
    """N subnets are too few to fit an elasticity: `auto` takes the source table's where it ran the same runtime
    (measured: the Xeon cpu table's -0.5 lifted the host-cpu transfer at N=10 from 67.7% to 87.0% within +-10%),
    a number in the spec is used as it is, and another runtime's is never borrowed."""
    from natdeploy.devices import load_device

    archs = T.few_shot_archs(SPACE, 6, 8)
    measured = _measured(0.8 * source.predict(archs))
    cpu = load_device("cpu")
    assert cpu.speed_elasticity == "auto" and source.table.speed_elasticity != 0
    cases = [(cpu, source.table.speed_elasticity, "source table"),
             (cpu.with_overrides(speed_elasticity=-0.2), -0.2, "spec"),
             (load_device("cpu-litert").with_overrides(speed_elasticity="auto"), 0.0, "none")]
    for spec, value, origin in cases:
        pred = T.transfer_measured(source, "cpu.json", spec, {}, archs, measured, "scale")
        assert pred.table.speed_elasticity == pytest.approx(value)
        assert pred.table.provenance["transfer"]["speed_elasticity_from"].startswith(origin)
