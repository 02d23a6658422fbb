"""TFLite's ``benchmark_model`` on a phone over ADB: push, run pinned to a CPU mask, parse, in batches.

:class:`AdbBenchmarkRunner` pushes a user-provided ``benchmark_model`` binary and .tflite files (reused by sha256
when the phone already has them), times them with ``taskset <mask> benchmark_model --graph=...``, and records
the device's provenance. :meth:`AdbBenchmarkRunner.run_batch` runs many models in one shell call and streams
each result back as soon as it is done, with the clocks and temperatures read on the phone right before and
after each run: a model then costs a fraction of a round trip instead of several, and a dropped link loses only
the model in flight. Failures are the :class:`~natdeploy.latency.backends.adb.AdbError` family; a failed run
never becomes a number.

Not thread-safe: one runner (and one transport) per thread.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import posixpath
import re
import secrets
import shlex
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from natdeploy.devices import mask_cpus
from natdeploy.errors import NatDeployError
from natdeploy.latency.backends.adb import (CPU_ZONES, THERMAL_SNAPSHOT, AdbBenchmarkCrashError,
                                            AdbBenchmarkError, AdbBinaryError, AdbError, AdbThermalError,
                                            AdbTimeoutError, AdbTransferError, AdbTransport, CpuFreq, _tail,
                                            hottest_c, parse_thermal_snapshot, quote_command)
from natdeploy.latency.benchmark_model import BenchmarkParseError, BenchmarkResult, parse_benchmark_output

__all__ = ["AdbBenchmarkRun", "AdbBenchmarkRunner"]

log = logging.getLogger(__name__)
# Names this runner gives models on the phone start with 12 hex digits of their sha256 (see _remote_name).
_OUR_MODELS_GLOB = "[0-9a-f]" * 12 + "*.tflite"


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _version_in(text: str) -> str | None:
    """A version the binary printed about itself, if any (stock benchmark_model builds print none)."""
    # Only TFLite's own version: delegates print versions of other things (OpenCL, drivers).
    m = re.search(r"(?i)\b(?:tensorflow lite|tflite|litert)\b[^\n]*?\bversion\b[ :=]*v?(\d+\.\d+[\w.+-]*)", text)
    return m.group(1) if m else None


def _remote_name(model: Path, digest: str) -> str:
    """The model's file name on the phone: content-addressed, and plain enough for any shell and sha256sum."""
    name = model.name if model.name.startswith(digest) else f"{digest[:12]}-{model.name}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@dataclass(frozen=True)
class AdbBenchmarkRun:
    """One benchmark_model run: parsed statistics, the exact command, its output and the provenance."""

    result: BenchmarkResult
    model: str
    remote_model: str
    command: str
    output: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Section:
    """What the batch script printed for one model: clocks before, benchmark_model's output, status, after."""

    index: int
    before: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    returncode: int | None = None


class AdbBenchmarkRunner:
    """Time .tflite files on a phone with TFLite's ``benchmark_model`` (a binary you provide; never downloaded).

    ``cpu_mask`` is a hex affinity mask for ``taskset`` (e.g. ``"70"`` for cpu4-6). Before each batch the runner
    waits, at most ``cooldown_max_s``, while the hottest CPU zone is above ``max_temp_c`` or a pinned core's
    scaling_max_freq fell below ``freq_drop_ratio`` of what it was at :meth:`prepare`; then it raises
    :class:`AdbThermalError`. A model that starts while the phone is hot (read on the phone just before it ran)
    is reported as an :class:`AdbThermalError` instead of a result. Files it pushed or used are removed by
    :meth:`cleanup` unless ``keep_remote``.
    """

    def __init__(self, transport: AdbTransport, binary: str | Path, *, threads: int = 1, cpu_mask: str | None = None,
                 warmup_runs: int = 10, num_runs: int = 50, use_gpu: bool = False, use_xnnpack: bool | None = None,
                 extra_args: Sequence[str] = (), remote_dir: str = "/data/local/tmp/natdeploy",
                 timeout_s: float = 600.0, keep_remote: bool = False, max_temp_c: float = 45.0,
                 freq_drop_ratio: float = 0.9, cooldown_max_s: float = 180.0, cooldown_poll_s: float = 5.0) -> None:
        self.transport = transport
        self.binary = Path(binary)
        if not self.binary.is_file():
            raise AdbBinaryError(f"benchmark_model binary {self.binary} not found: build TFLite's "
                                 "//tensorflow/lite/tools/benchmark:benchmark_model for android_arm64 (or use a "
                                 "prebuilt you have) and pass its path")
        if threads < 1 or warmup_runs < 0 or num_runs < 1:
            raise ValueError(f"need threads >= 1, warmup_runs >= 0, num_runs >= 1; got {threads}, {warmup_runs}, "
                             f"{num_runs}")
        if cpu_mask is not None:
            mask_cpus(cpu_mask)
            cpu_mask = cpu_mask.lower().removeprefix("0x")
        self.threads, self.cpu_mask, self.warmup_runs, self.num_runs = threads, cpu_mask, warmup_runs, num_runs
        self.use_gpu, self.use_xnnpack, self.extra_args = use_gpu, use_xnnpack, tuple(extra_args)
        self.remote_dir, self.timeout_s, self.keep_remote = remote_dir.rstrip("/") or "/", timeout_s, keep_remote
        self.max_temp_c, self.freq_drop_ratio = max_temp_c, freq_drop_ratio
        self.cooldown_max_s, self.cooldown_poll_s = cooldown_max_s, cooldown_poll_s
        self.remote_binary = posixpath.join(self.remote_dir, "benchmark_model")
        self._pushed: list[str] = []
        self._used: set[str] = set()
        self._on_phone: dict[str, str] = {}  # remote path -> sha256 verified there during this session
        self._digests: dict[tuple[str, int, int], str] = {}  # (local path, size, mtime) -> sha256
        self._info: dict[str, Any] | None = None
        self._baseline: dict[int, CpuFreq] = {}
        self._has_timeout = False
        self._snapshot = THERMAL_SNAPSHOT  # narrowed at prepare() to the zones and cores that matter

    @classmethod
    def from_spec(cls, spec: Any, transport: AdbTransport | None = None, **overrides: Any) -> "AdbBenchmarkRunner":
        """A runner for a :class:`natdeploy.devices.DeviceSpec` with ``transport: adb``."""
        if not spec.benchmark_binary:
            raise AdbBinaryError(f"device {spec.name!r} sets no benchmark_binary: build TFLite's benchmark_model "
                                 "for the phone and set `benchmark_binary: /path/to/benchmark_model` in its yaml "
                                 "(or pass --benchmark-binary)")
        kwargs: dict[str, Any] = dict(threads=spec.threads, cpu_mask=spec.cpu_mask, warmup_runs=spec.warmup,
                                      num_runs=spec.runs, use_gpu=spec.gpu_delegate,
                                      use_xnnpack=None if spec.xnnpack else False)
        kwargs.update(overrides)
        return cls(transport or AdbTransport(spec.serial), spec.benchmark_binary, **kwargs)

    def __enter__(self) -> "AdbBenchmarkRunner":
        try:
            self.prepare()
        except BaseException as exc:  # __exit__ will not run: remove a binary pushed before the failure
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.cleanup()
        except AdbError as cleanup_exc:
            if exc is None:
                raise
            log.warning("could not remove benchmark files from the phone: %s", cleanup_exc)

    @property
    def baseline_freqs(self) -> dict[int, CpuFreq]:
        """The clocks read at :meth:`prepare`: the reference for throttling checks."""
        return dict(self._baseline)

    # -- setup ---------------------------------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Push and check the binary, and read the device description (once); returns that description."""
        if self._info is not None:
            return self._info
        t = self.transport
        t.shell(["mkdir", "-p", self.remote_dir])
        binary_sha = self._push_reusing(self.binary, self.remote_binary, mode=0o755)
        t.shell(["chmod", "755", self.remote_binary])  # a reused copy may have lost its exec bit
        out, rc = t.shell_status([self.remote_binary, "--help"], timeout_s=60)
        if rc in (126, 127) or "--graph" not in out:
            hint = ("it is not built for this phone's CPU/Android (build for android_arm64)"
                    if re.search(r"CANNOT LINK|not executable|Exec format|ELF", out) else
                    "it does not look like TFLite's benchmark_model (its --help does not list --graph)")
            raise AdbBinaryError(f"{self.binary} cannot run on {t.name}: {hint}; exit status {rc}.\n{_tail(out)}")
        self._has_timeout = t.shell_status("command -v timeout")[1] == 0
        props = t.getprops()
        temps, self._baseline = t.read_thermal_state()
        self._snapshot = self._snapshot_script(temps)
        self._info = {
            "serial": t.name, "model": props.get("ro.product.model", ""),
            "manufacturer": props.get("ro.product.manufacturer", ""),
            "hardware": props.get("ro.hardware", ""),
            "soc": props.get("ro.soc.model") or props.get("ro.board.platform", ""),
            "android_release": props.get("ro.build.version.release", ""),
            "sdk": props.get("ro.build.version.sdk", ""), "abi": props.get("ro.product.cpu.abi", ""),
            "build_fingerprint": props.get("ro.build.fingerprint", ""),
            "binary": str(self.binary), "binary_sha256": binary_sha,
            "binary_version": _version_in(out),
            "cpu_mask": self.cpu_mask, "threads": self.threads, "use_gpu": self.use_gpu,
            "use_xnnpack": self.use_xnnpack, "warmup_runs": self.warmup_runs, "num_runs": self.num_runs,
        }
        return self._info

    def _snapshot_script(self, temps: dict[str, float]) -> str:
        """A shell snippet reading, with builtins only, the CPU thermal zones and the pinned cores' clocks.

        Run twice per model inside a batch, so it reads only what the cool-down rules look at: a phone has
        dozens of thermal zones, and some sensors take milliseconds to read. Same output as THERMAL_SNAPSHOT.
        """
        zones = [k for k in temps if re.search(CPU_ZONES, k.partition(":")[2], re.I)] or list(temps)
        cpus = mask_cpus(self.cpu_mask) if self.cpu_mask else sorted(self._baseline)
        parts = []
        for zone in zones:
            name = zone.partition(":")[0]
            if re.fullmatch(r"thermal_zone\d+", name):
                parts.append(f't=; read -r t < /sys/class/thermal/{name}/temp; printf "T %s %s\\n" '
                             f'{shlex.quote(zone)} "$t"')
        for cpu in cpus:
            f = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
            parts.append(f'a=; b=; read -r a < {f}/scaling_cur_freq; read -r b < {f}/scaling_max_freq; '
                         f'printf "F {cpu} %s %s \\n" "$a" "$b"')
        return "{ " + "; ".join(parts) + "; } 2>/dev/null" if parts else ":"

    def _push_reusing(self, local: Path, remote: str, mode: int = 0o644) -> str:
        """Push unless the phone already has identical bytes at ``remote`` (sha256 on the device); local sha256."""
        digest = _sha256_file(local)
        self._used.add(remote)
        if self.transport.sha256(remote) == digest:
            log.debug("reusing %s on the phone (same sha256)", remote)
            return digest
        self.transport.push(local, remote, mode=mode, timeout_s=self.timeout_s)
        self._pushed.append(remote)
        remote_digest = self.transport.sha256(remote)
        if remote_digest is not None and remote_digest != digest:
            raise AdbTransferError(f"{remote} on the phone does not match {local} after the push (sha256 "
                                   f"{remote_digest} != {digest}): the copy is corrupt; retry")
        return digest

    def push_model(self, model: str | Path) -> str:
        """The model's path on the phone (named by its sha256 prefix), pushed only if not already there."""
        return self.push_models([model])[0]

    def _digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = _sha256_file(path)
        return self._digests[key]

    def push_models(self, models: Sequence[str | Path], transport: AdbTransport | None = None) -> list[str]:
        """Each model's path on the phone; only those the phone lacks (by sha256, one call for all) are pushed.

        Files checked or pushed earlier in this session are not checked again. A pushed model is not hashed
        again on the phone: a damaged copy fails to load, that run fails and forgets the model, and the retry
        checks its sha256 and pushes it again (damaged weight values would not change the latency anyway).
        ``transport`` is another link to the same phone (see :meth:`AdbTransport.sibling`) for pushing ahead
        from a second thread while this runner's link runs a batch; the bookkeeping here is single dict and
        list operations, which the GIL keeps whole.
        """
        t = transport or self.transport
        local = [Path(m) for m in models]
        remotes, wanted = [], {}
        for path in local:
            digest = self._digest(path)
            remote = posixpath.join(self.remote_dir, _remote_name(path, digest))
            remotes.append(remote)
            if self._on_phone.get(remote) != digest:
                wanted.setdefault(remote, (path, digest))
        on_phone = t.sha256_many(list(wanted))
        pushed = []
        for remote, (path, digest) in wanted.items():
            self._used.add(remote)
            if on_phone[remote] != digest:
                t.push(path, remote, timeout_s=self.timeout_s)
                self._pushed.append(remote)
                pushed.append(remote)
            self._on_phone[remote] = digest
        log.debug("%d models: %d pushed, %d reused", len(remotes), len(pushed), len(remotes) - len(pushed))
        return remotes

    # -- thermal -------------------------------------------------------------------------------------------------
    def _hot_reasons(self, temps: dict[str, float], freqs: dict[int, CpuFreq]) -> list[str]:
        reasons = []
        temp = hottest_c(temps)
        if temp is not None and temp > self.max_temp_c:
            reasons.append(f"CPU at {temp:.1f} °C > {self.max_temp_c:g} °C")
        cpus = mask_cpus(self.cpu_mask) if self.cpu_mask else list(freqs)
        for cpu in cpus:
            before, now = self._baseline.get(cpu), freqs.get(cpu)
            if before and now and before.max_khz and now.max_khz and \
                    now.max_khz < before.max_khz * self.freq_drop_ratio:
                reasons.append(f"cpu{cpu} capped at {now.max_khz / 1e6:.2f} GHz (was {before.max_khz / 1e6:.2f})")
        return reasons

    def wait_until_cool(self) -> tuple[float | None, dict[int, CpuFreq]]:
        """Wait while the phone is hot or throttled; the final temperature and clocks."""
        deadline = time.monotonic() + self.cooldown_max_s
        while True:
            temps, freqs = self.transport.read_thermal_state()
            reasons = self._hot_reasons(temps, freqs)
            if not reasons:
                return hottest_c(temps), freqs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AdbThermalError(f"{self.transport.name} is still hot after {self.cooldown_max_s:g} s "
                                      f"({'; '.join(reasons)}). Let it cool (screen off, off the charger, out of the "
                                      "sun), or raise cooldown_max_s / max_temp_c")
            log.info("waiting for the phone to cool: %s", "; ".join(reasons))
            time.sleep(min(self.cooldown_poll_s, remaining))

    # -- running -------------------------------------------------------------------------------------------------
    def command(self, remote_model: str, warmup_runs: int | None = None, num_runs: int | None = None) -> list[str]:
        """The benchmark_model command line (unquoted arguments)."""
        cmd = ["timeout", str(math.ceil(self.timeout_s))] if self._has_timeout else []
        if self.cpu_mask:
            cmd += ["taskset", self.cpu_mask]
        warmup = self.warmup_runs if warmup_runs is None else warmup_runs
        runs = self.num_runs if num_runs is None else num_runs
        cmd += [self.remote_binary, f"--graph={remote_model}", f"--num_threads={self.threads}",
                f"--warmup_runs={warmup}", f"--num_runs={runs}"]
        if self.use_gpu:
            cmd.append("--use_gpu=true")
        if self.use_xnnpack is not None:
            cmd.append(f"--use_xnnpack={str(self.use_xnnpack).lower()}")
        return cmd + list(self.extra_args)

    def run(self, model: str | Path, *, warmup_runs: int | None = None, num_runs: int | None = None
            ) -> AdbBenchmarkRun:
        """Push (or reuse) one model, wait until cool, run benchmark_model, and parse its output."""
        for _, result in self.run_batch([model], warmup_runs=warmup_runs, num_runs=num_runs):
            if isinstance(result, BaseException):
                raise result
            return result
        raise AssertionError("run_batch yields one result per model")

    def run_batch(self, models: Sequence[str | Path], *, warmup_runs: int | None = None,
                  num_runs: int | None = None) -> Iterator[tuple[str, AdbBenchmarkRun | NatDeployError]]:
        """Run every model in one shell call; yield ``(model, run or error)`` in order, each as soon as it is done.

        A model that failed on its own (a crash, a bad model, unparsable output, or started while the phone was
        hot) comes back as its error, and the batch goes on. A fault of the link or the phone (disconnect,
        timeout, full storage) raises out of the iterator; everything yielded before it stands.
        """
        info = self.prepare()
        paths = [Path(m) for m in models]
        remotes = self.push_models(paths)
        self.wait_until_cool()
        mark = f"__NATDEPLOY_{secrets.token_hex(4)}_"  # unguessable: model output cannot fake a section boundary
        commands = [self.command(r, warmup_runs, num_runs) for r in remotes]
        script = "\n".join(
            f"printf '%s\\n' {mark}BEGIN{i}; {self._snapshot}; printf '%s\\n' {mark}RUN; "
            f"{quote_command(cmd)} </dev/null 2>&1; rc=$?; printf '\\n%s%s\\n' {mark}RC \"$rc\"; "
            f"{self._snapshot}; printf '%s\\n' {mark}END"
            for i, cmd in enumerate(commands))
        # On-device `timeout` stops a hung binary; the client limits leave each run time to report.
        per_model = self.timeout_s + 30
        section: _Section | None = None
        target: list[str] = []
        for line in self.transport.shell_lines(script, timeout_s=len(remotes) * per_model, idle_timeout_s=per_model):
            if not line.startswith(mark):
                target.append(line)
                continue
            tag = line[len(mark):]
            if tag.startswith("BEGIN"):
                section = _Section(int(tag[5:]))
                target = section.before
            elif section is None:
                continue
            elif tag == "RUN":
                target = section.output
            elif tag.startswith("RC"):
                section.returncode = int(tag[2:])
                if section.output and section.output[-1] == "":
                    section.output.pop()  # the newline printed before the status marker
                target = section.after
            elif tag == "END":
                i = section.index
                yield str(paths[i]), self._result(info, paths[i], remotes[i], commands[i], section)
                section, target = None, []

    def _result(self, info: dict[str, Any], model: Path, remote: str, cmd: list[str],
                section: _Section) -> AdbBenchmarkRun | NatDeployError:
        out = "\n".join(section.output) + "\n"
        temps_before, freqs_before = parse_thermal_snapshot(section.before)
        temps_after, freqs_after = parse_thermal_snapshot(section.after)
        if section.returncode != 0:
            self._on_phone.pop(remote, None)  # a retry checks the model on the phone again
            return self._status_error(section.returncode or 0, out)
        reasons = self._hot_reasons(temps_before, freqs_before)
        if reasons:
            return AdbThermalError(f"{model.name} started while {self.transport.name} was hot ({'; '.join(reasons)}); "
                                   "its timings were discarded: measure it again once the phone has cooled")
        try:
            result = parse_benchmark_output(out)
        except BenchmarkParseError as exc:
            return exc
        if info["binary_version"] is None:
            info["binary_version"] = _version_in(out)
        provenance = dict(info, model_file=str(model), remote_model=remote,
                          temperature_before_c=hottest_c(temps_before), temperature_after_c=hottest_c(temps_after),
                          cpu_freqs_before_khz={c: f.cur_khz for c, f in freqs_before.items()},
                          cpu_freqs_after_khz={c: f.cur_khz for c, f in freqs_after.items()},
                          cpu_max_freqs_khz={c: f.max_khz for c, f in freqs_after.items()},
                          date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        return AdbBenchmarkRun(result=result, model=str(model), remote_model=remote, command=quote_command(cmd),
                               output=out, provenance=provenance)

    def _status_error(self, rc: int, out: str) -> AdbError:
        """The error for a benchmark_model run that exited with status ``rc``."""
        if rc == 124 and self._has_timeout:
            return AdbTimeoutError(f"benchmark_model ran past {self.timeout_s:g} s on {self.transport.name} and was "
                                   f"stopped; raise timeout_s or lower num_runs.\n{_tail(out)}")
        if rc > 128:
            try:
                name = signal.Signals(rc - 128).name
            except ValueError:
                name = "unknown signal"
            return AdbBenchmarkCrashError(
                f"benchmark_model crashed on {self.transport.name} (signal {rc - 128}, {name}; SIGKILL often means "
                f"the phone ran out of memory). Check `adb logcat` for the native crash.\n{_tail(out)}",
                returncode=rc, output=out)
        if rc in (126, 127):
            return AdbBinaryError(f"benchmark_model could not start on {self.transport.name} (exit {rc}).\n"
                                  f"{_tail(out)}")
        return AdbBenchmarkError(f"benchmark_model failed on {self.transport.name} with exit status {rc}.\n"
                                 f"{_tail(out)}", returncode=rc, output=out)

    def remove_models(self) -> None:
        """Remove the models this runner pushed or used from the phone, keeping the binary: they are pushed
        again when next run (what a benchmark of the push path needs)."""
        models = sorted(r for r in set(self._pushed) | self._used if r != self.remote_binary)
        if models:
            self.transport.shell(["rm", "-f", "--", *models])
        self._pushed = [r for r in self._pushed if r not in models]
        self._used -= set(models)
        self._on_phone = {r: d for r, d in self._on_phone.items() if r not in models}

    def cleanup(self) -> None:
        """Remove what this runner pushed or used, and models an earlier interrupted run left (unless
        ``keep_remote``). Only this runner's own names are touched, so other files in ``remote_dir`` stay."""
        if self.keep_remote or not (self._pushed or self._used):
            return
        files = sorted(set(self._pushed) | self._used)
        # The glob stays unquoted so the phone's shell expands it; every other value is quoted.
        self.transport.shell(f"{quote_command(['rm', '-f', '--', *files])} {shlex.quote(self.remote_dir)}/"
                             f"{_OUR_MODELS_GLOB}")
        self._pushed.clear()
        self._used.clear()
        self._on_phone.clear()
        self.transport.shell_status(["rmdir", self.remote_dir])  # only succeeds when empty; fine either way

