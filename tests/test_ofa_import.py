"""OFA's published lookup tables imported exactly: at every imported resolution, a subnet's predicted latency is
the sum that OFA itself would compute from that resolution's YAML file.

The reference sum is computed here from the YAML files alone: OFA's keys are built per layer of the w1.2
MobileNetV3 (stem, block 0, up to 20 elastic blocks, head) as OFA's LatencyEstimator names them, independent of
natdeploy's OpSig and layer plan.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from natdeploy.latency.measure import Measurement
from natdeploy.latency.ofa_import import import_ofa_tables
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.table import LatencyTable
from natdeploy.space import Arch, SearchSpace

# OFA MobileNetV3 w1.2: stem and block-0 width, per-stage widths and settings, head widths
STEM = 24
WIDTHS = (32, 48, 96, 136, 192)
STRIDES = (2, 2, 2, 1, 2)
HSWISH = (0, 0, 1, 1, 1)
SE = (0, 1, 0, 1, 1)
FINAL, MIX, CLASSES = 1152, 1536, 1000


def _shape(*dims: int) -> str:
    return "x".join(str(d) for d in dims)


def _mb_key(fsize: int, c_in: int, out: int, c_out: int, mid: int, k: int, stride: int, skip: int, se: int,
            hs: int) -> str:
    return (f"expanded_conv-input:{_shape(fsize, fsize, c_in)}-output:{_shape(out, out, c_out)}-expand:{mid}"
            f"-kernel:{k}-stride:{stride}-idskip:{skip}-se:{se}-hs:{hs}")


def ofa_keys(ks: list[int], e: list[int], d: list[int], r: int) -> list[str]:
    """The keys OFA's estimator looks up for one subnet, in network order (repeats kept)."""
    fsize = (r + 1) // 2
    keys = [f"Conv-input:{_shape(r, r, 3)}-output:{_shape(fsize, fsize, STEM)}",
            _mb_key(fsize, STEM, fsize, STEM, STEM, 3, 1, 1, 0, 0)]
    c_in = STEM
    for i in range(20):
        stage, pos = divmod(i, 4)
        if pos >= d[stage]:
            continue
        stride = STRIDES[stage] if pos == 0 else 1
        out = (fsize - 1) // stride + 1
        keys.append(_mb_key(fsize, c_in, out, WIDTHS[stage], round(c_in * e[i]), ks[i], stride, int(pos > 0),
                            SE[stage], HSWISH[stage]))
        fsize, c_in = out, WIDTHS[stage]
    keys += [f"Conv_1-input:{_shape(fsize, fsize, c_in)}-output:{_shape(fsize, fsize, FINAL)}",
             f"AvgPool2D-input:{_shape(fsize, fsize, FINAL)}-output:{_shape(1, 1, FINAL)}",
             f"Conv_2-input:{_shape(1, 1, FINAL)}-output:{_shape(1, 1, MIX)}",
             f"Logits-input:{_shape(1, 1, MIX)}-output:{CLASSES}"]
    return keys


@pytest.fixture(scope="module")
def note10(shared_data):
    folder = shared_data / "ofa_note10_lut"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    luts = {}
    for path in sorted(folder.glob("*_lookup_table.yaml")):
        r = int(re.fullmatch(r"(\d+)_lookup_table\.yaml", path.name).group(1))
        luts[r] = yaml.safe_load(path.read_text())
    table = import_ofa_tables(folder, "note10")
    return luts, table, LatencyPredictor.fit(table)


def test_imported_resolutions_predict_ofas_own_sum(note10):
    luts, table, pred = note10
    assert sorted(table.provenance["resolutions"]) == sorted(luts)
    rng = np.random.default_rng(17)
    for r, lut in sorted(luts.items()):
        archs = SearchSpace(resolutions=(r,), widths=(1.2,)).sample(rng, 200)
        archs.append(Arch(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r=r, w=1.2))  # the smallest subnet
        archs.append(Arch(ks=[7] * 20, e=[6] * 20, d=[4] * 5, r=r, w=1.2))  # the largest
        expected = [sum(float(lut[k]["mean"]) for k in ofa_keys(list(a.ks), list(a.e), list(a.d), r))
                    for a in archs]
        got = pred.predict(archs, n_classes=CLASSES)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9, err_msg=f"resolution {r}")
        parts = pred.predict_parts(archs[-2:], n_classes=CLASSES)  # the per-Arch path agrees with the batch path
        np.testing.assert_allclose([p.lut_ms for p in parts], expected[-2:], rtol=1e-12)
        assert all(p.n_missing == 0 for p in parts)


def test_smallest_subnet_at_160_is_ofas_9_890_ms(note10):
    _, _, pred = note10
    smallest = Arch(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r=160, w=1.2)
    assert pred.predict(smallest, n_classes=CLASSES)[0] == pytest.approx(9.8903, abs=1e-4)


def test_shared_ops_keep_each_resolutions_value_and_survive_a_round_trip(note10, tmp_path):
    luts, table, _ = note10
    shared = [k for k in table.ops if sum(k in lut for lut in luts.values()) > 1]
    assert any(k.startswith("Conv_2") for k in shared) and any(k.startswith("Logits") for k in shared)
    for r, lut in luts.items():
        for k in shared:
            if k in lut:
                assert table.op_at(k, r).mean_ms == float(lut[k]["mean"]), (r, k)
    path = table.save(tmp_path / "note10.json")
    loaded = LatencyTable.load(path)
    assert loaded.resolution_ops == table.resolution_ops and loaded.fingerprint() == table.fingerprint()


def test_measured_tables_have_no_resolution_ops_field(tmp_path):
    t = LatencyTable(device="x")
    t.ops["Conv_2-input:1x1x960-output:1x1x1280"] = Measurement(1.0, 1.0, 0.0, 3, 1)
    assert "resolution_ops" not in t.to_json()  # so the shipped tables' content and fingerprints stay as they are
    assert LatencyTable.load(t.save(tmp_path / "x.json")).resolution_ops == {}
