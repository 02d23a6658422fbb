"""torch -> Keras 3 (NHWC) -> TFLite, for whole subnets and single ops, fp32, int8 or fp16.

The Keras model is rebuilt layer by layer from the static torch modules (no ONNX detour), in NHWC, with BN
folded into the preceding convolution. Stride-2 convolutions get an explicit symmetric ZeroPadding2D and
'valid' padding, because TF's 'same' pads bottom/right only and would shift the window against PyTorch.
TFLite inputs are NHWC float32 (or int8 with ``int8_io``), so no transpose runs on the device; outputs of
spatial ops are NHWC too.

TensorFlow and Keras are imported inside the functions: importing them takes seconds and sets up global state.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from natdeploy.fileio import atomic_write_bytes
from natdeploy.convert.ops import GlobalAvgPool
from natdeploy.errors import ConversionError
from natdeploy.supernet.layers import Block, Classifier, ConvBNAct, MBConv, SqueezeExcite
from natdeploy.supernet.network import MobileNetV3Subnet

log = logging.getLogger(__name__)


def _import_tf() -> tuple[Any, Any]:
    """tensorflow and keras, imported quietly; raises when Keras runs on another backend."""
    # Before the first import only: TF's C++ logging level is read once, at load time.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # torch imports Triton lazily (through torch._dynamo) on the first optimizer it builds; in a process that has
    # loaded TensorFlow by then, that import segfaults (seen with torch 2.14.1 + tensorflow-cpu 2.21). Loading it
    # first makes training after a TFLite conversion safe.
    import torch._dynamo  # noqa: F401
    import tensorflow as tf
    import keras

    tf.get_logger().setLevel(logging.ERROR)
    if keras.backend.backend() != "tensorflow":
        raise ConversionError(f"TFLite conversion needs Keras on the tensorflow backend, but Keras runs on "
                              f"{keras.backend.backend()!r}; unset KERAS_BACKEND or set it to 'tensorflow'")
    return tf, keras


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


def _folded_conv(m: ConvBNAct) -> tuple[np.ndarray, np.ndarray]:
    """Weight (OIHW) and bias of ``m.conv`` with ``m.bn`` (eval-mode statistics) folded in."""
    w = _np(m.conv.weight).astype(np.float64)
    b = _np(m.conv.bias).astype(np.float64) if m.conv.bias is not None else np.zeros(w.shape[0])
    bn = m.bn
    if isinstance(bn, nn.BatchNorm2d):
        # Folding in float64 keeps the fp32 rounding of the result within what the runtime adds anyway.
        scale = _np(bn.weight).astype(np.float64) / np.sqrt(_np(bn.running_var).astype(np.float64) + bn.eps)
        w = w * scale[:, None, None, None]
        b = _np(bn.bias).astype(np.float64) + (b - _np(bn.running_mean).astype(np.float64)) * scale
    elif not isinstance(bn, nn.Identity):
        raise ConversionError(f"cannot convert normalisation {type(bn).__name__} in ConvBNAct; expected "
                              "BatchNorm2d or none")
    return w.astype(np.float32), b.astype(np.float32)


class _KerasBuilder:
    """Walks a static torch module and emits the matching Keras layers on a symbolic NHWC tensor."""

    def __init__(self, keras: Any) -> None:
        self.k = keras
        self.L = keras.layers
        self.ops = keras.ops

    # ----- activations --------------------------------------------------------------------------------------
    def hswish(self, x: Any) -> Any:
        ops = self.ops
        return self.L.Activation(lambda t: t * ops.relu6(t + 3.0) / 6.0)(x)

    def hsigmoid(self, x: Any) -> Any:
        ops = self.ops
        return self.L.Activation(lambda t: ops.relu6(t + 3.0) / 6.0)(x)

    # ----- layers -------------------------------------------------------------------------------------------
    def conv(self, m: ConvBNAct, x: Any) -> Any:
        conv = m.conv
        k, stride, groups = conv.kernel_size[0], conv.stride[0], conv.groups
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or \
                conv.padding != (k // 2, k // 2) or conv.dilation != (1, 1) or k % 2 == 0:
            raise ConversionError(f"unsupported convolution {conv}: need a square odd kernel, equal strides, "
                                  "padding k//2 and no dilation")
        w, b = _folded_conv(m)
        if stride > 1 and k > 1:
            x = self.L.ZeroPadding2D(k // 2)(x)
            padding = "valid"
        else:
            padding = "same" if k > 1 else "valid"
        if groups == 1:
            layer = self.L.Conv2D(conv.out_channels, k, stride, padding=padding, use_bias=True)
            kernel = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif groups == conv.in_channels == conv.out_channels:
            layer = self.L.DepthwiseConv2D(k, stride, padding=padding, depth_multiplier=1, use_bias=True)
            kernel = w.transpose(2, 3, 0, 1)  # (C, 1, k, k) -> (k, k, C, 1)
        else:
            raise ConversionError(f"unsupported grouped convolution {conv}: only groups=1 or depthwise")
        x = layer(x)
        layer.set_weights([kernel, b])
        x = self.emit(m.act, x)
        return self.emit(m.se, x)

    def squeeze_excite(self, m: SqueezeExcite, x: Any) -> Any:
        reduce, expand = m.fc.reduce, m.fc.expand
        y = self.L.GlobalAveragePooling2D(keepdims=True)(x)
        r = self.L.Conv2D(reduce.out_channels, 1, use_bias=True)
        y = self.L.ReLU()(r(y))
        r.set_weights([_np(reduce.weight).transpose(2, 3, 1, 0), _np(reduce.bias)])
        e = self.L.Conv2D(expand.out_channels, 1, use_bias=True)
        y = self.hsigmoid(e(y))
        e.set_weights([_np(expand.weight).transpose(2, 3, 1, 0), _np(expand.bias)])
        return self.L.Multiply()([x, y])

    def dense(self, m: nn.Linear, x: Any) -> Any:
        layer = self.L.Dense(m.out_features, use_bias=m.bias is not None)
        x = layer(x)
        layer.set_weights([_np(m.weight).T] + ([_np(m.bias)] if m.bias is not None else []))
        return x

    def flatten(self, x: Any) -> Any:
        # NHWC and NCHW flatten in the same order only when H = W = 1, which is the case in the head.
        if tuple(x.shape[1:3]) != (1, 1):
            raise ConversionError(f"flatten of a {tuple(x.shape)} NHWC map would reorder features against "
                                  "PyTorch's NCHW flatten; only 1x1 maps are supported")
        return self.L.Flatten()(x)

    def subnet(self, m: MobileNetV3Subnet, x: Any) -> Any:
        x = self.emit(m.first_conv, x)
        for block in m.blocks:
            x = self.emit(block, x)
        x = self.emit(m.final_expand_layer, x)
        x = self.L.GlobalAveragePooling2D(keepdims=True)(x)
        x = self.emit(m.feature_mix_layer, x)
        return self.emit(m.classifier, self.flatten(x))

    def emit(self, m: nn.Module, x: Any) -> Any:
        """Keras layers for ``m`` applied to ``x``; dispatches on the module class."""
        if isinstance(m, MobileNetV3Subnet):
            return self.subnet(m, x)
        if isinstance(m, ConvBNAct):
            return self.conv(m, x)
        if isinstance(m, Block):
            y = self.emit(m.conv, x)
            return self.L.Add()([y, x]) if m.skip else y
        if isinstance(m, MBConv):
            for part in (m.inverted_bottleneck, m.depth_conv, m.point_linear):
                x = self.emit(part, x)
            return x
        if isinstance(m, SqueezeExcite):
            return self.squeeze_excite(m, x)
        if isinstance(m, Classifier):
            return self.emit(m.linear, x)  # dropout is the identity in eval mode
        if isinstance(m, GlobalAvgPool):
            return self.L.GlobalAveragePooling2D(keepdims=True)(x)
        if isinstance(m, nn.Linear):
            return self.dense(m, x)
        if isinstance(m, nn.Flatten):
            return self.flatten(x)
        if isinstance(m, nn.Sequential):
            for child in m:
                x = self.emit(child, x)
            return x
        if isinstance(m, nn.ReLU):
            return self.L.ReLU()(x)
        if isinstance(m, nn.Hardswish):
            return self.hswish(x)
        if isinstance(m, nn.Hardsigmoid):
            return self.hsigmoid(x)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        raise ConversionError(f"no Keras conversion for torch module {type(m).__name__}; supported: "
                              "MobileNetV3Subnet, ConvBNAct, Block, MBConv, SqueezeExcite, Classifier, GlobalAvgPool, "
                              "Linear, Flatten, Sequential, ReLU, Hardswish, Hardsigmoid, Identity, Dropout")


def _nhwc(shape_nchw: Sequence[int]) -> tuple[int, int, int, int]:
    if len(shape_nchw) != 4:
        raise ConversionError(f"input shape {tuple(shape_nchw)} must be NCHW with 4 dimensions")
    n, c, h, w = (int(s) for s in shape_nchw)
    return n, h, w, c


def build_keras_model(module: nn.Module, input_shape_nchw: Sequence[int]) -> Any:
    """A Keras 3 functional model (NHWC, fixed batch) computing eval-mode ``module`` with copied weights."""
    _, keras = _import_tf()
    inp = keras.Input(batch_shape=_nhwc(input_shape_nchw), name="input", dtype="float32")
    out = _KerasBuilder(keras).emit(module, inp)
    return keras.Model(inp, out, name=type(module).__name__)


def _calibration_samples(calibration: Iterable[Any], input_shape_nchw: Sequence[int]) -> list[np.ndarray]:
    """NHWC float32 batches of the model's batch size, cut from NCHW calibration batches."""
    n, c, h, w = (int(s) for s in input_shape_nchw)
    rows = []
    for i, batch in enumerate(calibration):
        if isinstance(batch, (tuple, list)):  # (images, labels) from a DataLoader
            batch = batch[0]
        arr = _np(batch) if isinstance(batch, torch.Tensor) else np.asarray(batch, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != (c, h, w):
            raise ConversionError(f"calibration batch {i} has shape {tuple(arr.shape)}; expected NCHW "
                                  f"(N, {c}, {h}, {w}) to match the model input")
        rows.extend(arr.transpose(0, 2, 3, 1))
    if len(rows) < n:
        raise ConversionError(f"calibration gave {len(rows)} images; int8 quantisation needs at least {n}")
    return [np.ascontiguousarray(np.stack(rows[j:j + n]), dtype=np.float32) for j in range(0, len(rows) - n + 1, n)]


def tflite_bytes(module: nn.Module, input_shape_nchw: Sequence[int], int8: bool = False,
                 calibration: Iterable[Any] | None = None, int8_io: bool = False, fp16: bool = False) -> bytes:
    """The serialised TFLite flatbuffer of eval-mode ``module``; see :func:`to_tflite`. ``fp16``: float16
    weights (TFLite's float16 quantisation, what GPU delegates run)."""
    if int8_io and not int8:
        raise ConversionError("int8_io=True needs int8=True: int8 inputs and outputs exist only in a quantised model")
    if int8 and fp16:
        raise ConversionError("int8=True and fp16=True exclude each other: pick one precision")
    if int8 and calibration is None:
        raise ConversionError("int8 quantisation needs calibration data: pass calibration=<iterable of NCHW "
                              "float batches> (a few hundred representative, preprocessed images)")
    samples = _calibration_samples(calibration, input_shape_nchw) if int8 else []
    tf, _ = _import_tf()
    was_training = module.training
    module.eval()
    try:
        model = build_keras_model(module, input_shape_nchw)
    finally:
        module.train(was_training)
    errors = []
    absl = logging.getLogger("absl")
    level = absl.level
    # The converter warns through absl on every call that the frozen-graph route is deprecated; that route is
    # chosen for speed, and the fallback covers its removal.
    absl.setLevel(logging.ERROR)
    try:
        for route in _converter_routes(tf, model, input_shape_nchw):
            try:
                return _convert(route(), int8, samples, int8_io, tf, fp16)
            except Exception as exc:  # noqa: BLE001 - the converter raises many types; try the next route
                log.debug("TFLite conversion route %s failed: %s", route.__name__, exc)
                errors.append(f"{route.__name__}: {type(exc).__name__}: {exc}")
    finally:
        absl.setLevel(level)
    raise ConversionError(f"TFLite conversion of {type(module).__name__} with input {tuple(input_shape_nchw)} "
                          f"failed: {' | '.join(errors)}")


def _converter_routes(tf: Any, model: Any, input_shape_nchw: Sequence[int]) -> list[Callable[[], Any]]:
    """Factories of TFLiteConverters for ``model``, traced once at its fixed NHWC input: the fast route first,
    then the public one (for a TF where the fast route is gone or fails)."""
    spec = tf.TensorSpec(_nhwc(input_shape_nchw), tf.float32, name="input")
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)

    def frozen() -> Any:
        # Freezing the weights into constants and converting without a trackable object takes TF's older graph
        # route, measured ~3x faster (block 0.15 s vs 0.47 s, subnet 1.8 s vs 4.9 s) with identical output.
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        return tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(concrete)])

    def tracked() -> Any:
        # Keras 3 weights are not tracked through the model object, so hand the converter their tf.Variables;
        # otherwise they stay uninitialised resource variables and the .tflite computes garbage.
        holder = tf.Module()
        holder.weights_ = [w.value for w in model.weights]
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)

    return [frozen, tracked]


def _convert(converter: Any, int8: bool, samples: list[np.ndarray], int8_io: bool, tf: Any,
             fp16: bool = False) -> bytes:
    if fp16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # The graph route warns that float inputs carry no quantisation statistics; with float I/O none are needed.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(converter.convert())


def _representative(samples: list[np.ndarray]) -> Callable[[], Iterable[list[np.ndarray]]]:
    def gen() -> Iterable[list[np.ndarray]]:
        for s in samples:
            yield [s]
    return gen


def to_tflite(module: nn.Module, input_shape_nchw: Sequence[int], path: str | os.PathLike, int8: bool = False,
              calibration: Iterable[Any] | None = None, int8_io: bool = False) -> Path:
    """Convert eval-mode ``module`` for a fixed NCHW input shape to a .tflite file at ``path`` (atomically).

    The TFLite model takes NHWC input (float32, or int8 with ``int8_io``). With ``int8``, weights and
    activations are quantised post-training with ``calibration`` (an iterable of NCHW float batches as numpy
    arrays or torch tensors, or ``(images, labels)`` tuples), which is required.
    """
    return atomic_write_bytes(path, tflite_bytes(module, input_shape_nchw, int8, calibration, int8_io))


PRECISIONS = ("fp32", "int8", "fp16")
CALIBRATION_SAMPLES = 8  # batches of random calibration input where no images are given


def random_calibration(input_shape_nchw: Sequence[int], n: int = CALIBRATION_SAMPLES,
                       seed: int = 0) -> list[np.ndarray]:
    """``n`` seeded standard-normal NCHW float32 batches of ``input_shape_nchw``: the statistics of normalised
    images (zero mean, unit variance), as calibration input for a model that is timed, not used (latency tables).
    The quantisation ranges they set change the values an int8 model computes, not the work it does."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in input_shape_nchw)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(n)]


def tflite_bytes_at(module: nn.Module, input_shape_nchw: Sequence[int], precision: str,
                    calibration: Iterable[Any] | None = None, int8_io: bool = False) -> bytes:
    """The TFLite flatbuffer of ``module`` at ``precision`` (fp32, int8 or fp16), through the same conversion
    and post-training quantisation as the exporter (:func:`tflite_bytes`). int8 calibrates on ``calibration``,
    or on :func:`random_calibration` of the input shape when none is given."""
    if precision not in PRECISIONS:
        raise ConversionError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "int8":
        calib = calibration if calibration is not None else random_calibration(input_shape_nchw)
        return tflite_bytes(module, input_shape_nchw, int8=True, calibration=calib, int8_io=int8_io)
    if int8_io:
        raise ConversionError(f"int8_io=True needs precision int8, not {precision}")
    return tflite_bytes(module, input_shape_nchw, fp16=precision == "fp16")
