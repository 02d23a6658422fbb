"""Latency backends: each one builds a runnable artifact, measures it, and describes itself.

:class:`Backend` declares the whole contract that the profiler and the exporter's latency check rely on; the hooks
that only some backends need (prefetching, provenance known at the end, clean-up) have no-op defaults, so callers
never probe for them.
"""

from __future__ import annotations

import datetime as _dt
import platform
import socket
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Self, Sequence

import numpy as np

from natdeploy import __version__
from natdeploy.devices import DeviceSpec, mask_cpus
from natdeploy.errors import NatDeployError
from natdeploy.latency.measure import Measurement, time_callable, time_interleaved
from natdeploy.latency.ops import OpSig
from natdeploy.latency.speed import ANCHOR_ARCH, ANCHOR_SESSIONS
from natdeploy.space import Arch

if TYPE_CHECKING:  # torch is imported where a model is built, not by commands that only read tables
    from torch import nn


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


def pin_to_mask(mask: str) -> None:
    """Pin this process's calling thread, and the runtimes' threads started after it, to the CPUs of a hex
    affinity mask (a local spec's ``cpu_mask``): so that a table says which cores it measured and means it."""
    import os

    wanted = set(mask_cpus(mask))
    have = os.sched_getaffinity(0)
    if not wanted <= have:
        raise BackendError(f"cpu_mask {mask!r} names CPUs {sorted(wanted)}, but this process may run only on "
                           f"{sorted(have)}; pick a mask from those")
    os.sched_setaffinity(0, wanted)


# Batch sizes of round-robin timing on local CPUs: ops are tiny, whole subnets hold more memory each.
OP_BATCH = 50
E2E_BATCH = 20


class Backend(ABC):
    """Convert (module -> artifact), profile (artifact -> Measurement), describe (provenance).

    A context manager: leaving the ``with`` block calls :meth:`close`.
    """

    runtime: str = ""
    # The exported file this backend runs as its artifact (``"onnx"``, ``"tflite"``), None when it runs none.
    artifact_format: str | None = None
    statistic: str = "p10"  # the Measurement statistic a table filled by this backend predicts from
    op_batch_size: int = 1  # ops per measure_ops call in the profiler
    precisions: tuple[str, ...] = ("fp32",)  # the model precisions this backend builds

    def __init__(self, spec: DeviceSpec) -> None:
        if spec.precision not in self.precisions:  # never time fp32 models for a table that says otherwise
            raise BackendError(f"device {spec.name!r}: the {type(self).__name__} builds {'/'.join(self.precisions)} "
                               f"models, not {spec.precision}")
        self.spec = spec
        self._anchor: list[Callable[[], Any]] = []  # runners of the anchor subnet's sessions, built on first use
        if self.interleaves:
            self.op_batch_size = OP_BATCH
        if spec.cpu_mask and spec.transport == "local":
            pin_to_mask(spec.cpu_mask)

    def runner(self, artifact: Any, input_shape: tuple[int, ...]) -> Callable[[], Any]:
        """A callable that runs the artifact once on a fixed input (backends that run in this process)."""
        raise NotImplementedError(f"{type(self).__name__} does not run artifacts in this process")

    def timing_context(self) -> AbstractContextManager:
        """What runners need around them while timed (torch: thread count and inference mode)."""
        return nullcontext()

    @property
    def interleaves(self) -> bool:
        """Whether batches are timed round-robin in this process (local CPU specs with ``rounds`` > 1)."""
        return self.spec.transport == "local" and self.spec.rounds > 1

    @abstractmethod
    def build(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        """The runnable artifact of an eval-mode module for an NCHW input shape."""

    def build_op(self, module: nn.Module, input_shape: tuple[int, ...]) -> Any:
        """The runnable artifact of one op (default: as :meth:`build`; LiteRT int8 keeps the op's input and
        output int8, as they are inside an int8 network)."""
        return self.build(module, input_shape)

    @abstractmethod
    def measure(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        """Time the artifact; raise :class:`BackendError` when the run fails."""

    @abstractmethod
    def runtime_version(self) -> str:
        """Version string of the runtime."""

    def host(self) -> str:
        return host_cpu()

    def prefetch_ops(self, ops: Sequence[OpSig]) -> None:
        """Start preparing a later batch of ops while the current one is measured (default: nothing to do)."""

    def final_provenance(self) -> dict[str, Any]:
        """Provenance known only at the end of a profile, merged into the table's (default: none)."""
        return {}

    def close(self) -> None:
        """Release what the backend holds (a device link, files); default: nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Provenance recorded with every table this backend fills."""
        s = self.spec
        return {"device": s.name, "runtime": self.runtime, "runtime_version": self.runtime_version(),
                "threads": s.threads, "cpu_mask": s.cpu_mask, "precision": s.precision, "batch_size": s.batch_size,
                "gpu_delegate": s.gpu_delegate, "xnnpack": s.xnnpack if self.runtime == "litert" else None,
                "rounds": s.rounds, "min_span_s": s.min_span_s, "e2e_repeats": s.e2e_repeats,
                "host": self.host(), "hostname": socket.gethostname(), "platform": platform.platform(),
                "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "natdeploy_version": __version__}

    def _shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.spec.batch_size, *shape[1:])

    def built_op(self, op: OpSig, seed: int = 0) -> tuple[Any, tuple[int, ...]]:
        """(artifact, input shape) of one op."""
        from natdeploy.convert.ops import build_op_module, op_input_shape

        layer = op.to_layer()
        shape = self._shape(op_input_shape(layer))
        return self.build_op(build_op_module(layer, seed), shape), shape

    def built_arch(self, arch: Arch, n_classes: int) -> tuple[Any, tuple[int, ...]]:
        """(artifact, input shape) of one whole subnet."""
        from natdeploy.supernet import MobileNetV3Subnet

        shape = self._shape((1, 3, arch.r, arch.r))
        return self.build(MobileNetV3Subnet(arch, n_classes).eval(), shape), shape

    def _time_runner(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        """Time one artifact in this process, with the spec's rounds and span (for the backends' ``measure``)."""
        return time_callable(self.runner(artifact, input_shape), warmup, runs, self.spec.rounds, self.spec.min_span_s)

    def measure_op(self, op: OpSig, seed: int = 0) -> Measurement:
        return self.measure(*self.built_op(op, seed), self.spec.warmup, self.spec.runs)

    def measure_arch(self, arch: Arch, n_classes: int) -> Measurement:
        return self.measure(*self.built_arch(arch, n_classes), self.spec.e2e_warmup, self.spec.e2e_runs)

    def anchor_runners(self, fresh: bool = False) -> list[Callable[[], Any]]:
        """Runners of the anchor subnet's ``ANCHOR_SESSIONS`` sessions (natdeploy.latency.speed), built once per
        backend; ``fresh`` builds new sessions (and keeps them for later calls)."""
        if fresh or not self._anchor:
            built = self.built_arch(Arch.parse(ANCHOR_ARCH), 10)
            self._anchor = [self.runner(*built) for _ in range(ANCHOR_SESSIONS)]
        return self._anchor

    def measure_batch(self, built: Sequence[tuple[Any, tuple[int, ...]]], warmup: int, runs: int) -> list[Measurement]:
        """Measure built artifacts ``(artifact, input_shape)``: round-robin with the anchor where the spec
        interleaves, else one by one."""
        if not self.interleaves:
            return [self.measure(artifact, shape, warmup, runs) for artifact, shape in built]
        return self._interleaved(list(built), warmup, runs)

    def _interleaved(self, built: list[tuple[Any, tuple[int, ...]]], warmup: int, runs: int) -> list[Measurement]:
        try:
            fns = [self.runner(artifact, shape) for artifact, shape in built]
            anchor = self.anchor_runners() if self.spec.anchor else None
            with self.timing_context():
                return time_interleaved(fns, warmup, runs, self.spec.rounds, self.spec.min_span_s, anchor)
        except Exception as exc:  # runtimes raise their own exception types
            raise BackendError(f"{self.runtime} run failed: {exc}") from exc

    def measure_ops(self, ops: Sequence[OpSig]) -> list[tuple[OpSig, Measurement]]:
        """Measure a batch of ops: round-robin in this process where the spec interleaves, else one by one."""
        if not self.interleaves:
            return [(op, self.measure_op(op)) for op in ops]
        built = [self.built_op(op) for op in ops]
        return list(zip(ops, self._interleaved(built, self.spec.warmup, self.spec.runs)))

    def measure_archs(self, archs: Sequence[Arch], n_classes: int) -> list[Measurement]:
        """Measure a batch of whole subnets, round-robin where the spec interleaves, else one by one. With the
        spec's ``e2e_repeats`` > 1 the batch is timed that many times, each time in a new order and with fresh
        sessions (``runner`` builds them), and each subnet keeps the median (:meth:`Measurement.combine`)."""
        if not self.interleaves:
            return [self.measure_arch(a, n_classes) for a in archs]
        built = [self.built_arch(a, n_classes) for a in archs]
        parts: list[list[Measurement]] = [[] for _ in built]
        order = np.arange(len(built))
        shuffle = np.random.default_rng(len(built))
        for rep in range(self.spec.e2e_repeats):
            if rep:
                order = shuffle.permutation(len(built))
            for i, m in zip(order, self._interleaved([built[i] for i in order], self.spec.e2e_warmup,
                                                      self.spec.e2e_runs)):
                parts[i].append(m)
        return [Measurement.combine(p) for p in parts]


def backend_class(spec: DeviceSpec) -> type[Backend]:
    """The backend class for a device spec, without starting it (what it runs, before it must run)."""
    if spec.transport == "adb":
        from natdeploy.latency.backends.adb_backend import AdbBackend

        return AdbBackend
    if spec.runtime == "onnxruntime":
        from natdeploy.latency.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if spec.runtime == "litert":
        from natdeploy.latency.backends.litert import LiteRTBackend

        return LiteRTBackend
    from natdeploy.latency.backends.torch import TorchBackend

    return TorchBackend


def get_backend(spec: DeviceSpec) -> Backend:
    """The backend for a device spec."""
    return backend_class(spec)(spec)
