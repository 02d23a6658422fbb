"""ADB transport: adb-shell, no adb server needed (the benchmark_model runner is in ``adb_runner``).

:class:`AdbTransport` talks to one phone over TCP (serial ``host:port``, after ``adb tcpip 5555``) or USB
(with the ``usb`` extra). Every call has an explicit timeout, every interpolated shell value goes through
``shlex.quote``, and a shell command's exit status comes back through an in-band marker (adbd's legacy shell
service does not report it). Failures raise the :class:`AdbError` family.

The transport is not thread-safe: use one per thread.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import re
import shlex
import socket
import stat as _stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from adb_shell import exceptions as adb_exc
from adb_shell.adb_device import AdbDevice
from adb_shell.transport.tcp_transport import TcpTransport

from natdeploy.errors import NatDeployError

__all__ = [
    "AdbError", "AdbConnectionError", "AdbAuthError", "AdbDisconnectedError", "AdbTimeoutError", "AdbCommandError",
    "AdbTransferError", "AdbStorageFullError", "AdbBinaryError", "AdbBenchmarkError", "AdbBenchmarkCrashError",
    "AdbThermalError", "AdbTransport", "CpuFreq", "RemoteStat", "THERMAL_SNAPSHOT", "default_adbkey_path",
    "hottest_c", "parse_thermal_snapshot", "quote_command",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

RC_MARKER = "__NATDEPLOY_RC="
_RC_TAIL = re.compile(r"\r?\n" + RC_MARKER + r"(\d+)\r?\n?\Z")
_TAIL_LINES = 20
CPU_ZONES = r"cpu|soc|tsens|big|little|apc|mtktscpu|ap[-_]"  # thermal zone types that describe the CPU
# Thermal zones and per-core clocks in one pass with shell builtins only: a phone has dozens of zones, and a
# `cat` per file would fork a hundred processes between two measurements. Lines: "T zone:type temp" and
# "F cpu cur max hw_max" (empty where unreadable).
THERMAL_SNAPSHOT = (
    'for z in /sys/class/thermal/thermal_zone*; do y=; t=; read -r y < "$z/type"; read -r t < "$z/temp"; '
    'printf "T %s:%s %s\\n" "${z##*/}" "$y" "$t"; done 2>/dev/null; '
    'for c in /sys/devices/system/cpu/cpu[0-9]*; do f="$c/cpufreq"; a=; b=; m=; read -r a < "$f/scaling_cur_freq"; '
    'read -r b < "$f/scaling_max_freq"; read -r m < "$f/cpuinfo_max_freq"; '
    'printf "F %s %s %s %s\\n" "${c##*/cpu}" "$a" "$b" "$m"; done 2>/dev/null')


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


def parse_thermal_snapshot(lines: Sequence[str]) -> tuple[dict[str, float], dict[int, "CpuFreq"]]:
    """Temperatures (``{"thermal_zoneN:type": °C}``) and clocks from :data:`THERMAL_SNAPSHOT` output lines."""
    temps: dict[str, float] = {}
    freqs: dict[int, CpuFreq] = {}
    for line in lines:
        kind, _, rest = line.rstrip("\r").partition(" ")
        if kind == "T":
            name, _, value = rest.rpartition(" ")
            try:
                raw = float(value)
            except ValueError:
                continue
            # sysfs reports millidegrees on most phones; some drivers report degrees or decidegrees.
            celsius = raw / 1000 if abs(raw) >= 1000 else raw / 10 if abs(raw) >= 200 else raw
            if -40.0 <= celsius <= 150.0:  # drop sentinel values of absent sensors
                temps[name] = celsius
        elif kind == "F":
            parts = rest.split(" ")
            if len(parts) == 4 and parts[0].isdigit():
                val = [int(p) if p.strip().isdigit() else None for p in parts[1:]]
                freqs[int(parts[0])] = CpuFreq(*val)
    return temps, dict(sorted(freqs.items()))


def hottest_c(temps: dict[str, float], zone_pattern: str = CPU_ZONES) -> float | None:
    """The hottest CPU-like zone in °C (all zones when none matches); None when there are none."""
    cpu = [v for k, v in temps.items() if re.search(zone_pattern, k.partition(":")[2], re.I)]
    values = cpu or list(temps.values())
    return max(values) if values else None


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

    @property
    def is_tcp(self) -> bool:
        """True for a ``host:port`` serial: such a phone accepts several connections at once (USB does not)."""
        return self.serial is not None and _parse_tcp_serial(self.serial) is not None

    def sibling(self) -> "AdbTransport":
        """A second, independent link to the same phone with the same key and timeouts (TCP only)."""
        if not self.is_tcp:
            raise AdbConnectionError(f"{self.name} is a USB device: it takes one connection at a time")
        return AdbTransport(self.serial, adbkey_path=self.adbkey_path, transport_timeout_s=self.transport_timeout_s,
                            read_timeout_s=self.read_timeout_s, auth_timeout_s=self.auth_timeout_s,
                            command_timeout_s=self.command_timeout_s)

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
        with self._translated(what):
            return fn(self._device)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """adb-shell's exceptions inside the block become AdbError; a link in an unknown state is closed."""
        try:
            yield
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

    def shell_lines(self, cmd: Sequence[str | os.PathLike[str] | int | float] | str, timeout_s: float | None = None,
                    idle_timeout_s: float | None = None) -> Iterator[str]:
        """Run a command and yield its output line by line as it arrives (stdout and stderr merged).

        For long commands whose partial output is worth having: a caller can act on each finished part before
        the command ends, so a dropped link loses only the part in flight. ``timeout_s`` bounds the whole
        command, ``idle_timeout_s`` (default: the same) the wait for its next output. The exit status must be
        0 (else :class:`AdbCommandError` at the end); a stream that ends without it raises
        :class:`AdbDisconnectedError`. Stopping the iteration early closes the link, since the unread rest of
        the stream would otherwise confuse the next call.
        """
        script = cmd if isinstance(cmd, str) else quote_command(cmd)
        limit = self.command_timeout_s if timeout_s is None else timeout_s
        idle = min(limit, limit if idle_timeout_s is None else idle_timeout_s)
        what = f"running {script[:200]!r}"
        wrapped = f"({script}\n); printf '\\n{RC_MARKER}%s\\n' \"$?\""
        self.connect()
        assert self._device is not None
        deadline = time.monotonic() + limit
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""  # an unfinished line
        marker = re.compile(RC_MARKER + r"\d+")
        held: list[str] = []  # empty and marker-like lines: the end may be the marker and its separator
        tail: list[str] = []
        try:
            with self._translated(what):
                chunks = self._device.streaming_shell(wrapped, transport_timeout_s=idle, read_timeout_s=idle,
                                                      decode=False)
                for chunk in chunks:
                    pending += decoder.decode(chunk)
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        line = line.removesuffix("\r")
                        if not line or marker.fullmatch(line):
                            held.append(line)
                            continue
                        tail = (tail + held + [line])[-_TAIL_LINES:]
                        yield from held  # output after them: they were not the end
                        held.clear()
                        yield line
                    if time.monotonic() > deadline:
                        self.close()
                        raise AdbTimeoutError(f"{what}: still running after {limit:g} s on {self.name}; stopped "
                                              "waiting for it")
        except GeneratorExit:
            self.close()
            raise
        rest = pending + decoder.decode(b"", final=True)
        if rest:
            held.append(rest)  # a cut-off last line: the marker cannot follow it
        m = re.fullmatch(RC_MARKER + r"(\d+)", held[-1]) if held else None  # the last line is the marker
        if m is None:
            self.close()
            raise AdbDisconnectedError(f"{what}: the output ended before the command's exit status (the shell was "
                                       f"killed or the link dropped). Output:\n{_tail(chr(10).join(tail + held))}")
        body = held[:-1]
        if body and body[-1] == "":
            body.pop()  # the line the marker's leading newline ended
        yield from body
        if int(m.group(1)) != 0:
            output = "\n".join(tail + body)
            raise AdbCommandError(f"command on {self.name} exited with status {m.group(1)}: {script[:200]}\n"
                                  f"{_tail(output)}", command=script, returncode=int(m.group(1)), output=output)

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

    def sha256_many(self, remotes: Sequence[str]) -> dict[str, str | None]:
        """sha256 of several device files in one call (None for missing ones, or all when sha256sum is absent)."""
        found: dict[str, str | None] = dict.fromkeys(remotes)
        if not found or self._has_sha256sum is False:
            return found
        # One line per file, in order: its sha256sum line, or "- <status>" when that failed.
        script = (f"for f in {' '.join(shlex.quote(r) for r in found)}; do "
                  'sha256sum "$f" 2>/dev/null || echo "- $?"; done')
        lines = self.shell(script).splitlines()
        if len(lines) != len(found):
            raise AdbError(f"sha256sum on {self.name} printed {len(lines)} lines for {len(found)} files; cannot tell "
                           "which files the phone has:\n" + _tail("\n".join(lines)))
        if all(line == "- 127" for line in lines):
            self._has_sha256sum = False
            log.warning("%s has no sha256sum (Android < 8?): files are pushed every time", self.name)
            return found
        self._has_sha256sum = True
        for remote, line in zip(found, lines, strict=True):
            m = re.match(r"\\?([0-9a-f]{64})\s", line)  # a leading backslash marks an escaped file name
            found[remote] = m.group(1) if m else None
        return found

    def sha256(self, remote: str) -> str | None:
        """sha256 of a device file computed on the phone; None when missing (or the phone lacks sha256sum)."""
        return self.sha256_many([remote])[remote]

    # -- device state --------------------------------------------------------------------------------------------
    def getprop(self, name: str) -> str:
        """One system property ('' when unset)."""
        return self.shell(["getprop", name]).strip()

    def getprops(self) -> dict[str, str]:
        """All system properties."""
        return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", self.shell(["getprop"]), flags=re.M))

    def read_thermal_state(self) -> tuple[dict[str, float], dict[int, CpuFreq]]:
        """Thermal zones (``{"thermal_zoneN:type": °C}``) and per-core clocks, in one shell call."""
        return parse_thermal_snapshot(self.shell(THERMAL_SNAPSHOT).splitlines())

    def read_cpu_freqs(self) -> dict[int, CpuFreq]:
        """Per-core clocks from cpufreq sysfs."""
        return self.read_thermal_state()[1]

    def read_temperatures_c(self) -> dict[str, float]:
        """Thermal zones as ``{"thermal_zoneN:type": °C}``; unreadable zones are left out."""
        return self.read_thermal_state()[0]

    def read_temperature_c(self, zone_pattern: str = CPU_ZONES) -> float | None:
        """The hottest CPU-like thermal zone in °C (all zones when none matches); None when none is readable."""
        return hottest_c(self.read_temperatures_c(), zone_pattern)
