"""Latency backend for a phone over ADB: the LiteRT backend's .tflite files, timed by ``benchmark_model`` on it.

The artifact is exactly what the LiteRT backend (and so the exporter) builds; it is written to a local cache
file named by its sha256, pushed once (the phone's copy is reused by checksum), and timed on the phone by the
user's ``benchmark_model`` with the device spec's threads, CPU mask, warm-up, runs and delegate. Ops are
measured in batches (:meth:`AdbBackend.measure_ops`): one shell call runs many models and streams each result
back as it finishes, while the next batch is converted on this computer and, over TCP, pushed through a second
connection (:meth:`AdbBackend.prefetch_ops`), so the phone, the converter and the link work at the same time.

Statistic: benchmark_model reports the mean, std, count, min and max of the timed runs (and, in some builds,
p5/median/p95), never a 10th percentile. Tables filled here use the **mean** (``statistic = "mean"``):

* it is the statistic every benchmark_model version prints, down to the summary line;
* the predictor adds op latencies, and means add up (the mean of a sum is the sum of the means), while minima
  and percentiles do not;
* OFA's published phone tables, which natdeploy imports as they are, are means too.

The median is recorded when the binary printed it and is NaN otherwise; no percentile is ever made up.

Options come from the device spec's ``extra`` mapping (see :data:`ADB_OPTIONS`), for example
``extra: {batch_size: 16, reconnect_wait_s: 30}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import nn

from natdeploy.devices import DeviceSpec
from natdeploy.errors import ConfigError
from natdeploy.fileio import atomic_write_bytes
from natdeploy.latency.backends import Backend, BackendError
from natdeploy.latency.backends.adb import (AdbAuthError, AdbBinaryError, AdbConnectionError, AdbError,
                                            AdbStorageFullError, AdbTimeoutError, AdbTransport, hottest_c)
from natdeploy.latency.backends.adb_runner import AdbBenchmarkRun, AdbBenchmarkRunner
from natdeploy.latency.backends.litert import LiteRTBackend
from natdeploy.latency.benchmark_model import BenchmarkParseError, BenchmarkResult
from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import OpSig
from natdeploy.space import Arch

__all__ = ["ADB_OPTIONS", "AdbBackend", "AdbBackendError", "measurement_from_result"]

log = logging.getLogger(__name__)

# Options of the ADB path, read from DeviceSpec.extra; the values here are the defaults.
ADB_OPTIONS: dict[str, Any] = {
    "keep_remote": False,  # leave pushed files on the phone at the end (--keep-remote)
    "remote_dir": "/data/local/tmp/natdeploy",
    "adbkey": None,  # path of the ADB private key (default: adb's own, ~/.android/adbkey)
    "batch_size": 16,  # ops per shell call: amortises the round trips, loses at most one op on a drop
    "run_timeout_s": 300.0,  # one benchmark_model run (stopped on the phone by `timeout`)
    "call_timeout_s": 60.0,  # any other device call
    "connect_timeout_s": 10.0,  # a single socket operation
    "auth_timeout_s": 30.0,  # time to accept the USB debugging prompt
    "connect_wait_s": 60.0,  # how long the first connection waits for the phone (still rebooting, say)
    "reconnect_wait_s": 30.0,  # how long a link that dropped mid-profile may take to come back
    "max_temp_c": 45.0,
    "cooldown_max_s": 180.0,
    "cooldown_poll_s": 5.0,
    # benchmark_model runs for at least --min_secs (default 1 s) whatever --num_runs says: 0 makes the spec's run
    # count the count. A short warm-up floor lets the governor raise the clock after an idle gap (host-side
    # conversion runs between batches), which a few runs of a sub-millisecond op would not.
    "min_secs": 0.0,
    "warmup_min_secs": 0.1,
}


def adb_options(spec: DeviceSpec) -> dict[str, Any]:
    """The ADB options of a device spec: :data:`ADB_OPTIONS` updated by ``spec.extra``."""
    unknown = sorted(set(spec.extra) - set(ADB_OPTIONS))
    if unknown:
        raise ConfigError(f"device {spec.name!r}: unknown extra option(s) {unknown} for the adb transport; allowed: "
                          f"{sorted(ADB_OPTIONS)}")
    return {**ADB_OPTIONS, **spec.extra}


# One conversion at a time in this process: TF's converter is not made for threads.
_CONVERT_LOCK = threading.RLock()


class AdbBackendError(BackendError):
    """A measurement on the phone failed. ``retryable`` is False when trying again at once cannot help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def measurement_from_result(result: BenchmarkResult, warmup: int) -> Measurement:
    """A :class:`Measurement` holding only what benchmark_model measured (no percentile it did not print)."""
    if result.count is None or result.std_ms is None or result.min_ms is None:
        raise BenchmarkParseError(f"benchmark_model printed only its summary line ({result.raw!r}): the number "
                                  "of runs, their spread and minimum are unknown, and natdeploy does not make "
                                  "them up; check that its stdout reaches natdeploy unfiltered")
    return Measurement(median_ms=math.nan if result.median_ms is None else result.median_ms, mean_ms=result.mean_ms,
                       std_ms=result.std_ms, count=result.count,
                       warmup=warmup if result.warmup_count is None else result.warmup_count,
                       p10_ms=None, min_ms=result.min_ms)


class AdbBackend(Backend):
    """Times the LiteRT backend's .tflite files on a phone with ``benchmark_model`` (see the module docstring)."""

    runtime = "litert"
    artifact_format = "tflite"
    precisions = ("fp32", "int8", "fp16")
    statistic = "mean"

    def __init__(self, spec: DeviceSpec, *, transport: AdbTransport | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        if spec.transport != "adb":
            raise BackendError(f"device {spec.name!r} has transport {spec.transport!r}; AdbBackend needs 'adb'")
        super().__init__(spec)
        self.options = adb_options(spec)
        self.op_batch_size = max(1, int(self.options["batch_size"]))
        self._litert = LiteRTBackend(spec)  # the build path: the same .tflite the exporter ships
        o = self.options
        self.transport = transport or AdbTransport(
            spec.serial, adbkey_path=o["adbkey"], transport_timeout_s=o["connect_timeout_s"],
            read_timeout_s=o["call_timeout_s"], auth_timeout_s=o["auth_timeout_s"],
            command_timeout_s=o["call_timeout_s"])
        with self._device("setting up benchmark_model", reconnect=False):
            self.runner = AdbBenchmarkRunner.from_spec(
                spec, self.transport, remote_dir=o["remote_dir"], timeout_s=o["run_timeout_s"],
                keep_remote=bool(o["keep_remote"]), max_temp_c=o["max_temp_c"], cooldown_max_s=o["cooldown_max_s"],
                cooldown_poll_s=o["cooldown_poll_s"],
                extra_args=(f"--min_secs={o['min_secs']:g}", f"--warmup_min_secs={o['warmup_min_secs']:g}"))
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._own_cache = cache_dir is None
        self._artifacts: dict[tuple[Any, ...], Path] = {}
        self._pending: dict[tuple[Any, ...], Future[Path]] = {}
        self._builder: ThreadPoolExecutor | None = None
        self._pusher: AdbTransport | None = None  # a second link that pushes prefetched models ahead
        self._build_lock = _CONVERT_LOCK  # shared by every backend in the process (a farm drives several)
        self._info: dict[str, Any] | None = None
        self._adb_provenance: dict[str, Any] = {}
        self._temps: list[float] = []
        self._runs = 0
        self._remeasured = 0

    # -- errors --------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _device(self, what: str, reconnect: bool = True) -> Iterator[None]:
        """ADB failures inside the block become :class:`AdbBackendError`, marked retryable or not.

        After a dropped link (or a phone that stopped answering) it waits up to ``reconnect_wait_s`` for the
        phone: if it comes back, the error is retryable (the profiler tries again); if not, the error is final.
        """
        try:
            yield
        except AdbAuthError as exc:
            raise AdbBackendError(f"{what}: {exc}", retryable=False) from exc
        except (AdbConnectionError, AdbTimeoutError) as exc:
            if not reconnect:
                raise AdbBackendError(f"{what}: {exc}", retryable=False) from exc
            raise self._after_link_fault(what, exc) from exc
        except (AdbStorageFullError, AdbBinaryError) as exc:
            raise AdbBackendError(f"{what}: {exc}", retryable=False) from exc
        except (AdbError, BenchmarkParseError) as exc:
            raise AdbBackendError(f"{what}: {exc}") from exc

    def _after_link_fault(self, what: str, exc: AdbError) -> AdbBackendError:
        wait = float(self.options["reconnect_wait_s"])
        log.warning("%s: %s; waiting up to %g s for %s to come back", what, exc, wait, self.transport.name)
        try:
            self.transport.connect_with_retry(wait, poll_s=max(0.05, min(1.0, wait / 5)))
        except AdbError as again:
            return AdbBackendError(
                f"{what}: {exc}\n{self.transport.name} did not come back within {wait:g} s ({again}). Reconnect it "
                "(after a reboot, Wi-Fi debugging needs `adb tcpip 5555` over USB again) and rerun the same command: "
                "everything measured so far is saved and the profile resumes", retryable=False)
        return AdbBackendError(f"{what}: {exc} (the phone is back; trying again)", retryable=True)

    # -- the phone -----------------------------------------------------------------------------------------------
    def _prepare(self) -> dict[str, Any]:
        """Connect (waiting for the phone up to ``connect_wait_s``), push and check the binary; once."""
        if self._info is None:
            wait = float(self.options["connect_wait_s"])
            with self._device(f"connecting to {self.transport.name}", reconnect=False):
                self.transport.connect_with_retry(wait, poll_s=max(0.05, min(1.0, wait / 10)))
            with self._device(f"preparing benchmark_model on {self.transport.name}"):
                self._info = self.runner.prepare()
        return self._info

    def runtime_version(self) -> str:
        info = self._prepare()
        kernels = "GPU delegate" if self.spec.gpu_delegate else "XNNPACK" if self.spec.xnnpack else "builtin kernels"
        return (f"TFLite benchmark_model {info['binary_version'] or '(no version printed)'} "
                f"sha256:{info['binary_sha256'][:16]} ({kernels})")

    def host(self) -> str:
        """The phone, not this computer: tables of different phones must not mix."""
        info = self._prepare()
        name = " ".join(x for x in (info["manufacturer"], info["model"]) if x) or "unknown phone"
        return f"{name} ({info['soc'] or info['hardware'] or 'unknown SoC'})"

    def describe(self) -> dict[str, Any]:
        info = self._prepare()
        d = super().describe()
        baseline = self.runner.baseline_freqs
        self._adb_provenance = {
            **{k: info[k] for k in ("serial", "model", "manufacturer", "hardware", "soc", "android_release", "sdk",
                                    "abi", "build_fingerprint", "binary", "binary_sha256", "binary_version",
                                    "cpu_mask", "threads", "use_gpu", "use_xnnpack")},
            "cpu_freqs_before_khz": {c: f.cur_khz for c, f in baseline.items()},
            "cpu_max_freqs_before_khz": {c: f.max_khz for c, f in baseline.items()},
            "benchmark_args": list(self.runner.extra_args), "remote_dir": self.runner.remote_dir,
            "batch_size": self.op_batch_size,
        }
        d.update(platform=f"Android {info['android_release']} (SDK {info['sdk']}, {info['abi']})",
                 statistic=self.statistic, adb=self._adb_provenance,
                 driver_host=d["hostname"])  # hostname is the computer that drove the phone, not the phone
        return d

    def final_provenance(self) -> dict[str, Any]:
        """Provenance known only at the end of a profile: clocks and temperature after it, and run counts."""
        after: dict[str, Any] = {"runs": self._runs, "remeasured_ops": self._remeasured,
                                 "temperature_max_c": max(self._temps) if self._temps else None}
        try:
            with self._device("reading the clocks after profiling", reconnect=False):
                temps, freqs = self.transport.read_thermal_state()
            after.update(cpu_freqs_after_khz={c: f.cur_khz for c, f in freqs.items()},
                         cpu_max_freqs_after_khz={c: f.max_khz for c, f in freqs.items()},
                         temperature_after_c=hottest_c(temps))
        except AdbBackendError as exc:
            log.warning("could not read the phone's clocks after profiling: %s", exc)
        return {"adb": {**self._adb_provenance, **after}}

    # -- artifacts -----------------------------------------------------------------------------------------------
    def build(self, module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
        return self._litert.build(module, input_shape)

    def build_op(self, module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
        return self._litert.build_op(module, input_shape)

    def _store(self, model: bytes) -> Path:
        """The model's file in the local cache, named by its sha256 (written once, atomically)."""
        with self._build_lock:  # the background builder writes here too
            if self._cache_dir is None:
                self._cache_dir = Path(tempfile.mkdtemp(prefix="natdeploy-adb-"))
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            path = self._cache_dir / f"{hashlib.sha256(model).hexdigest()}.tflite"
            if not path.exists():
                atomic_write_bytes(path, model)
            return path

    def _artifact(self, key: tuple[Any, ...], make: Callable[[], tuple[nn.Module, tuple[int, ...]]]) -> Path:
        """The cached model file for ``key``, built on first use: retries and re-measurements skip the build."""
        pending = self._pending.pop(key, None)
        if pending is not None:
            return pending.result()  # built in the background; its error, if any, surfaces here
        return self._build(key, make)

    def _build(self, key: tuple[Any, ...], make: Callable[[], tuple[nn.Module, tuple[int, ...]]]) -> Path:
        with self._build_lock:
            if key not in self._artifacts:
                module, shape = make()
                build = self.build_op if key[0] == "op" else self.build
                self._artifacts[key] = self._store(build(module, shape))
            return self._artifacts[key]

    def _op_key(self, op: OpSig, seed: int) -> tuple[Any, ...]:
        return ("op", op.key, seed, self.spec.batch_size)

    def _op_maker(self, op: OpSig, seed: int) -> Callable[[], tuple[nn.Module, tuple[int, ...]]]:
        def make() -> tuple[nn.Module, tuple[int, ...]]:
            from natdeploy.convert.ops import build_op_module, op_input_shape

            layer = op.to_layer()
            return build_op_module(layer, seed), self._shape(op_input_shape(layer))

        return make

    def _op_artifact(self, op: OpSig, seed: int) -> Path:
        return self._artifact(self._op_key(op, seed), self._op_maker(op, seed))

    def prefetch_ops(self, ops: Sequence[OpSig], seed: int = 0) -> None:
        """Start converting ``ops`` in a background thread, for a later :meth:`measure_ops` to find ready.

        Over TCP the thread also pushes each model through a second connection, so the pushes overlap the
        phone's runs of the current batch. A model waited for (its future) is thus built and, if possible,
        on the phone; a push that failed here is simply done again, in the foreground, with its batch.
        """
        if self._builder is None:
            self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="natdeploy-tflite")
        if self._pusher is None and self._info is not None and self.transport.is_tcp:
            self._pusher = self.transport.sibling()
        for op in ops:
            key = self._op_key(op, seed)
            if key not in self._pending and (key not in self._artifacts or self._pusher is not None):
                self._pending[key] = self._builder.submit(self._build_and_push, key, self._op_maker(op, seed))

    def _build_and_push(self, key: tuple[Any, ...], make: Callable[[], tuple[nn.Module, tuple[int, ...]]]) -> Path:
        path = self._build(key, make)
        if self._pusher is not None:
            try:
                self.runner.push_models([path], transport=self._pusher)
            except AdbError as exc:
                log.debug("pushing %s ahead failed (%s); it goes with its batch", path.name, exc)
        return path

    # -- measuring -----------------------------------------------------------------------------------------------
    def _record(self, run: AdbBenchmarkRun, warmup: int) -> Measurement:
        self._runs += 1
        temp = run.provenance.get("temperature_after_c")
        if temp is not None:
            self._temps.append(temp)
        try:
            return measurement_from_result(run.result, warmup)
        except BenchmarkParseError as exc:
            raise AdbBackendError(f"{Path(run.model).name}: {exc}") from exc

    def _run_one(self, model: Path, warmup: int, runs: int) -> Measurement:
        self._prepare()
        with self._device(f"timing {model.name} on {self.transport.name}"):
            run = self.runner.run(model, warmup_runs=warmup, num_runs=runs)
        return self._record(run, warmup)

    def measure(self, artifact: Any, input_shape: tuple[int, ...], warmup: int, runs: int) -> Measurement:
        return self._run_one(self._store(artifact), warmup, runs)

    def measure_op(self, op: OpSig, seed: int = 0) -> Measurement:
        return self._run_one(self._op_artifact(op, seed), self.spec.warmup, self.spec.runs)

    def measure_arch(self, arch: Arch, n_classes: int) -> Measurement:
        def make() -> tuple[nn.Module, tuple[int, ...]]:
            from natdeploy.supernet import MobileNetV3Subnet

            return MobileNetV3Subnet(arch, n_classes).eval(), self._shape((1, 3, arch.r, arch.r))

        model = self._artifact(("arch", arch.to_string(), n_classes, self.spec.batch_size), make)
        return self._run_one(model, self.spec.e2e_warmup, self.spec.e2e_runs)

    def measure_ops(self, ops: Sequence[OpSig], seed: int = 0) -> Iterator[tuple[OpSig, Measurement]]:
        """Measure ops in one batch, yielding each as soon as the phone has timed it.

        An op that failed on its own (a crash, or it started while the phone was hot) is left out with a
        warning, for the caller to measure again alone. A link or phone fault raises :class:`AdbBackendError`.
        """
        self._prepare()
        models = [self._op_artifact(op, seed) for op in ops]
        with self._device(f"timing a batch of {len(ops)} ops on {self.transport.name}"):
            results = self.runner.run_batch(models, warmup_runs=self.spec.warmup, num_runs=self.spec.runs)
            # Read the stream to its end (no zip, which stops one item early): a stream left half-read costs the
            # link.
            for i, (_, result) in enumerate(results):
                op = ops[i]
                if isinstance(result, BaseException):
                    self._remeasured += 1
                    log.warning("op %s: %s; measuring it again on its own", op.key, str(result).splitlines()[0])
                    continue
                try:
                    m = self._record(result, self.spec.warmup)
                except AdbBackendError as exc:
                    log.warning("op %s: %s; measuring it again on its own", op.key, exc)
                    continue
                yield op, m

    # -- lifetime ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove pushed files from the phone (unless ``keep_remote``), close the link, drop the local cache."""
        if self._builder is not None:  # first: a push in flight must land before the clean-up, not after it
            self._builder.shutdown(wait=True, cancel_futures=True)
            self._builder = None
            self._pending.clear()
        if self._pusher is not None:
            self._pusher.close()
            self._pusher = None
        try:
            if self._info is not None:
                with self._device("removing benchmark files from the phone", reconnect=False):
                    self.runner.cleanup()
        except AdbBackendError as exc:
            log.warning("could not remove natdeploy's files from the phone (%s); they stay in %s until the next "
                        "successful profile, or remove them by hand", exc, self.runner.remote_dir)
        finally:
            self.transport.close()
            if self._own_cache and self._cache_dir is not None:
                shutil.rmtree(self._cache_dir, ignore_errors=True)
                self._cache_dir = None
            self._artifacts.clear()

