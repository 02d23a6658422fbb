"""LiteRT (TFLite) backend: .tflite from natdeploy.convert (the exporter's path), timed in the interpreter."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import nn

from natdeploy.convert.runtime import litert_version, tflite_interpreter
from natdeploy.latency.backends import Backend, BackendError
from natdeploy.latency.measure import Measurement


class LiteRTBackend(Backend):
    runtime = "litert"
    artifact_format = "tflite"

    def runtime_version(self) -> str:
        return f"ai-edge-litert {litert_version()} ({'XNNPACK' if self.spec.xnnpack else 'builtin kernels'})"

    def build(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        from natdeploy.convert.tflite import tflite_bytes

        return tflite_bytes(module, input_shape)

    def interpreter(self, model: bytes) -> Any:
        """An interpreter with the spec's threads; XNNPACK (LiteRT's default delegate) unless the spec turns it off."""
        return tflite_interpreter(model, self.spec.threads, default_delegates=self.spec.xnnpack)

    def runner(self, artifact: Any, input_shape: tuple[int, ...]) -> Callable[[], Any]:
        interp = self.interpreter(artifact)
        inp = interp.get_input_details()[0]
        x = np.random.default_rng(0).standard_normal(tuple(inp["shape"]), dtype=np.float32)
        if inp["dtype"] != np.float32:
            x = x.astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        return interp.invoke

    def measure(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        try:
            return self._time_runner(artifact, input_shape, warmup, runs)
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"LiteRT run failed: {exc}") from exc
