"""LiteRT (TFLite) backend: .tflite from natdeploy.convert (the exporter's path), timed in the interpreter.

The spec's ``precision`` picks the conversion: fp32, int8 (the exporter's post-training quantisation, calibrated
on normalised random input of the artifact's shape) or fp16 (float16 quantisation, for the GPU delegate). An int8
op keeps int8 input and output tensors, as it has inside an int8 network, where only the model's input is
quantised and only its output dequantised; whole subnets take float input, as the exporter ships them by default.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import nn

from natdeploy.convert.runtime import litert_version, tflite_interpreter
from natdeploy.latency.backends import Backend, BackendError
from natdeploy.latency.measure import Measurement


def _input_for(detail: dict[str, Any], seed: int = 0) -> np.ndarray:
    """A standard-normal input for an interpreter input; quantised by its scale and zero point where it is int8."""
    x = np.random.default_rng(seed).standard_normal(tuple(detail["shape"]), dtype=np.float32)
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


class LiteRTBackend(Backend):
    runtime = "litert"
    artifact_format = "tflite"
    precisions = ("fp32", "int8", "fp16")

    def runtime_version(self) -> str:
        return f"ai-edge-litert {litert_version()} ({'XNNPACK' if self.spec.xnnpack else 'builtin kernels'})"

    def build(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        from natdeploy.convert.tflite import tflite_bytes_at

        return tflite_bytes_at(module, input_shape, self.spec.precision)

    def build_op(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        from natdeploy.convert.tflite import tflite_bytes_at

        int8 = self.spec.precision == "int8"
        return tflite_bytes_at(module, input_shape, self.spec.precision, int8_io=int8)

    def interpreter(self, model: bytes) -> Any:
        """An interpreter with the spec's threads; XNNPACK (LiteRT's default delegate) unless the spec turns it off."""
        return tflite_interpreter(model, self.spec.threads, default_delegates=self.spec.xnnpack)

    def runner(self, artifact: Any, input_shape: tuple[int, ...]) -> Callable[[], Any]:
        interp = self.interpreter(artifact)
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], _input_for(inp))
        return interp.invoke

    def measure(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        try:
            return self._time_runner(artifact, input_shape, warmup, runs)
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"LiteRT run failed: {exc}") from exc
