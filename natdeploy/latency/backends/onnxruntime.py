"""onnxruntime backend: ONNX from natdeploy.convert, timed in an InferenceSession (CPU or CUDA EP)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from torch import nn

from natdeploy.convert.runtime import (CPU_PROVIDER, CUDA_PROVIDER, onnx_providers, onnx_session,
                                      onnxruntime_version)
from natdeploy.latency.backends import Backend, BackendError
from natdeploy.latency.measure import Measurement


class OnnxRuntimeBackend(Backend):
    runtime = "onnxruntime"
    artifact_format = "onnx"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        want = CUDA_PROVIDER if spec.transport == "cuda" else CPU_PROVIDER
        available = onnx_providers()
        if want not in available:
            raise BackendError(f"device {spec.name!r} needs onnxruntime's {want}, which this install lacks "
                               f"(available: {available})")
        self.provider = want

    def runtime_version(self) -> str:
        return f"onnxruntime {onnxruntime_version()} ({self.provider})"

    def build(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        """The ONNX bytes; ``runner`` opens a session on them (a fresh one per call, as LiteRT's interpreters)."""
        from natdeploy.convert.onnx_export import onnx_bytes

        return onnx_bytes(module, input_shape)

    def session(self, model: bytes) -> Any:
        return onnx_session(model, self.spec.threads, self.provider)

    def runner(self, artifact: Any, input_shape: tuple[int, ...]) -> Callable[[], Any]:
        sess = self.session(artifact)
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        feed = {sess.get_inputs()[0].name: x}
        return lambda: sess.run(None, feed)

    def measure(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        try:
            return self._time_runner(artifact, input_shape, warmup, runs)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime run failed: {exc}") from exc
