"""torch -> ONNX and torch -> Keras -> TFLite: real exports, real onnxruntime and LiteRT sessions, compared to torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from natdeploy.convert import (GlobalAvgPool, build_op_module, export_onnx, op_input_shape, randomize_weights_,
                               to_tflite)
from natdeploy.errors import ConversionError, NatDeployError
from natdeploy.space import Arch, LayerSpec, SearchSpace, layer_plan
from natdeploy.supernet import OFAMobileNetV3Supernet
from natdeploy.supernet.layers import Block, ConvBNAct

TOL = 1e-4  # max abs error relative to the range of the torch output

# r=40 keeps every op tiny; the kernels and expand ratios cover k3/5/7, strides 1 and 2, SE and hswish.
ARCH = Arch(ks=[7, 3, 3, 3, 3, 5, 3, 3, 3, 7, 3, 3, 5, 3, 3, 3, 3, 7, 3, 3],
            e=[3, 4, 3, 3, 6, 3, 3, 3, 4, 6, 3, 3, 3, 4, 3, 3, 6, 3, 3, 3], d=[2, 2, 2, 2, 2], r=40)
PLAN = layer_plan(ARCH, n_classes=10)


def _op_id(layer: LayerSpec) -> str:
    if layer.kind != "mbconv":
        return layer.kind
    return f"mbconv-k{layer.kernel}-s{layer.stride}-{layer.act}{'-se' if layer.se else ''}{'-skip' if layer.skip else ''}"


OPS = {_op_id(layer): layer for layer in PLAN}  # later ops of equal id replace earlier ones; all kinds stay


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / max(float(ref.max() - ref.min()), 1e-12))


def _inputs(shape: tuple[int, ...], n: int, seed: int) -> torch.Tensor:
    return torch.randn((n, *shape[1:]), generator=torch.Generator().manual_seed(seed))


def _torch_out(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(x).numpy()


def _run_onnx(path: Path, x: torch.Tensor, output: str) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == [output]
    return np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])


def _run_tflite(path: Path, x: torch.Tensor) -> tuple[np.ndarray, type]:
    """Outputs for NCHW ``x`` one image at a time, dequantised and transposed back to NCHW; and the input dtype."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert tuple(inp["shape"]) == (1, x.shape[2], x.shape[3], x.shape[1])  # NHWC, fixed batch 1
    rows = []
    for i in range(len(x)):
        xi = x[i:i + 1].numpy().transpose(0, 2, 3, 1)
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            xi = np.clip(np.round(xi / scale + zero), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], np.ascontiguousarray(xi))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        rows.append(y.transpose(0, 3, 1, 2) if y.ndim == 4 else y)
    return np.concatenate(rows), inp["dtype"]


# ----- op modules -----------------------------------------------------------------------------------------------
def test_plan_covers_every_op_kind():
    kinds = {layer.kind for layer in OPS.values()}
    assert kinds == {"stem", "block0", "mbconv", "final_expand", "pool", "feature_mix", "classifier"}
    mb = [layer for layer in OPS.values() if layer.kind == "mbconv"]
    assert {m.kernel for m in mb} == {3, 5, 7} and {m.stride for m in mb} == {1, 2}
    assert any(m.se for m in mb) and any(m.skip for m in mb) and {m.act for m in mb} == {"relu", "hswish"}


@pytest.mark.parametrize("layer", PLAN, ids=[_op_id(layer) for layer in PLAN])
def test_op_module_shapes(layer):
    module = build_op_module(layer)
    assert not module.training
    y = _torch_out(module, torch.zeros(op_input_shape(layer)))
    expected = (1, layer.out_c) if layer.kind == "classifier" else (1, layer.out_c, layer.out_hw, layer.out_hw)
    assert y.shape == expected


def test_op_weights_are_seeded_random_and_leave_global_rng_alone():
    layer = OPS["mbconv-k5-s1-hswish-se"]
    state = torch.get_rng_state()
    a, b, c = build_op_module(layer, seed=3), build_op_module(layer, seed=3), build_op_module(layer, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv.depth_conv.conv.weight"], sc["conv.depth_conv.conv.weight"])
    bn = a.conv.depth_conv.bn
    assert (bn.running_var > 0).all() and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert isinstance(a, Block) and isinstance(build_op_module(OPS["pool"]), GlobalAvgPool)


def test_unknown_op_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown op kind 'conv9'"):
        build_op_module(LayerSpec("conv9", 8, 8, 8, 8))


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_onnx_matches_torch(op, tmp_path):
    layer = OPS[op]
    module, shape = build_op_module(layer, seed=1), op_input_shape(layer)
    path = export_onnx(module, shape, tmp_path / "op.onnx")
    assert path == tmp_path / "op.onnx" and sorted(p.name for p in tmp_path.iterdir()) == ["op.onnx"]
    model = onnx.load(str(path))
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]  # folded into the convs
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(shape)
    x = _inputs(shape, 2, seed=7)
    assert _rel_err(_run_onnx(path, x, "output"), _torch_out(module, x)) < TOL


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_tflite_matches_torch(op, tmp_path):
    layer = OPS[op]
    module, shape = build_op_module(layer, seed=1), op_input_shape(layer)
    path = to_tflite(module, shape, tmp_path / "op.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["op.tflite"]
    x = _inputs(shape, 2, seed=7)
    got, dtype = _run_tflite(path, x)
    assert dtype == np.float32
    assert _rel_err(got, _torch_out(module, x)) < TOL


# ----- whole subnets --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subnets() -> list[nn.Module]:
    supernet = OFAMobileNetV3Supernet(n_classes=10, width=1.0)
    out = []
    for seed in (0, 1):
        arch = SearchSpace.preset("small").sample(np.random.default_rng(seed))
        # Random weights and BN statistics: the supernet's fresh BN (mean 0, var 1) would hide folding bugs.
        out.append(randomize_weights_(supernet.extract_subnet(arch), seed=seed).eval())
    return out


def _subnet_shape(subnet: nn.Module) -> tuple[int, int, int, int]:
    return (1, 3, subnet.arch.r, subnet.arch.r)


@pytest.mark.parametrize("i", [0, 1])
def test_subnet_onnx_matches_torch(subnets, i, tmp_path):
    subnet = subnets[i]
    path = export_onnx(subnet, _subnet_shape(subnet), tmp_path / "model.onnx")
    x = _inputs(_subnet_shape(subnet), 3, seed=i)
    assert _rel_err(_run_onnx(path, x, "logits"), _torch_out(subnet, x)) < TOL


def test_subnet_onnx_dynamic_batch(subnets, tmp_path):
    subnet = subnets[0]
    path = export_onnx(subnet, _subnet_shape(subnet), tmp_path / "model.onnx", dynamic_batch=True)
    import onnxruntime as ort

    x = _inputs(_subnet_shape(subnet), 3, seed=5)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert _rel_err(got, _torch_out(subnet, x)) < TOL


@pytest.mark.parametrize("i", [0, 1])
def test_subnet_tflite_matches_torch(subnets, i, tmp_path):
    subnet = subnets[i]
    path = to_tflite(subnet, _subnet_shape(subnet), tmp_path / "model.tflite")
    x = _inputs(_subnet_shape(subnet), 3, seed=i)
    got, dtype = _run_tflite(path, x)
    assert dtype == np.float32 and got.shape == (3, 10)
    assert _rel_err(got, _torch_out(subnet, x)) < TOL


@pytest.mark.parametrize("int8_io", [False, True], ids=["float-io", "int8-io"])
def test_subnet_int8_tflite(subnets, int8_io, tmp_path):
    subnet = subnets[1]
    x = _inputs(_subnet_shape(subnet), 24, seed=11)
    # One torch batch and one numpy batch: both are accepted as calibration data.
    path = to_tflite(subnet, _subnet_shape(subnet), tmp_path / "q.tflite", int8=True,
                     calibration=[x[:12], x[12:].numpy()], int8_io=int8_io)
    got, dtype = _run_tflite(path, x)
    assert dtype == (np.int8 if int8_io else np.float32)
    ref = _torch_out(subnet, x)
    # Random weights leave small margins between logits, so int8 noise flips some top-1s (measured: 67% agree on
    # this subnet, whose predictions spread over 7 classes); a broken quantiser would also lose the correlation.
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agree > 0.6, f"int8 top-1 agrees with fp32 torch on only {agree:.0%} of the calibration images"
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95


def test_int8_without_calibration_is_a_clear_error(subnets, tmp_path):
    subnet, path = subnets[0], tmp_path / "q.tflite"
    with pytest.raises(ConversionError, match="calibration") as info:
        to_tflite(subnet, _subnet_shape(subnet), path, int8=True)
    assert isinstance(info.value, NatDeployError)
    with pytest.raises(ConversionError, match="int8_io=True needs int8=True"):
        to_tflite(subnet, _subnet_shape(subnet), path, int8_io=True)
    with pytest.raises(ConversionError, match="calibration batch 0 has shape"):
        to_tflite(subnet, _subnet_shape(subnet), path, int8=True, calibration=[np.zeros((2, 3, 8, 8), np.float32)])
    assert not path.exists()


def test_unsupported_module_is_a_clear_error(tmp_path):
    module = nn.Sequential(ConvBNAct(3, 8, 3), nn.Sigmoid()).eval()
    with pytest.raises(ConversionError, match="no Keras conversion for torch module Sigmoid"):
        to_tflite(module, (1, 3, 8, 8), tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_training_after_tensorflow_is_loaded_does_not_crash():
    # torch's first optimizer imports Triton; after TensorFlow was loaded that import used to segfault.
    code = ("import torch\nfrom natdeploy.convert.tflite import _import_tf\n_import_tf()\n"
            "torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)\nprint('trained')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr[-2000:]
