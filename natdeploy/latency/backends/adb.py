"""ADB transport (adb-shell, no adb server needed) and the on-device benchmark_model runner.

:class:`AdbTransport` talks to one phone over TCP (serial ``host:port``, after ``adb tcpip 5555``) or USB
(with the ``usb`` extra). Every call has an explicit timeout, every interpolated shell value goes through
``shlex.quote``, and a shell command's exit status comes back through an in-band marker (adbd's legacy shell
service does not report it). :class:`AdbBenchmarkRunner` pushes a user-provided ``benchmark_model`` binary and
.tflite files (reused by sha256 when already on the phone), times them pinned to a CPU mask, and records the
device's provenance. Failures raise the :class:`AdbError` family; a failed run never becomes a number.

Neither class is thread-safe: use one transport per thread.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import os
import posixpath
import re
import shlex
import signal
import socket
import stat as _stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from adb_shell import exceptions as adb_exc
from adb_shell.adb_device import AdbDevice
from adb_shell.transport.tcp_transport import TcpTransport

from natdeploy.errors import NatDeployError
from natdeploy.latency.benchmark_model import BenchmarkResult, parse_benchmark_output

__all__ = [
    "AdbError", "AdbConnectionError", "AdbAuthError", "AdbDisconnectedError", "AdbTimeoutError", "AdbCommandError",
    "AdbTransferError", "AdbStorageFullError", "AdbBinaryError", "AdbBenchmarkError", "AdbBenchmarkCrashError",
    "AdbThermalError", "AdbTransport", "AdbBenchmarkRunner", "AdbBenchmarkRun", "CpuFreq", "RemoteStat",
    "default_adbkey_path", "quote_command",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

RC_MARKER = "__NATDEPLOY_RC="
_RC_TAIL = re.compile(r"\r?\n" + RC_MARKER + r"(\d+)\r?\n?\Z")
_TAIL_LINES = 20


class AdbError(NatDeployError):
    """Something went wrong talking to the phone over ADB."""


class AdbConnectionError(AdbError):
    """The phone cannot be reached or the ADB handshake failed."""


class AdbAuthError(AdbConnectionError):
    """The phone did not accept this computer's ADB key."""


class AdbDisconnectedError(AdbConnectionError):
    """The link to the phone dropped during a call."""


class AdbTimeoutError(AdbError):
    """The phone did not answer, or a command ran past its time limit."""


class AdbCommandError(AdbError):
    """A shell command exited with a non-zero status."""

    def __init__(self, message: str, *, command: str, returncode: int, output: str) -> None:
        super().__init__(message)
        self.command, self.returncode, self.output = command, returncode, output


class AdbTransferError(AdbError):
    """A push or pull failed."""


class AdbStorageFullError(AdbTransferError):
    """The phone's storage is full."""


class AdbBinaryError(AdbError):
    """The benchmark_model binary cannot run on the phone."""


class AdbBenchmarkError(AdbError):
    """benchmark_model exited with an error."""

    def __init__(self, message: str, *, returncode: int, output: str) -> None:
        super().__init__(message)
        self.returncode, self.output = returncode, output


class AdbBenchmarkCrashError(AdbBenchmarkError):
    """benchmark_model was killed by a signal (a native crash, or the OOM killer)."""


class AdbThermalError(AdbError):
    """The phone stayed hot (or throttled) past the cool-down bound."""


@dataclass(frozen=True)
class RemoteStat:
    """A device file's ``stat`` as the sync protocol reports it."""

    mode: int
    size: int
    mtime: int

    @property
    def is_dir(self) -> bool:
        return _stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class CpuFreq:
    """One core's clocks in kHz; None where sysfs is unreadable (or the core is offline)."""

    cur_khz: int | None
    max_khz: int | None  # scaling_max_freq: what thermal throttling lowers
    hw_max_khz: int | None  # cpuinfo_max_freq


def quote_command(args: Sequence[str | os.PathLike[str] | int | float]) -> str:
    """A shell command line with every argument quoted."""
    return " ".join(shlex.quote(os.fspath(a) if isinstance(a, os.PathLike) else str(a)) for a in args)


def default_adbkey_path() -> Path:
    """adb's own key location: ``$ANDROID_USER_HOME/adbkey`` or ``~/.android/adbkey``."""
    home = os.environ.get("ANDROID_USER_HOME")
    return Path(home) / "adbkey" if home else Path.home() / ".android" / "adbkey"


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-_TAIL_LINES:]) if lines else "(no output)"


class _EofTcpTransport(TcpTransport):
    """adb-shell's TCP transport, except that a closed socket raises at once.

    The stock transport returns b"" on EOF and adb-shell then polls until its read timeout, so a dropped link
    would look like a slow phone. Nagle is off because adb-shell writes a header and its payload separately,
    which otherwise stalls every message on the peer's delayed ACK (~40 ms).
    """

    def connect(self, transport_timeout_s: float | None) -> None:
        super().connect(transport_timeout_s)
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
        data = super().bulk_read(numbytes, transport_timeout_s)
        if not data:
            raise ConnectionResetError("the device closed the ADB connection")
        return data


def _parse_tcp_serial(serial: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[(.+)\]:(\d+)", serial) or re.fullmatch(r"([^:\[\]]+):(\d+)", serial)
    return (m.group(1), int(m.group(2))) if m else None


class AdbTransport:
    """One phone over ADB: shell, push/pull/stat, properties, clocks and temperatures.

    ``serial`` is ``host:port`` for TCP, a USB serial, or None for the only USB device. The key pair is adb's
    (``~/.android/adbkey``), created on first use, so a phone that trusts ``adb`` trusts this too.
    The link connects lazily and reconnects on the next call after a drop.
    """

    def __init__(self, serial: str | None, *, adbkey_path: str | Path | None = None,
                 transport_timeout_s: float = 10.0, read_timeout_s: float = 30.0, auth_timeout_s: float = 30.0,
                 command_timeout_s: float = 60.0) -> None:
        self.serial = serial
        self.adbkey_path = Path(adbkey_path) if adbkey_path is not None else None
        self.transport_timeout_s = transport_timeout_s
        self.read_timeout_s = read_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self.command_timeout_s = command_timeout_s
        self._device: AdbDevice | None = None
        self._has_sha256sum: bool | None = None

    @property
    def name(self) -> str:
        return self.serial or "the USB device"

    # -- connection ----------------------------------------------------------------------------------------------
    def _signer(self) -> Any:
        from adb_shell.auth.keygen import keygen, write_public_keyfile
        from adb_shell.auth.sign_cryptography import CryptographySigner

        path = self.adbkey_path or default_adbkey_path()
        try:
            if not path.exists():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                log.info("creating an ADB key pair at %s (the phone will ask once to allow it)", path)
                keygen(str(path))
                path.chmod(0o600)  # keygen writes with the umask; a private key must not be world-readable
            elif not Path(f"{path}.pub").exists():
                write_public_keyfile(str(path), f"{path}.pub")
            return CryptographySigner(str(path))
        except (OSError, ValueError) as exc:
            raise AdbAuthError(f"cannot load or create the ADB key {path} ({exc}); fix its permissions, delete it "
                               "to have a new pair made (the phone then asks again), or pass adbkey_path") from exc

    def _new_device(self) -> AdbDevice:
        if self.serial is not None and (tcp := _parse_tcp_serial(self.serial)) is not None:
            return AdbDevice(_EofTcpTransport(*tcp), default_transport_timeout_s=self.transport_timeout_s)
        import importlib.util

        if importlib.util.find_spec("usb1") is None:
            raise AdbConnectionError(
                f"serial {self.serial!r} means USB, and USB needs the 'usb' extra: pip install 'natdeploy[usb]' "
                "(adb-shell[usb], with libusb). Or use ADB over TCP: `adb tcpip 5555`, then serial 'PHONE_IP:5555'")
        from adb_shell.adb_device import AdbDeviceUsb

        try:
            return AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.transport_timeout_s)
        except Exception as exc:  # adb-shell/libusb raise several unrelated types here
            raise AdbConnectionError(f"no USB device {self.name} ({exc}). Check the cable and that USB debugging is "
                                     "on; stop a running adb server (`adb kill-server`), it holds the USB "
                                     "interface") from exc

    def connect(self) -> None:
        """Open the link (no-op when already open). Raises AdbAuthError when the phone does not trust our key."""
        if self._device is not None and self._device.available:
            return
        self.close()
        device = self._new_device()  # first: a USB setup error should not create a key pair
        signer = self._signer()
        prompted = False

        def on_prompt(_device: AdbDevice) -> None:
            nonlocal prompted
            prompted = True
            log.warning("%s asks to allow this computer: accept the USB debugging prompt on the phone", self.name)

        key = self.adbkey_path or default_adbkey_path()
        try:
            device.connect(rsa_keys=[signer], transport_timeout_s=self.transport_timeout_s,
                           auth_timeout_s=self.auth_timeout_s, read_timeout_s=self.read_timeout_s,
                           auth_callback=on_prompt)
        except adb_exc.DeviceAuthError as exc:
            device.close()
            raise AdbAuthError(f"{self.name} refused this computer's ADB key {key}: accept the USB debugging prompt "
                               "on the phone, then retry") from exc
        except (OSError, adb_exc.TcpTimeoutException, adb_exc.AdbTimeoutError, adb_exc.InvalidResponseError,
                adb_exc.InvalidCommandError, adb_exc.InvalidChecksumError, adb_exc.UsbReadFailedError,
                adb_exc.UsbWriteFailedError) as exc:
            device.close()
            if prompted:
                raise AdbAuthError(
                    f"{self.name} did not accept this computer's ADB key {key} within {self.auth_timeout_s:g} s: "
                    "accept the USB debugging prompt on the phone (tick 'Always allow from this computer'), then "
                    "retry") from exc
            raise AdbConnectionError(f"cannot connect to {self.name}: {exc or type(exc).__name__}. Check that the "
                                     "phone is on, reachable, and has USB debugging enabled (for TCP: `adb tcpip "
                                     "5555` once over USB)") from exc
        self._device = device

    def connect_with_retry(self, wait_s: float, poll_s: float = 1.0) -> None:
        """Connect, retrying while the phone is unreachable (e.g. rebooting) for at most ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.connect()
            except AdbAuthError:
                raise
            except AdbConnectionError:
                if time.monotonic() + poll_s > deadline:
                    raise
                time.sleep(poll_s)

    def close(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            finally:
                self._device = None

    def __enter__(self) -> "AdbTransport":
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[AdbDevice], T]) -> T:
        """Run one adb-shell call, turning its exceptions into AdbError (and dropping a broken link)."""
        self.connect()
        assert self._device is not None
        try:
            return fn(self._device)
        except (adb_exc.TcpTimeoutException, adb_exc.AdbTimeoutError, socket.timeout) as exc:
            self.close()  # the stream's state is unknown now: start clean next time
            raise AdbTimeoutError(f"{what}: {self.name} did not answer in time ({exc}). Is it still connected and "
                                  "awake?") from exc
        except (OSError, adb_exc.UsbReadFailedError, adb_exc.UsbWriteFailedError,
                adb_exc.AdbConnectionError) as exc:
            self.close()
            raise AdbDisconnectedError(f"{what}: the connection to {self.name} dropped ({exc or type(exc).__name__})."
                                       " Check the cable or Wi-Fi and that the phone did not reboot, then rerun"
                                       ) from exc
        except (adb_exc.InvalidResponseError, adb_exc.InvalidCommandError, adb_exc.InvalidChecksumError) as exc:
            self.close()
            raise AdbError(f"{what}: ADB protocol error from {self.name} ({exc}); reconnect and retry") from exc
        except (adb_exc.PushFailedError, adb_exc.AdbCommandFailureException) as exc:
            self.close()  # adbd ends the sync service after a failure
            reason = exc.args[0] if exc.args else type(exc).__name__
            reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            reason = reason.removeprefix("Command failed: ")
            if "No space left" in reason:
                raise AdbStorageFullError(f"{what} failed: the phone's storage is full ({reason}). Free space on it "
                                          "(e.g. old files in /data/local/tmp) and retry") from exc
            raise AdbTransferError(f"{what} failed: {reason}") from exc

    # -- shell ---------------------------------------------------------------------------------------------------
    def shell_status(self, cmd: Sequence[str | os.PathLike[str] | int | float] | str,
                     timeout_s: float | None = None) -> tuple[str, int]:
        """Run a command; its output (stdout and stderr merged) and exit status.

        A list is quoted argument by argument. A string is a shell snippet passed as is: quote any value you
        splice into it with ``shlex.quote``.
        """
        script = cmd if isinstance(cmd, str) else quote_command(cmd)
        limit = self.command_timeout_s if timeout_s is None else timeout_s
        # The subshell keeps an `exit` in the snippet from skipping the marker.
        wrapped = f"({script}\n); printf '\\n{RC_MARKER}%s\\n' \"$?\""
        raw = self._call(f"running {script[:200]!r}", lambda d: d.shell(
            wrapped, transport_timeout_s=limit, read_timeout_s=limit, timeout_s=limit, decode=False))
        text = raw.decode("utf-8", "replace")
        m = _RC_TAIL.search(text)
        if m is None:
            self.close()
            raise AdbDisconnectedError(f"running {script[:200]!r}: the output ended before the command's exit "
                                       f"status (the shell was killed or the link dropped). Output:\n{_tail(text)}")
        out = text[:m.start()]
        if "\r\n" in m.group(0):
            out = out.replace("\r\n", "\n")  # very old adbd runs commands in a pty
        return out, int(m.group(1))

    def shell(self, cmd: Sequence[str | os.PathLike[str] | int | float] | str, timeout_s: float | None = None) -> str:
        """Run a command and return its output; :class:`AdbCommandError` on a non-zero exit status."""
        out, rc = self.shell_status(cmd, timeout_s)
        if rc != 0:
            script = cmd if isinstance(cmd, str) else quote_command(cmd)
            raise AdbCommandError(f"command on {self.name} exited with status {rc}: {script[:200]}\n{_tail(out)}",
                                  command=script, returncode=rc, output=out)
        return out

    # -- files ---------------------------------------------------------------------------------------------------
    def push(self, local: str | Path, remote: str, mode: int = 0o644, timeout_s: float | None = None) -> None:
        """Copy a local file to ``remote`` (a file path) with permission bits ``mode``."""
        local = Path(local)
        if not local.is_file():
            raise AdbTransferError(f"cannot push {local}: not a file")
        limit = self.command_timeout_s if timeout_s is None else timeout_s
        try:
            self._call(f"pushing {local} to {remote}", lambda d: d.push(
                str(local), remote, st_mode=_stat.S_IFREG | (mode & 0o7777), mtime=int(local.stat().st_mtime),
                transport_timeout_s=self.transport_timeout_s, read_timeout_s=limit))
        except AdbTimeoutError as exc:
            raise AdbTimeoutError(f"{exc} (a full phone storage can also stall a push: check `df /data`)") from exc

    def pull(self, remote: str, local: str | Path, timeout_s: float | None = None) -> None:
        """Copy ``remote`` to a local file, atomically (a partial download never appears at ``local``)."""
        local = Path(local)
        limit = self.command_timeout_s if timeout_s is None else timeout_s
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".part")
        os.close(fd)
        try:
            self._call(f"pulling {remote}", lambda d: d.pull(
                remote, tmp, transport_timeout_s=self.transport_timeout_s, read_timeout_s=limit))
            os.replace(tmp, local)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def stat(self, remote: str) -> RemoteStat | None:
        """The remote file's mode, size and mtime; None when it does not exist."""
        mode, size, mtime = self._call(f"stat {remote}", lambda d: d.stat(
            remote, transport_timeout_s=self.transport_timeout_s, read_timeout_s=self.read_timeout_s))
        return RemoteStat(mode, size, mtime) if mode else None  # adbd answers a missing path with zeros

    def sha256(self, remote: str) -> str | None:
        """sha256 of a device file computed on the phone; None when missing (or the phone lacks sha256sum)."""
        if self._has_sha256sum is False:
            return None
        out, rc = self.shell_status(["sha256sum", remote])
        if rc == 127:
            self._has_sha256sum = False
            log.warning("%s has no sha256sum (Android < 8?): files are pushed every time", self.name)
            return None
        self._has_sha256sum = True
        m = re.match(r"\\?([0-9a-f]{64})\s", out)  # a leading backslash marks an escaped file name
        return m.group(1) if rc == 0 and m else None

    # -- device state --------------------------------------------------------------------------------------------
    def getprop(self, name: str) -> str:
        """One system property ('' when unset)."""
        return self.shell(["getprop", name]).strip()

    def getprops(self) -> dict[str, str]:
        """All system properties."""
        return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", self.shell(["getprop"]), flags=re.M))

    def read_cpu_freqs(self) -> dict[int, CpuFreq]:
        """Per-core clocks from cpufreq sysfs, in one shell call."""
        script = ('for c in /sys/devices/system/cpu/cpu[0-9]*; do f="$c/cpufreq"; printf "%s %s %s %s\\n" '
                  '"${c##*/cpu}" "$(cat "$f/scaling_cur_freq" 2>/dev/null)" '
                  '"$(cat "$f/scaling_max_freq" 2>/dev/null)" "$(cat "$f/cpuinfo_max_freq" 2>/dev/null)"; done')
        freqs: dict[int, CpuFreq] = {}
        for line in self.shell(script).splitlines():
            parts = line.split(" ")
            if len(parts) == 4 and parts[0].isdigit():
                val = [int(p) if p.strip().isdigit() else None for p in parts[1:]]
                freqs[int(parts[0])] = CpuFreq(*val)
        return dict(sorted(freqs.items()))

    def read_temperatures_c(self) -> dict[str, float]:
        """Thermal zones as ``{"thermal_zoneN:type": °C}``; unreadable zones are left out."""
        script = ('for z in /sys/class/thermal/thermal_zone*; do printf "%s:%s %s\\n" "${z##*/}" '
                  '"$(cat "$z/type" 2>/dev/null)" "$(cat "$z/temp" 2>/dev/null)"; done')
        temps: dict[str, float] = {}
        for line in self.shell(script).splitlines():
            name, _, value = line.rpartition(" ")
            try:
                raw = float(value)
            except ValueError:
                continue
            # sysfs reports millidegrees on most phones; some drivers report degrees or decidegrees.
            celsius = raw / 1000 if abs(raw) >= 1000 else raw / 10 if abs(raw) >= 200 else raw
            if -40.0 <= celsius <= 150.0:  # drop sentinel values of absent sensors
                temps[name] = celsius
        return temps

    def read_temperature_c(self, zone_pattern: str = r"cpu|soc|tsens|big|little|apc|mtktscpu|ap[-_]") -> float | None:
        """The hottest CPU-like thermal zone in °C (all zones when none matches); None when none is readable."""
        temps = self.read_temperatures_c()
        cpu = [v for k, v in temps.items() if re.search(zone_pattern, k.partition(":")[2], re.I)]
        values = cpu or list(temps.values())
        return max(values) if values else None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version_in(text: str) -> str | None:
    """A version the binary printed about itself, if any (stock benchmark_model builds print none)."""
    # Only TFLite's own version: delegates print versions of other things (OpenCL, drivers).
    m = re.search(r"(?i)\b(?:tensorflow lite|tflite|litert)\b[^\n]*?\bversion\b[ :=]*v?(\d+\.\d+[\w.+-]*)", text)
    return m.group(1) if m else None


def _mask_cpus(mask: str) -> list[int]:
    value = int(mask, 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


@dataclass(frozen=True)
class AdbBenchmarkRun:
    """One benchmark_model run: parsed statistics, the exact command, its output and the provenance."""

    result: BenchmarkResult
    model: str
    remote_model: str
    command: str
    output: str
    provenance: dict[str, Any] = field(default_factory=dict)


class AdbBenchmarkRunner:
    """Time .tflite files on a phone with TFLite's ``benchmark_model`` (a binary you provide; never downloaded).

    ``cpu_mask`` is a hex affinity mask for ``taskset`` (e.g. ``"70"`` for cpu4-6). Before each run the runner
    waits, at most ``cooldown_max_s``, while the hottest CPU zone is above ``max_temp_c`` or a pinned core's
    scaling_max_freq fell below ``freq_drop_ratio`` of what it was at :meth:`prepare`; then it raises
    :class:`AdbThermalError`. Files it pushed are removed by :meth:`cleanup` unless ``keep_remote``.
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
            cpu_mask = cpu_mask.lower().removeprefix("0x")
            if not re.fullmatch(r"[0-9a-f]+", cpu_mask) or int(cpu_mask, 16) == 0:
                raise ValueError(f"cpu_mask must be a non-zero hex mask such as '70' or 'f0', got {cpu_mask!r}")
        self.threads, self.cpu_mask, self.warmup_runs, self.num_runs = threads, cpu_mask, warmup_runs, num_runs
        self.use_gpu, self.use_xnnpack, self.extra_args = use_gpu, use_xnnpack, tuple(extra_args)
        self.remote_dir, self.timeout_s, self.keep_remote = remote_dir.rstrip("/") or "/", timeout_s, keep_remote
        self.max_temp_c, self.freq_drop_ratio = max_temp_c, freq_drop_ratio
        self.cooldown_max_s, self.cooldown_poll_s = cooldown_max_s, cooldown_poll_s
        self.remote_binary = posixpath.join(self.remote_dir, "benchmark_model")
        self._pushed: list[str] = []
        self._info: dict[str, Any] | None = None
        self._baseline: dict[int, CpuFreq] = {}
        self._has_timeout = False

    @classmethod
    def from_spec(cls, spec: Any, transport: AdbTransport | None = None, **overrides: Any) -> "AdbBenchmarkRunner":
        """A runner for a :class:`natdeploy.devices.DeviceSpec` with ``transport: adb``."""
        if not spec.benchmark_binary:
            raise AdbBinaryError(f"device {spec.name!r} sets no benchmark_binary: build TFLite's benchmark_model "
                                 "for the phone and set `benchmark_binary: /path/to/benchmark_model` in its yaml")
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
        self._baseline = t.read_cpu_freqs()
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

    def _push_reusing(self, local: Path, remote: str, mode: int = 0o644) -> str:
        """Push unless the phone already has identical bytes at ``remote`` (sha256 on the device); local sha256."""
        digest = _sha256_file(local)
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
        model = Path(model)
        digest = _sha256_file(model)
        remote = posixpath.join(self.remote_dir, f"{digest[:12]}-{model.name}")
        self._push_reusing(model, remote)
        return remote

    # -- thermal -------------------------------------------------------------------------------------------------
    def _hot_reasons(self) -> tuple[list[str], float | None, dict[int, CpuFreq]]:
        temp = self.transport.read_temperature_c()
        freqs = self.transport.read_cpu_freqs()
        reasons = []
        if temp is not None and temp > self.max_temp_c:
            reasons.append(f"CPU at {temp:.1f} °C > {self.max_temp_c:g} °C")
        cpus = _mask_cpus(self.cpu_mask) if self.cpu_mask else list(freqs)
        for cpu in cpus:
            before, now = self._baseline.get(cpu), freqs.get(cpu)
            if before and now and before.max_khz and now.max_khz and \
                    now.max_khz < before.max_khz * self.freq_drop_ratio:
                reasons.append(f"cpu{cpu} capped at {now.max_khz / 1e6:.2f} GHz (was {before.max_khz / 1e6:.2f})")
        return reasons, temp, freqs

    def wait_until_cool(self) -> tuple[float | None, dict[int, CpuFreq]]:
        """Wait while the phone is hot or throttled; the final temperature and clocks."""
        deadline = time.monotonic() + self.cooldown_max_s
        while True:
            reasons, temp, freqs = self._hot_reasons()
            if not reasons:
                return temp, freqs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AdbThermalError(f"{self.transport.name} is still hot after {self.cooldown_max_s:g} s "
                                      f"({'; '.join(reasons)}). Let it cool (screen off, off the charger, out of the "
                                      "sun), or raise cooldown_max_s / max_temp_c")
            log.info("waiting for the phone to cool: %s", "; ".join(reasons))
            time.sleep(min(self.cooldown_poll_s, remaining))

    # -- running -------------------------------------------------------------------------------------------------
    def command(self, remote_model: str) -> list[str]:
        """The benchmark_model command line (unquoted arguments)."""
        cmd = ["timeout", str(math.ceil(self.timeout_s))] if self._has_timeout else []
        if self.cpu_mask:
            cmd += ["taskset", self.cpu_mask]
        cmd += [self.remote_binary, f"--graph={remote_model}", f"--num_threads={self.threads}",
                f"--warmup_runs={self.warmup_runs}", f"--num_runs={self.num_runs}"]
        if self.use_gpu:
            cmd.append("--use_gpu=true")
        if self.use_xnnpack is not None:
            cmd.append(f"--use_xnnpack={str(self.use_xnnpack).lower()}")
        return cmd + list(self.extra_args)

    def run(self, model: str | Path) -> AdbBenchmarkRun:
        """Push (or reuse) the model, wait until cool, run benchmark_model, and parse its output."""
        info = self.prepare()
        remote = self.push_model(model)
        temp_before, freqs_before = self.wait_until_cool()
        cmd = self.command(remote)
        # On-device `timeout` stops a hung binary; the client limit leaves it time to report.
        out, rc = self.transport.shell_status(cmd, timeout_s=self.timeout_s + 30)
        if rc != 0:
            self._raise_for_status(rc, out)
        result = parse_benchmark_output(out)
        if info["binary_version"] is None:
            info["binary_version"] = _version_in(out)
        temp_after = self.transport.read_temperature_c()
        freqs_after = self.transport.read_cpu_freqs()
        provenance = dict(info, model_file=str(model), remote_model=remote,
                          temperature_before_c=temp_before, temperature_after_c=temp_after,
                          cpu_freqs_before_khz={c: f.cur_khz for c, f in freqs_before.items()},
                          cpu_freqs_after_khz={c: f.cur_khz for c, f in freqs_after.items()},
                          cpu_max_freqs_khz={c: f.max_khz for c, f in freqs_after.items()},
                          date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        return AdbBenchmarkRun(result=result, model=str(model), remote_model=remote, command=quote_command(cmd),
                               output=out, provenance=provenance)

    def _raise_for_status(self, rc: int, out: str) -> None:
        if rc == 124 and self._has_timeout:
            raise AdbTimeoutError(f"benchmark_model ran past {self.timeout_s:g} s on {self.transport.name} and was "
                                  f"stopped; raise timeout_s or lower num_runs.\n{_tail(out)}")
        if rc > 128:
            try:
                name = signal.Signals(rc - 128).name
            except ValueError:
                name = "unknown signal"
            raise AdbBenchmarkCrashError(
                f"benchmark_model crashed on {self.transport.name} (signal {rc - 128}, {name}; SIGKILL often means "
                f"the phone ran out of memory). Check `adb logcat` for the native crash.\n{_tail(out)}",
                returncode=rc, output=out)
        if rc in (126, 127):
            raise AdbBinaryError(f"benchmark_model could not start on {self.transport.name} (exit {rc}).\n{_tail(out)}")
        raise AdbBenchmarkError(f"benchmark_model failed on {self.transport.name} with exit status {rc}.\n"
                                f"{_tail(out)}", returncode=rc, output=out)

    def cleanup(self) -> None:
        """Remove what this runner pushed (unless ``keep_remote``); files that were already there stay."""
        if self.keep_remote or not self._pushed:
            return
        self.transport.shell(["rm", "-f", *self._pushed])
        self._pushed.clear()
        self.transport.shell_status(["rmdir", self.remote_dir])  # only succeeds when empty; fine either way
