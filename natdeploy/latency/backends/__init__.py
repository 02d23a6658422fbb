"""Latency backends: each one builds a runnable artifact, measures it, and describes itself."""

from __future__ import annotations

import datetime as _dt
import platform
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from torch import nn

from natdeploy import __version__
from natdeploy.devices import DeviceSpec
from natdeploy.errors import NatDeployError
from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import OpSig
from natdeploy.space import Arch


class BackendError(NatDeployError):
    """A backend cannot run here, or a measurement failed."""


def host_cpu() -> str:
    """The host CPU model, as /proc/cpuinfo names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Backend(ABC):
    """Convert (module -> artifact), profile (artifact -> Measurement), describe (provenance)."""

    runtime: str = ""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec

    @abstractmethod
    def build(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        """The runnable artifact of an eval-mode module for an NCHW input shape."""

    @abstractmethod
    def measure(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        """Time the artifact; raise :class:`BackendError` when the run fails."""

    @abstractmethod
    def runtime_version(self) -> str:
        """Version string of the runtime."""

    def host(self) -> str:
        return host_cpu()

    def describe(self) -> dict[str, Any]:
        """Provenance recorded with every table this backend fills."""
        s = self.spec
        return {"device": s.name, "runtime": self.runtime, "runtime_version": self.runtime_version(),
                "threads": s.threads, "cpu_mask": s.cpu_mask, "precision": s.precision, "batch_size": s.batch_size,
                "gpu_delegate": s.gpu_delegate, "xnnpack": s.xnnpack if self.runtime == "litert" else None,
                "host": self.host(), "hostname": socket.gethostname(), "platform": platform.platform(),
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "natdeploy_version": __version__}

    def _shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.spec.batch_size, *shape[1:])

    def measure_op(self, op: OpSig, seed: int = 0) -> Measurement:
        from natdeploy.convert.ops import build_op_module, op_input_shape

        layer = op.to_layer()
        shape = self._shape(op_input_shape(layer))
        return self.measure(self.build(build_op_module(layer, seed), shape), shape, self.spec.warmup, self.spec.runs)

    def measure_arch(self, arch: Arch, n_classes: int) -> Measurement:
        from natdeploy.supernet import MobileNetV3Subnet

        shape = self._shape((1, 3, arch.r, arch.r))
        module = MobileNetV3Subnet(arch, n_classes).eval()
        return self.measure(self.build(module, shape), shape, self.spec.e2e_warmup, self.spec.e2e_runs)


def get_backend(spec: DeviceSpec) -> Backend:
    """The backend for a device spec."""
    if spec.transport == "adb":
        from natdeploy.latency.backends.adb_backend import AdbBackend

        return AdbBackend(spec)
    if spec.runtime == "onnxruntime":
        from natdeploy.latency.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(spec)
    if spec.runtime == "litert":
        from natdeploy.latency.backends.litert import LiteRTBackend

        return LiteRTBackend(spec)
    from natdeploy.latency.backends.torch import TorchBackend

    return TorchBackend(spec)
