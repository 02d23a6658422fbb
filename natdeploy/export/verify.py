"""Checks on exported models: ONNX structure, fp32 parity against PyTorch, int8 accuracy and agreement.

Every check runs the real runtime (onnxruntime, the LiteRT interpreter) on real validation images where the
data is known, so a number in the bundle's metadata is one that was measured, never assumed.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from natdeploy.convert.runtime import onnx_session, tflite_interpreter
from natdeploy.data import ImageData
from natdeploy.export.errors import ExportError

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4  # max-abs difference relative to the range of the PyTorch output
MIN_OPSET = 17
# Ops that only make sense while training; an inference graph must hold none of them.
TRAINING_OPS = {"Dropout", "Gradient", "Momentum", "Adagrad", "Adam", "SoftmaxCrossEntropyLoss",
                "NegativeLogLikelihoodLoss"}


@dataclass
class ParityResult:
    """How far a runtime's output lies from PyTorch's on the same images."""

    max_abs: float
    output_range: float
    relative: float
    n_images: int
    inputs: str

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs, "output_range": self.output_range, "relative_diff": self.relative,
                "tolerance": PARITY_TOL, "n_images": self.n_images, "inputs": self.inputs,
                "passed": self.relative <= PARITY_TOL}


def reference_inputs(data: ImageData | None, resolution: int, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """NCHW float32 inputs for the parity check: the first ``n`` validation images, else seeded random normals."""
    if data is not None and len(data.val_y):
        x = next(data.batches("val", n, resolution))[0]
        return np.ascontiguousarray(x.contiguous().numpy(), dtype=np.float32), "validation images"
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, resolution, resolution), dtype=np.float32), "random normal inputs (no data)"


@torch.no_grad()
def torch_outputs(model: nn.Module, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """Eval-mode PyTorch outputs for NCHW numpy inputs."""
    model.eval()
    cl = torch.channels_last
    outs = [model(torch.from_numpy(x[i:i + batch]).contiguous(memory_format=cl)).numpy()
            for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def parity(got: np.ndarray, ref: np.ndarray, inputs: str) -> ParityResult:
    """Max-abs difference of ``got`` against ``ref``, also relative to the range of ``ref``."""
    if got.shape != ref.shape:
        raise ExportError(f"exported model output has shape {got.shape}, PyTorch's {ref.shape}")
    max_abs = float(np.abs(got.astype(np.float64) - ref).max())
    rng = float(ref.max() - ref.min())
    return ParityResult(max_abs, rng, max_abs / max(rng, 1e-12), len(ref), inputs)


def require_parity(name: str, result: ParityResult) -> None:
    """Fail the export loudly when ``name`` drifts from PyTorch beyond the tolerance."""
    if result.relative > PARITY_TOL:
        raise ExportError(f"{name} does not match PyTorch: max-abs difference {result.max_abs:.3g} is "
                          f"{result.relative:.3g} of the output range {result.output_range:.3g} (limit {PARITY_TOL:g}) "
                          f"over {result.n_images} {result.inputs}; the conversion is wrong, do not ship it")


# ----- ONNX -----------------------------------------------------------------------------------------------------
def check_onnx(model_bytes: bytes, resolution: int, dynamic_batch: bool) -> dict[str, Any]:
    """onnx.checker (full), opset >= 17, fixed NCHW input at ``resolution``, no training-only nodes."""
    import onnx

    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ExportError(f"the ONNX model fails onnx.checker: {exc}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ExportError(f"the ONNX model has opset {opset}; deployment needs opset >= {MIN_OPSET}")
    inp = model.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    want = ["batch" if dynamic_batch else 1, 3, resolution, resolution]
    if dims != want:
        raise ExportError(f"the ONNX input {inp.name!r} has shape {dims}, expected {want}")
    training = [n.op_type for n in model.graph.node
                if n.op_type in TRAINING_OPS or n.domain.startswith("ai.onnx.preview.training")
                or (n.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i for a in n.attribute))]
    if training:
        raise ExportError(f"the ONNX model holds training-only nodes {sorted(set(training))}; export in eval mode")
    out = model.graph.output[0]
    return {"opset": opset, "input_name": inp.name, "input_shape": dims, "output_name": out.name,
            "output_shape": [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim],
            "ops": dict(sorted(Counter(n.op_type for n in model.graph.node).items()))}


def run_onnx(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """onnxruntime outputs for NCHW inputs; one image per call when the batch dimension is fixed."""
    sess = onnx_session(model_bytes)
    inp = sess.get_inputs()[0]
    step = 64 if not isinstance(inp.shape[0], int) else int(inp.shape[0])
    return np.concatenate([sess.run(None, {inp.name: x[i:i + step]})[0] for i in range(0, len(x), step)])


# ----- TFLite ---------------------------------------------------------------------------------------------------
def tflite_io(model_bytes: bytes) -> dict[str, Any]:
    """Input and output name, shape, dtype and quantisation (scale, zero point) of a .tflite model."""
    interp = tflite_interpreter(model_bytes)

    def one(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d["quantization"]
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None}

    return {"input": one(interp.get_input_details()[0]), "output": one(interp.get_output_details()[0])}


def iter_tflite(model_bytes: bytes, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Float outputs of a .tflite model for NCHW float batches: transposed to NHWC, quantised for int8 inputs,
    run one image at a time (the model's batch is fixed at 1), dequantised for int8 outputs."""
    interp = tflite_interpreter(model_bytes)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if tuple(inp["shape"][[0, 3]]) != (1, 3):
        raise ExportError(f"the TFLite input has shape {list(inp['shape'])}; expected NHWC (1, H, W, 3)")
    for x in batches:
        rows = []
        for img in np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32):
            xi = img[None]
            if inp["dtype"] != np.float32:
                scale, zero = inp["quantization"]
                info = np.iinfo(inp["dtype"])
                xi = np.clip(np.round(xi / scale + zero), info.min, info.max).astype(inp["dtype"])
            interp.set_tensor(inp["index"], xi)
            interp.invoke()
            y = interp.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            rows.append(y)
        yield np.concatenate(rows)


def run_tflite(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Float outputs of a .tflite model for NCHW float inputs (see :func:`iter_tflite`)."""
    return np.concatenate(list(iter_tflite(model_bytes, iter([x]))))


# ----- accuracy -------------------------------------------------------------------------------------------------
def val_batches(data: ImageData, resolution: int, limit: int | None, batch: int = 128) -> Iterator[tuple[np.ndarray,
                                                                                                      np.ndarray]]:
    """The validation split as NCHW float32 numpy batches with labels."""
    for x, y in data.batches("val", batch, resolution, limit=limit):
        yield np.ascontiguousarray(x.contiguous().numpy(), dtype=np.float32), y.numpy()


def torch_predictions(model: nn.Module, data: ImageData, resolution: int, limit: int | None,
                      batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 class, label) per validation image from the PyTorch model."""
    preds, labels = [], []
    for x, y in val_batches(data, resolution, limit, batch):
        preds.append(torch_outputs(model, x).argmax(1))
        labels.append(y)
    return np.concatenate(preds), np.concatenate(labels)


def int8_report(int8_model: bytes, data: ImageData, resolution: int, fp32_pred: np.ndarray, labels: np.ndarray,
                limit: int | None, calibration_images: int, batch: int = 128) -> dict[str, Any]:
    """Top-1 before (fp32) and after int8 quantisation on the validation set, and their agreement."""
    batches = val_batches(data, resolution, limit, batch)
    xs = (x for x, _ in batches)
    pred = np.concatenate([y.argmax(1) for y in iter_tflite(int8_model, xs)])
    if len(pred) != len(labels):
        raise ExportError(f"int8 check saw {len(pred)} images, the fp32 check {len(labels)}")
    return {"top1_fp32": float((fp32_pred == labels).mean()), "top1_int8": float((pred == labels).mean()),
            "agreement_with_fp32": float((pred == fp32_pred).mean()), "n_images": int(len(labels)),
            "calibration_images": calibration_images, "split": "validation"}


def calibration_batches(data: ImageData, resolution: int, n: int, seed: int) -> list[np.ndarray]:
    """``n`` seeded-random training images at ``resolution``, normalised, as NCHW float32 batches."""
    rng = np.random.default_rng(seed)
    return [np.ascontiguousarray(x.contiguous().numpy(), dtype=np.float32)
            for x, _ in data.batches("train", 16, resolution, rng=rng, limit=n)]
