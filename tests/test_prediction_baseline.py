"""No behaviour change in latency prediction: today's code predicts what the code before the seams refactor did.

tests/data/prediction_baseline.json holds 2,000 seeded random Archs per table (small + nat presets on the shipped
cpu and cpu-litert tables; ofa + nat presets on OFA's Note10 tables imported from ../shared/data), written by
tests/make_prediction_baseline.py at the commit it records. The note10 cases were regenerated since (the file's
``note10_regenerated``): imported OFA tables now keep each resolution's own values of the ops that several
resolutions share, so their sums are OFA's own (tests/test_ofa_import.py checks them against the YAML files).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.space import Arch

ROOT = Path(__file__).resolve().parents[1]
BASELINE = json.loads((ROOT / "tests" / "data" / "prediction_baseline.json").read_text())


def _check(pred: LatencyPredictor, device: str) -> None:
    cases = {k: v for k, v in BASELINE["cases"].items() if k.startswith(f"{device}/")}
    assert len(cases) == 2
    for name, case in cases.items():
        got = pred.predict([Arch.parse(a) for a in case["archs"]], n_classes=BASELINE["n_classes"])
        np.testing.assert_allclose(got, case["ms"], rtol=0, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("device", ["cpu", "cpu-litert"])
def test_shipped_tables_predict_as_before(device):
    _check(LatencyPredictor.load(ROOT / "latency_tables" / f"{device}.json"), device)


def test_imported_note10_table_predicts_as_before(shared_data):
    from natdeploy.latency.ofa_import import import_ofa_tables

    _check(LatencyPredictor.fit(import_ofa_tables(shared_data / "ofa_note10_lut", "note10")), "note10")
