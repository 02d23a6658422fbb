"""natdeploy export: a real (tiny) NAT run folder -> verified bundles; bad inputs leave nothing behind."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from natdeploy.data import ImageData, load_described, load_digits_data
from natdeploy.devices import load_device
from natdeploy.export import ExportError, build_subnet, export_bundle, verify
from natdeploy.cli.export import register as add_export_parser, run as cmd_export
from natdeploy.export.source import from_run
from natdeploy.search.nat import ArchiveEntry, SearchState
from natdeploy.search.report import best_within
from natdeploy.space import Arch, SearchSpace, madds, params
from natdeploy.supernet import OFAMobileNetV3Supernet, save_supernet
from natdeploy.train import evaluate, evaluate_arch, train_epochs
from tiny_fixtures import TINY_TABLE_E2E

SPACE = SearchSpace(resolutions=(32,), name="small")
DEVICES = ["cpu", "cpu-litert", "pixel4"]


def _fast(name: str):
    return load_device(name).with_overrides(e2e_warmup=1, e2e_runs=5, min_span_s=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_table):
    """A finished one-iteration run folder written the way NATSearch writes it, from real training and tables.

    The onnxruntime table is the session's ``tiny_table`` (its ops at 32 px are this space's), copied in as
    ``tables/cpu.json`` with its models."""
    root = tmp_path_factory.mktemp("export")
    data = load_digits_data(size=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = OFAMobileNetV3Supernet(n_classes=10)
    few = ImageData(data.train_x[:192], data.train_y[:192], data.val_x, data.val_y, data.classes, data.source,
                    data.mean, data.std)
    train_epochs(net, few, SPACE, 1, lambda rng, n: SPACE.sample(rng, n), 1, seed=0, lr=0.1, batch_size=64)
    tables = root / "tables"
    tables.mkdir()
    shutil.copyfile(tiny_table, tables / "cpu.json")
    shutil.copyfile(tiny_table.with_suffix(".xgb.json"), tables / "cpu.xgb.json")
    from natdeploy.latency.predictor import LatencyPredictor

    predictor = LatencyPredictor.load(tables / "cpu.json")
    # Profiling LiteRT or a phone would take minutes; the onnxruntime table stands in for their predictions,
    # which these tests only check are recorded beside the measurements.
    predictors = {d: predictor for d in DEVICES}
    archs = [SPACE.smallest(), SPACE.largest()] + SPACE.sample(np.random.default_rng(3), 2)
    archive = []
    for i, arch in enumerate(archs):
        lat = float(predictor.predict(arch, 10)[0])
        acc = evaluate_arch(net, arch, data, bn_batches=1, batch_size=128, seed=i, val_limit=128)
        archive.append(ArchiveEntry(SPACE.encode(arch).tolist(), str(arch), acc, {d: lat for d in DEVICES},
                                    madds(arch, 10), params(arch, 10), 0))
    budget = float(np.median([e.latency_ms["cpu"] for e in archive]))
    run = root / "run"
    run.mkdir()
    save_supernet(net, run / "supernet.pt", extra={"iteration": 1, "warmed_up": True})
    state = SearchState(config={"seed": 0, "bn_batches": 2}, devices=DEVICES, budgets={"cpu": budget},
                        space={"name": "small", "resolutions": [32], "widths": [1.0]}, data=data.describe(),
                        n_classes=10, completed_iteration=1, warmed_up=True, archive=[asdict(e) for e in archive])
    (run / "state.json").write_text(json.dumps(asdict(state), indent=1))
    specs = {d: _fast(d) for d in ("cpu", "cpu-litert")}
    return {"root": root, "run": run, "data": data, "archive": archive, "budget": budget, "tables": tables,
            "predictors": predictors, "specs": specs}


@pytest.fixture(scope="module")
def bundle(env):
    """The main export: the best Arch within the run's budget, both formats, int8 with int8 input/output."""
    return export_bundle(env["run"], env["root"] / "out" / "b", formats="tflite,onnx", int8=True, int8_io=True,
                         calibration_images=64, parity_images=16, predictors=env["predictors"],
                         device_specs=env["specs"])


def _no_leftovers(folder: Path) -> None:
    hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []
    assert not hidden, f"temporary files left behind: {hidden}"


def test_bundle_contents_labels_and_zip(env, bundle):
    out = bundle.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "labels.txt", "metadata.json", "model.onnx",
                                                      "model.tflite"]
    assert (out / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    assert bundle.zip_path == out.with_name("b.zip")
    with zipfile.ZipFile(bundle.zip_path) as zf:
        assert sorted(zf.namelist()) == sorted(f"b/{p.name}" for p in out.iterdir())
        for p in out.iterdir():
            assert zf.read(f"b/{p.name}") == p.read_bytes()
    _no_leftovers(out.parent)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta == bundle.metadata
    entries = [ArchiveEntry(**e) for e in json.loads((env["run"] / "state.json").read_text())["archive"]]
    best = best_within(entries, {"cpu": env["budget"]})
    assert meta["arch"]["string"] == best.arch == str(bundle.arch)
    assert meta["arch"]["dict"] == bundle.arch.to_dict()
    assert (meta["arch"]["madds"], meta["arch"]["params"]) == (best.madds, best.params)
    pre = meta["input"]["preprocessing"]
    assert pre["color_order"] == "RGB" and pre["value_scale"] == "0..1"
    assert pre["mean"] == list(env["data"].mean) and pre["std"] == list(env["data"].std)
    assert meta["budgets_ms"] == {"cpu": env["budget"]}
    assert meta["source"]["archive_entry"]["arch"] == best.arch
    for name, info in meta["files"].items():
        import hashlib

        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == info["sha256"]


def test_onnx_is_checked_static_and_matches_torch(bundle):
    meta = bundle.metadata
    model = onnx.load(str(bundle.out_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert not {n.op_type for n in model.graph.node} & {"Dropout", "BatchNormalization"}
    assert meta["input"]["onnx"] == {"shape": [1, 3, 32, 32], "layout": "NCHW", "dtype": "float32"}
    for name in ("onnx", "tflite_fp32"):
        p = meta["verification"]["parity"][name]
        assert p["passed"] and 0 <= p["relative_diff"] <= 1e-4 and p["n_images"] == 16
        assert p["inputs"] == "validation images" and p["output_range"] > 0


def test_tflite_is_nhwc_int8_and_int8_accuracy_recorded(env, bundle):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(bundle.out_dir / "model.tflite"))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert list(inp["shape"]) == [1, 32, 32, 3] and inp["dtype"] == np.int8 and out["dtype"] == np.int8
    meta = bundle.metadata
    t = meta["input"]["tflite"]
    assert t["layout"] == "NHWC" and t["shape"] == [1, 32, 32, 3] and t["dtype"] == "int8"
    assert t["quantization"]["scale"] == pytest.approx(float(inp["quantization"][0]))
    assert t["quantization"]["zero_point"] == int(inp["quantization"][1])
    assert meta["files"]["model.tflite"]["precision"] == "int8"
    q = meta["verification"]["int8"]
    n_val = len(env["data"].val_y)
    assert q["n_images"] == n_val and q["calibration_images"] == 64
    assert 0 <= q["top1_int8"] <= 1 and 0.5 <= q["agreement_with_fp32"] <= 1
    # The recorded fp32 accuracy is the exported subnet's, recomputed independently here.
    src = from_run(env["run"], arch=bundle.arch, data=env["data"])
    acc = evaluate(build_subnet(src), env["data"], 32)
    assert meta["accuracy"]["val_top1_fp32"] == pytest.approx(acc) == pytest.approx(q["top1_fp32"])
    assert meta["accuracy"]["n_images"] == n_val


def test_latency_measured_with_each_tables_backend(env, bundle):
    lat = bundle.metadata["latency"]
    predicted = float(env["predictors"]["cpu"].predict(bundle.arch, 10)[0])
    cpu, lite, phone = lat["cpu"], lat["cpu-litert"], lat["pixel4"]
    assert cpu["file"] == "model.onnx" and cpu["runtime"].startswith("onnxruntime")
    assert lite["file"] == "model.tflite" and lite["runtime"].startswith("ai-edge-litert")
    for d in (cpu, lite):
        assert d["measured_ms"] > 0 and d["measurement"]["count"] == 5
        assert d["predicted_ms"] == pytest.approx(predicted)
    tables = bundle.metadata["table_provenance"]
    assert sorted(tables) == sorted(DEVICES) and tables["cpu"]["provenance"]["runtime"] == "onnxruntime"
    assert tables["cpu"]["statistic"] == "p10" and tables["cpu"]["n_e2e"] == TINY_TABLE_E2E
    assert "int8" in lite["notes"][0]  # the shipped file is int8, the table measured fp32
    assert cpu["budget_ms"] == env["budget"] and cpu["tolerance_ms"] >= 0.05 * env["budget"]
    assert phone["measured_ms"].startswith("not measured:") and "adb" in phone["measured_ms"]
    assert phone["predicted_ms"] == pytest.approx(predicted)


def test_readme_snippets_match_metadata_and_run(env, bundle, tmp_path):
    from PIL import Image

    readme = (bundle.out_dir / "README.md").read_text()
    meta = bundle.metadata
    for v in meta["input"]["preprocessing"]["mean"] + meta["input"]["preprocessing"]["std"]:
        assert repr(float(v)) in readme and f"{float(v)!r}f" in readme  # Python and Kotlin
    q = meta["input"]["tflite"]["quantization"]
    zp = q["zero_point"]
    assert f"/ {q['scale']!r} {'+' if zp >= 0 else '-'} {abs(zp)})" in readme and "SIZE = 32" in readme
    assert "const val SIZE = 32" in readme and "ByteArray(10)" in readme
    # Run both Python snippets as a user would, on a validation image (lossless, so the pixels are the data's):
    # each must print the class the verified pipeline predicts for that image.
    work = tmp_path / "app"
    shutil.copytree(bundle.out_dir, work)
    Image.fromarray(env["data"].val_x[0].permute(1, 2, 0).numpy()).save(work / "image.jpg", format="PNG")
    x = next(env["data"].batches("val", 1, 32))[0].contiguous().numpy()
    expected = {"tflite": str(verify.run_tflite((work / "model.tflite").read_bytes(), x).argmax()),
                "onnx": str(verify.run_onnx((work / "model.onnx").read_bytes(), x).argmax())}
    blocks = readme.split("```python\n")[1:]
    assert len(blocks) == 2
    for fmt, code in zip(("tflite", "onnx"), (b.split("```")[0] for b in blocks)):
        assert f"model.{fmt}" in code
        res = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1] == expected[fmt]


def test_fp32_tflite_with_arch_and_budget_warning(env):
    arch = SPACE.smallest()
    res = export_bundle(env["run"], env["root"] / "fp32", formats="tflite", arch=str(arch),
                        budget={"cpu-litert": 1e-4}, parity_images=4, predictors=env["predictors"],
                        device_specs=env["specs"])
    meta = res.metadata
    assert res.arch == arch and sorted(res.files) == ["README.md", "labels.txt", "metadata.json", "model.tflite"]
    assert meta["input"]["tflite"] == {"shape": [1, 32, 32, 3], "layout": "NHWC", "dtype": "float32",
                                       "quantization": None}
    assert "int8" not in meta["verification"] and meta["files"]["model.tflite"]["precision"] == "fp32"
    assert meta["latency"]["cpu"]["measured_ms"] == ("not measured: model.onnx was not exported "
                                                     "(add onnx to the formats)")
    assert meta["latency"]["cpu-litert"]["over_budget"] is True
    assert len(res.warnings) == 1 and "exceeds the budget 0.0001 ms" in res.warnings[0]
    assert res.warnings == meta["warnings"] and "ByteArray" not in (res.out_dir / "README.md").read_text()


def test_cli_export_dynamic_batch_onnx(env, monkeypatch, capsys):
    monkeypatch.setenv("NATDEPLOY_TABLES", str(env["tables"]))
    ap = argparse.ArgumentParser()
    add_export_parser(ap.add_subparsers(dest="command"))
    out = env["root"] / "cli"
    args = ap.parse_args(["export", str(env["run"]), "--format", "onnx", "--budget", "cpu=10s", "--out", str(out),
                          "--dynamic-batch", "--device", "cpu", "--parity-images", "8", "--quiet"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert f"-> {out}" in text and "parity onnx" in text and "cpu: measured" in text
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["input"]["onnx"]["shape"] == ["batch", 3, 32, 32] and meta["budgets_ms"] == {"cpu": 10000.0}
    assert meta["table_provenance"]["cpu"]["provenance"]["runtime"] == "onnxruntime"
    assert list(meta["latency"]) == ["cpu"]
    best = best_within(env["archive"], {"cpu": 1e4})  # a 10 s budget admits every Arch
    assert meta["arch"]["string"] == best.arch
    help_text = ap._subparsers._group_actions[0].choices["export"].format_help()
    assert "examples:" in help_text and "--int8-io" in help_text
    assert cmd_export is args.func


# ----- bad input: a clear error, and nothing at the target ------------------------------------------------------
def _refused(env, out: Path, match: str, source=None, **kw) -> ExportError:
    with pytest.raises(ExportError, match=match) as info:
        export_bundle(source or env["run"], out, predictors=env["predictors"], device_specs=env["specs"], **kw)
    assert not out.exists() and not out.with_name(out.name + ".zip").exists()
    _no_leftovers(out.parent)
    return info.value


def test_refuses_unfinished_run(env, tmp_path):
    run = tmp_path / "unfinished"
    run.mkdir()
    state = json.loads((env["run"] / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "completed_iteration": 0}))
    shutil.copy(env["run"] / "supernet.pt", run / "supernet.pt")
    _refused(env, tmp_path / "o", r"no finished NAT iteration \(completed_iteration=0\)", source=run)


def test_refuses_unmet_budget_naming_the_fastest(env, tmp_path):
    fastest = min(env["archive"], key=lambda e: e.latency_ms["cpu"])
    err = _refused(env, tmp_path / "o", "no Arch in .* meets the budget", budget=1e-6)
    assert fastest.arch in str(err) and f"cpu {fastest.latency_ms['cpu']:.3f} ms" in str(err)


@pytest.mark.parametrize("kw, match", [
    ({"formats": "tflite,coreml"}, "unknown export format"),
    ({"formats": ""}, "unknown export format"),
    ({"formats": "onnx", "int8": True}, "add tflite to the formats"),
    ({"formats": "tflite", "int8_io": True}, "--int8-io needs --int8"),
    ({"formats": "tflite", "int8": True, "calibration_images": 0}, "needs calibration data"),
    ({"opset": 13}, "opset 13 is too old"),
])
def test_refuses_bad_options(env, tmp_path, kw, match):
    _refused(env, tmp_path / "o", match, **kw)


def test_refuses_int8_without_data_and_arch_without_supernet(env, tmp_path):
    arch = str(SPACE.smallest())
    _refused(env, tmp_path / "o", "int8 export needs calibration data.*--data", source=arch,
             supernet=env["run"] / "supernet.pt", int8=True, formats="tflite")
    _refused(env, tmp_path / "o", "needs the supernet checkpoint", source=arch)
    _refused(env, tmp_path / "o", "neither a run folder nor an Arch string", source=str(tmp_path / "no-such-run"))


def test_refuses_existing_output_unless_overwrite(env, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        export_bundle(env["run"], out, formats="onnx", measure_latency=False)
    assert (out / "mine.txt").read_text() == "keep"
    res = export_bundle(env["run"], out, formats="onnx", measure_latency=False, overwrite=True, parity_images=4)
    assert sorted(res.files) == ["README.md", "labels.txt", "metadata.json", "model.onnx"]
    assert res.zip_path.is_file() and res.metadata["latency"] == {}
    _no_leftovers(tmp_path)


def test_parity_failure_fails_loudly_and_leaves_nothing(env, tmp_path, monkeypatch):
    import natdeploy.export.bundle as bundle_mod

    real = bundle_mod.onnx_bytes

    def skewed(module, shape, **kw):  # a conversion bug: the exported weights drift from PyTorch's
        bad = type(module)(module.arch, module.n_classes).eval()
        bad.load_state_dict(module.state_dict())
        with torch.no_grad():
            bad.classifier.linear.bias.add_(0.05)
        return real(bad, shape, **kw)

    monkeypatch.setattr(bundle_mod, "onnx_bytes", skewed)
    _refused(env, tmp_path / "o", r"model.onnx does not match PyTorch.*do not ship it", formats="onnx")


def test_load_described_reloads_the_runs_data(env):
    desc = env["data"].describe()
    again = load_described({**desc, "mean": [0.1, 0.2, 0.3]})
    assert again.classes == env["data"].classes and len(again.val_y) == desc["n_val"]
    assert torch.equal(again.train_x, env["data"].train_x) and again.mean == (0.1, 0.2, 0.3)
    assert isinstance(Arch.from_string(env["archive"][0].arch), Arch)
