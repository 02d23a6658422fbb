"""The speed model (natdeploy.latency.speed): normalisation, a pure fit, and its round trip through a table."""

import dataclasses
import math

import numpy as np
import pytest

from natdeploy.latency import LatencyTable, Measurement, space_ops
from natdeploy.latency.speed import (MIN_E2E_FOR_ELASTICITY, SpeedFit, SpeedModel, fit, implied_anchor_ms,
                                     nominal_anchor_ms)
from natdeploy.space import SearchSpace


def _m(p10, anchor=None, ratio=None):
    return Measurement(median_ms=p10, mean_ms=p10 + 0.1, std_ms=0.0, count=5, warmup=1, p10_ms=p10, min_ms=p10,
                       anchor_ms=anchor, anchor_ratio=ratio)


def test_normalise_reads_ratio_then_anchor_then_the_statistic():
    model = SpeedModel(nominal_anchor_ms=2.0)
    assert model.normalise(_m(9.0, anchor=4.0, ratio=0.25)) == pytest.approx(0.5)  # ratio x nominal
    assert model.normalise(_m(1.5, anchor=3.0)) == pytest.approx(1.0)  # no ratio: scaled by nominal / its anchor
    assert model.normalise(_m(0.7)) == 0.7  # no anchor: as measured
    assert SpeedModel(None).normalise(_m(0.7, anchor=3.0, ratio=0.2)) == 0.7  # no nominal speed: as measured
    assert SpeedModel(2.0, statistic="mean").normalise(_m(0.7)) == pytest.approx(0.8)
    assert model.anchored(_m(1.0, anchor=3.0)) and not model.anchored(_m(1.0)) and not SpeedModel(None).anchored(
        _m(1.0, anchor=3.0))


def test_elasticity_corrects_ratios_taken_at_another_speed():
    slow = _m(6.0, anchor=2.0 * math.e ** 0.3, ratio=0.5)  # the machine ran exp(0.3) slower than nominal
    plain, corrected = SpeedModel(2.0), SpeedModel(2.0, elasticity=-0.6)
    assert plain.normalise(slow) == pytest.approx(1.0)
    assert corrected.normalise(slow) == pytest.approx(2.0 * math.exp(math.log(0.5) / (1 - 0.18)))
    at_nominal = _m(1.0, anchor=2.0, ratio=0.5)  # no speed difference: the elasticity changes nothing
    assert corrected.normalise(at_nominal) == pytest.approx(plain.normalise(at_nominal))
    far = _m(1.0, anchor=2.0 * math.e ** 5, ratio=0.5)  # the divisor is kept within [0.5, 2]
    assert corrected.normalise(far) == pytest.approx(2.0 * math.exp(math.log(0.5) / 0.5))


def test_model_is_frozen_and_nominal_is_the_median_anchor():
    model = SpeedModel(2.0, 0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.elasticity = 0.5
    ms = [_m(1.0, anchor=a) for a in (1.0, 3.0, 2.5)] + [_m(1.0)]
    assert nominal_anchor_ms(ms) == 2.5 and nominal_anchor_ms([_m(1.0)]) is None
    assert SpeedModel.of(ms, -0.3, "mean") == SpeedModel(2.5, -0.3, "mean")
    assert implied_anchor_ms(_m(1.0, anchor=3.0, ratio=0.25), "p10") == 4.0
    assert implied_anchor_ms(_m(1.0, anchor=3.0), "p10") == 3.0


def _anchored_e2e(elasticity, spread, n=60):
    """Subnets of known latency at nominal speed (anchor 2 ms), measured in batches at machine speeds spread over
    +-``spread`` (log), their ratios distorted as ``elasticity`` says."""
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.5, 6.0, n)
    out = []
    for k, t in enumerate(truth):
        s = spread * (2 * (k % 6) / 5 - 1)
        ratio = math.exp(math.log(t / 2.0) * (1 + elasticity * s))
        out.append(_m(2.0 * math.exp(s) * ratio, anchor=2.0 * math.exp(s), ratio=ratio))
    return truth, out


def test_fit_is_pure_and_recovers_the_elasticity():
    truth, e2e = _anchored_e2e(-0.6, 0.3)
    before = list(e2e)
    base = SpeedModel.of(e2e, elasticity=0.3)
    calls = []

    def oracle(model, train, held):  # a "predictor" that knows each subnet's latency at nominal speed
        calls.append((model, len(train), len(held)))
        assert len(set(train) & set(held)) == 0 and len(train) + len(held) == len(e2e)
        return truth[held]

    result = fit(base, e2e, oracle, folds=5, grid=(-1.0, -0.6, -0.2, 0.0))
    assert isinstance(result, SpeedFit) and result.model == SpeedModel(base.nominal_anchor_ms, -0.6, "p10")
    assert min(result.scores, key=result.scores.get) == -0.6 and set(result.scores) == {-1.0, -0.6, -0.2, 0.0}
    assert base.elasticity == 0.3 and e2e == before  # nothing passed in changed
    assert len(calls) == 4 * 5 and {m.elasticity for m, _, _ in calls} == {-1.0, -0.6, -0.2, 0.0}
    assert fit(base, e2e, oracle, folds=5, grid=(-1.0, -0.6, -0.2, 0.0)) == result  # deterministic for a seed


def test_fit_keeps_zero_when_measurements_cannot_tell():
    _, one_speed = _anchored_e2e(-0.6, 0.0)
    never = lambda *a: pytest.fail("no cross-validation expected")  # noqa: E731
    assert fit(SpeedModel(2.0, 0.4), one_speed, never) == SpeedFit(SpeedModel(2.0, 0.0))
    _, few = _anchored_e2e(-0.6, 0.3, n=MIN_E2E_FOR_ELASTICITY - 1)
    assert fit(SpeedModel(2.0), few, never).scores == {}
    _, varied = _anchored_e2e(-0.6, 0.3)
    assert fit(SpeedModel(None), varied, never).model.elasticity == 0.0  # no nominal speed
    assert fit(SpeedModel(2.0), [*varied, _m(1.0)], never).scores == {}  # one subnet without an anchor ratio


def test_table_stores_measurements_and_elasticity_and_round_trips_its_model(tmp_path):
    ops = space_ops(SearchSpace.preset("small"), 10, [32])[:3]
    table = LatencyTable(device="cpu", n_classes=10, statistic="p10", speed_elasticity=-0.5)
    for op, anchor in zip(ops, (2.0, 3.0, 2.2)):
        table.add_op(op, _m(1.0, anchor=anchor, ratio=0.5))
    assert table.speed == SpeedModel(2.2, -0.5, "p10")
    table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(tmp_path / "t.json")
    assert loaded.speed == table.speed and loaded.ops == table.ops
    assert loaded.fingerprint() == table.fingerprint()
    # the nominal speed follows the measurements: it is computed from them, never stored beside them
    loaded.add_op(ops[0], _m(1.0, anchor=9.0, ratio=0.5))
    assert loaded.speed.nominal_anchor_ms == 3.0
