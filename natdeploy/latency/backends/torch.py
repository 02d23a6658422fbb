"""PyTorch backend: eager module on the CPU (channels_last) or on CUDA, timed with CUDA events there."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from natdeploy.latency.backends import Backend, BackendError
from natdeploy.latency.measure import Measurement


class TorchBackend(Backend):
    runtime = "torch"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.cuda = spec.transport == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise BackendError(f"device {spec.name!r} needs a CUDA GPU, and torch sees none here")

    def runtime_version(self) -> str:
        return f"torch {torch.__version__}" + (f" CUDA {torch.version.cuda}" if self.cuda else "")

    def host(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else super().host()

    def build(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        device = "cuda" if self.cuda else "cpu"
        return module.eval().to(device=device, memory_format=torch.channels_last)

    def runner(self, artifact: Any, input_shape: tuple[int, ...]) -> Callable[[], Any]:
        device = "cuda" if self.cuda else "cpu"
        x = torch.randn(input_shape, device=device).contiguous(memory_format=torch.channels_last)
        return lambda: artifact(x)

    @contextmanager
    def timing_context(self) -> Iterator[None]:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.spec.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(threads)

    def measure(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        try:
            with self.timing_context():
                if not self.cuda:
                    return self._time_runner(artifact, input_shape, warmup, runs)
                x = torch.randn(input_shape, device="cuda").contiguous(memory_format=torch.channels_last)
                return self._cuda_events(artifact, x, warmup, runs)
        except RuntimeError as exc:
            raise BackendError(f"torch run failed: {exc}") from exc

    @staticmethod
    def _cuda_events(module: nn.Module, x: torch.Tensor, warmup: int, runs: int) -> Measurement:
        for _ in range(warmup):
            module(x)
        torch.cuda.synchronize()
        samples = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            module(x)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return Measurement.from_samples(samples, warmup)
