"""int8 (and fp16) latency tables: a spec's precision decides what is built and measured, the table records it, and
tables of one precision never serve or join another.

The profile runs for real at tiny size: one resolution, two ops, two whole subnets, through the LiteRT interpreter,
on .tflite files made by the exporter's post-training quantisation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from natdeploy.convert.runtime import tflite_interpreter
from natdeploy.devices import load_device
from natdeploy.errors import ConfigError, ConversionError
from natdeploy.latency import profiler
from natdeploy.latency.backends import BackendError, get_backend
from natdeploy.latency.ops import space_ops
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.store import predictor_for
from natdeploy.latency.table import LatencyTable, TableError
from natdeploy.space import Arch, SearchSpace

SMALL = SearchSpace.preset("small")
N_CLASSES = 10


def fast(name: str):
    return load_device(name).with_overrides(warmup=1, runs=3, e2e_warmup=1, e2e_runs=3, rounds=1, min_span_s=0,
                                            e2e_repeats=1)


def _dtypes(model: bytes) -> tuple[type, set[type]]:
    """(input dtype, dtypes of all tensors) of a .tflite model."""
    interp = tflite_interpreter(model)
    return interp.get_input_details()[0]["dtype"], {d["dtype"] for d in interp.get_tensor_details()}


def _two_ops():
    ops = space_ops(SMALL, N_CLASSES, [32])
    # A stem conv and an MBConv with SE: real compute, so that the quantised graph holds int8 kernels.
    mb = next(op for op in ops if op.kind == "expanded_conv" and op.se and op.in_hw == 8)
    return [ops[0], mb]


@pytest.fixture(scope="module")
def int8_profile(tmp_path_factory):
    """A real int8 profile of cpu-litert-int8 at 32 px: two ops, two whole subnets; with every artifact built."""
    tables = tmp_path_factory.mktemp("tables")
    spec = fast("cpu-litert-int8")
    ops = _two_ops()
    backend = get_backend(spec)
    built: dict[str, bytes] = {}
    build_op, built_arch = backend.build_op, backend.built_arch

    def keep_op(module, shape):
        artifact = build_op(module, shape)
        built[f"op{len(built)}"] = artifact
        return artifact

    def keep_arch(arch, n_classes):
        artifact, shape = built_arch(arch, n_classes)
        built[str(arch)] = artifact
        return artifact, shape

    backend.build_op, backend.built_arch = keep_op, keep_arch
    with pytest.MonkeyPatch.context() as mp:
        for name in ("space_ops", "profile_ops"):  # these two ops alone, and no classifier ladder
            mp.setattr(profiler, name, lambda space, n_classes, resolutions: list(ops))
        res = profiler.profile_device(spec, SMALL, resolutions=[32], e2e_samples=2, n_classes=N_CLASSES,
                                      out=tables / "cpu-litert-int8.json", quiet=True, backend=backend)
    return {"tables": tables, "result": res, "built": built, "ops": ops, "spec": spec}


def test_int8_profile_measures_quantised_artifacts_and_records_int8(int8_profile):
    res, built = int8_profile["result"], int8_profile["built"]
    table = LatencyTable.load(res.table_path)
    assert table.precision == "int8" and table.provenance["precision"] == "int8"
    assert sorted(table.ops) == sorted(op.key for op in int8_profile["ops"]) and len(table.e2e) == 2
    assert all(m.median_ms > 0 for m in (*table.ops.values(), *table.e2e.values()))
    op_models = [v for k, v in built.items() if k.startswith("op")]
    subnets = {k: v for k, v in built.items() if not k.startswith("op")}
    assert len(op_models) >= 2 and sorted(subnets) == sorted(table.e2e)
    for model in op_models:  # ops keep int8 input and output, as inside an int8 network
        inp, dtypes = _dtypes(model)
        assert inp == np.int8 and np.int8 in dtypes and np.float32 not in dtypes
    for model in subnets.values():  # whole subnets take float input, as the exporter ships them, and compute int8
        inp, dtypes = _dtypes(model)
        assert inp == np.float32 and np.int8 in dtypes


def test_predictor_for_an_int8_device_loads_the_int8_table(int8_profile, monkeypatch):
    tables = int8_profile["tables"]
    monkeypatch.setenv("NATDEPLOY_TABLES", str(tables))
    pred = predictor_for("cpu-litert-int8")
    assert pred.table.precision == "int8"
    assert all(pred.op_latency(int8_profile["ops"]) > 0)  # two ops: too few to predict whole subnets from
    # The int8 table under an fp32 device's name is refused, and so is an fp32 table under the int8 device's.
    (tables / "cpu-litert.json").write_text(int8_profile["result"].table_path.read_text())
    with pytest.raises(TableError, match="measured int8 models, not fp32"):
        predictor_for("cpu-litert")
    fp32 = json.loads(int8_profile["result"].table_path.read_text())
    fp32["provenance"]["precision"] = "fp32"
    other = tables / "other"
    other.mkdir()
    (other / "cpu-litert-int8.json").write_text(json.dumps(fp32))
    monkeypatch.setenv("NATDEPLOY_TABLES", str(other))
    with pytest.raises(TableError, match="measured fp32 models, not int8"):
        predictor_for("cpu-litert-int8")


def test_profiling_never_mixes_precisions_even_with_force(int8_profile, tmp_path):
    out = tmp_path / "t.json"
    out.write_text(int8_profile["result"].table_path.read_text())
    for force in (False, True):
        with pytest.raises(TableError, match="measured int8 models, not fp32.*never mixes precisions"):
            profiler.profile_device(fast("cpu-litert"), SMALL, resolutions=[32], e2e_samples=0, n_classes=N_CLASSES,
                                    out=out, quiet=True, force=force)
    # A table that records no precision is fp32: an int8 spec does not join it either.
    raw = json.loads(out.read_text())
    del raw["provenance"]["precision"]
    out.write_text(json.dumps(raw))
    assert LatencyTable.load(out).precision == "fp32"
    with pytest.raises(TableError, match="measured fp32 models, not int8"):
        profiler.profile_device(int8_profile["spec"], SMALL, resolutions=[32], e2e_samples=0, n_classes=N_CLASSES,
                                out=out, quiet=True)


def test_export_check_warns_when_an_int8_file_meets_an_fp32_table(int8_profile):
    from natdeploy.export.latency_check import check_latency

    subnets = {k: v for k, v in int8_profile["built"].items() if not k.startswith("op")}
    name, model = next(iter(subnets.items()))
    arch = Arch.parse(name)
    int8_pred = LatencyPredictor.load(int8_profile["result"].table_path)
    fp32_table = LatencyTable.load(int8_profile["result"].table_path)
    fp32_table.provenance["precision"] = "fp32"
    fp32_pred = LatencyPredictor.fit(fp32_table)
    report, warnings = check_latency(arch, N_CLASSES, ["cpu-litert-int8", "cpu-litert"], {"tflite": model}, {},
                                     predictors={"cpu-litert-int8": int8_pred, "cpu-litert": fp32_pred},
                                     specs={"cpu-litert-int8": int8_profile["spec"], "cpu-litert": fast("cpu-litert")},
                                     precision={"tflite": "int8"})
    assert report["cpu-litert-int8"]["measured_ms"] > 0 and report["cpu-litert-int8"]["notes"] == []
    assert len(warnings) == 1 and report["cpu-litert"]["notes"] == warnings
    assert "model.tflite is int8, but the latency table of cpu-litert measured fp32" in warnings[0]
    assert "--device cpu-litert-int8" in warnings[0]


@pytest.mark.parametrize("yaml_text, message", [
    ("runtime: onnxruntime\nprecision: int8\n", "precision int8 needs runtime litert"),
    ("runtime: torch\nprecision: int8\n", "precision int8 needs runtime litert"),
    ("runtime: onnxruntime\nprecision: fp16\n", "precision fp16 needs runtime litert"),
    ("runtime: litert\nprecision: fp16\n", "fp16 is TFLite float16 quantisation for the GPU delegate"),
    ("runtime: litert\nprecision: int8\ngpu_delegate: true\n", "GPU delegate computes in floating point"),
    ("runtime: litert\nprecision: int4\n", "precision='int4' is not allowed"),
])
def test_specs_asking_for_a_precision_their_runtime_cannot_build_are_refused(tmp_path, yaml_text, message):
    path = tmp_path / "d.yaml"
    path.write_text("description: x\ntransport: local\n" + yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_device(str(path))


def test_precision_specs_and_backend_guard():
    assert load_device("cpu-litert-int8").precision == "int8"
    phone = load_device("pixel4-int8")
    assert phone.precision == "int8" and phone.transport == "adb"
    assert phone.resolutions == load_device("pixel4").resolutions
    gpu = load_device("pixel4-gpu").with_overrides(precision="fp16")  # fp16 is for the GPU delegate over adb
    assert gpu.precision == "fp16"
    with pytest.raises(ConfigError, match="needs runtime litert"):
        load_device("cpu").with_overrides(precision="int8")
    spec = load_device("cpu")
    object.__setattr__(spec, "precision", "int8")  # past the spec's own check: the backend still refuses
    with pytest.raises(BackendError, match="builds fp32 models, not int8"):
        get_backend(spec)


def test_int8_without_usable_representative_data_and_fp16_conversion():
    from natdeploy.convert.ops import build_op_module, op_input_shape
    from natdeploy.convert.tflite import tflite_bytes_at

    op = _two_ops()[0]
    layer = op.to_layer()
    module, shape = build_op_module(layer), op_input_shape(layer)
    with pytest.raises(ConversionError, match="calibration batch 0 has shape"):
        tflite_bytes_at(module, shape, "int8", calibration=[np.zeros((2, 3, 8, 8), np.float32)])
    with pytest.raises(ConversionError, match="int8_io=True needs precision int8"):
        tflite_bytes_at(module, shape, "fp16", int8_io=True)
    with pytest.raises(ConversionError, match="precision 'int4'"):
        tflite_bytes_at(module, shape, "int4")
    inp, dtypes = _dtypes(tflite_bytes_at(module, shape, "fp16"))
    assert inp == np.float32 and np.float16 in dtypes  # float16 weights, dequantised where the runtime needs
