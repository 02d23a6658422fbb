"""A loopback stand-in for a phone's adbd, speaking the real ADB wire protocol over TCP (tests only).

Clients connect to ``127.0.0.1:<port>`` exactly as to a phone in ``adb tcpip`` mode: adb-shell, or Debian's
``adb`` after ``adb connect``. Implemented: the 24-byte message header (little-endian command, arg0, arg1,
length, byte-sum checksum, magic), CNXN version negotiation, RSA AUTH (TOKEN / SIGNATURE / RSAPUBLICKEY),
OPEN/OKAY/WRTE/CLSE streams with one unacknowledged WRTE per stream, the ``shell:``/``exec:`` services (raw,
stdout and stderr merged, no exit status, as adbd without shell protocol v2), ``sync:`` v1 (STAT, LIST, SEND,
RECV, QUIT) and ``reboot:``. Not implemented: shell v2, sync v2, TLS, delayed acks, interactive shells, stdin.

The phone's filesystem is a sandbox folder: sync paths map under it, and shell commands run with /bin/sh in it
after rewriting device paths (``/data/...``, ``/sys/...``, ...) to sandbox paths. The sandbox holds a fake
``getprop`` and ``taskset``, thermal zones and cpufreq files; :func:`write_fake_benchmark_model` writes a
stand-in benchmark_model that a test pushes like the real binary. It really runs a real .tflite with LiteRT
(``litert_zygote=True`` preloads LiteRT in a fork server, so each run starts in milliseconds like a native
binary). Fault hooks: :meth:`AdbDaemon.disconnect_after`, :meth:`AdbDaemon.disconnect_on`, ``storage_full``,
:meth:`AdbDaemon.reboot`, ``crash_benchmark``.
Every loop is bounded: by the daemon's lifetime, a command timeout, or an idle timeout.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import secrets
import select
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType


def _tag(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


CNXN, AUTH, OPEN, OKAY, CLSE, WRTE = (_tag(t) for t in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))
VERSION_MIN = 0x01000000
VERSION_SKIP_CHECKSUM = 0x01000001  # from this version on, peers may send 0 instead of the data checksum
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20
SYNC_DATA_MAX = 64 * 1024
_HEADER = struct.Struct("<6I")
_SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")  # DER prefix of a SHA-1 DigestInfo
_ACK_TIMEOUT_S = 10.0
_SYNC_IDLE_S = 15.0
# Device paths that live in the sandbox. Anything else (/bin/sh, /usr/bin/sha256sum) is the host's.
_DEVICE_PATH = re.compile(r"(?<![\w./-])/(?=(?:data|sdcard|storage|sys|system|vendor)(?:/|\b))")

DEFAULT_PROPS = {
    "ro.product.model": "Pixel 4", "ro.product.name": "flame", "ro.product.device": "flame",
    "ro.product.manufacturer": "Google", "ro.product.brand": "google", "ro.hardware": "flame",
    "ro.board.platform": "msmnile", "ro.soc.manufacturer": "QTI", "ro.soc.model": "SM8150",
    "ro.build.version.release": "13", "ro.build.version.sdk": "33", "ro.product.cpu.abi": "arm64-v8a",
    "ro.build.fingerprint": "google/flame/flame:13/TP1A.221005.002/9012097:user/release-keys",
}
# Snapdragon 855: cpu0-3 little, cpu4-6 big, cpu7 prime (kHz)
DEFAULT_CPU_MAX_KHZ = (1785600,) * 4 + (2419200,) * 3 + (2841600,)
DEFAULT_ZONES = {"cpu-0-0-usr": 36.0, "cpu-1-0-usr": 38.0, "skin-therm": 31.0, "battery": 29.0}


def android_pubkey(text: str | bytes) -> tuple[int, int]:
    """(modulus, exponent) of an ``adbkey.pub`` line: base64 of Android's RSAPublicKey struct, then ``user@host``."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    blob = base64.b64decode(text.strip("\0 \n").split()[0])
    words = struct.unpack_from("<I", blob, 0)[0]  # struct: len, n0inv, n[len], rr[len], exponent
    modulus = int.from_bytes(blob[8:8 + 4 * words], "little")
    exponent = struct.unpack_from("<I", blob, 8 + 8 * words)[0]
    return modulus, exponent


def verify_token_signature(key: tuple[int, int], token: bytes, signature: bytes) -> bool:
    """RSA PKCS#1 v1.5 check of an AUTH SIGNATURE: the 20-byte token is signed as if it were a SHA-1 digest."""
    modulus, exponent = key
    size = (modulus.bit_length() + 7) // 8
    if len(signature) != size:
        return False
    encoded = pow(int.from_bytes(signature, "big"), exponent, modulus).to_bytes(size, "big")
    digest_info = _SHA1_DIGEST_INFO + token
    return encoded == b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info


class _Drop(Exception):
    """The connection is gone (peer closed, fault injected, or the daemon is stopping)."""


class AdbDaemon:
    """A fake phone at ``127.0.0.1:<port>`` (see the module docstring). Use it as a context manager."""

    def __init__(self, root: Path, *, require_auth: bool = True, accepted_keys: Iterable[str] = (),
                 accept_unknown_keys: bool = False, props: dict[str, str] | None = None,
                 protocol_version: int = VERSION_SKIP_CHECKSUM, max_payload: int = 1 << 20,
                 command_timeout_s: float = 30.0, lifetime_s: float = 300.0, litert_zygote: bool = False) -> None:
        self.root = Path(root).resolve()
        if not re.fullmatch(r"[\w./-]+", str(self.root)):
            raise ValueError(f"sandbox path {self.root} must be shell-safe: it is spliced into shell commands")
        self.require_auth = require_auth
        self.accepted_keys = [android_pubkey(k) for k in accepted_keys]
        self.accept_unknown_keys = accept_unknown_keys  # True: "the user tapped Allow" on the prompt
        self.props = dict(DEFAULT_PROPS if props is None else props)
        self.protocol_version = protocol_version
        self.max_payload = max_payload
        self.command_timeout_s = command_timeout_s
        self.lifetime_s = lifetime_s
        self.litert_zygote = litert_zygote  # preload LiteRT so the fake benchmark_model starts like a native one
        self._zygote: subprocess.Popen[bytes] | None = None
        self._zygote_dir: str | None = None
        self.reboot_down_s = 1.0
        # fault injection, set by tests between client calls
        self.storage_full = False
        self.crash_benchmark = False
        self.benchmark_sleep_s = 0.0
        self._disconnect_after: int | None = None
        self._disconnect_on: tuple[str, float] | None = None
        # what clients did, for assertions
        self.services: list[str] = []
        self.sent_files: list[str] = []
        self.auth_log: list[str] = []
        self.port = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[_Connection] = []
        self._listener: socket.socket | None = None
        self._down_until = 0.0
        self._reboot_request: float | None = None
        self._went_down = threading.Event()  # set by the accept loop once a reboot has closed the port
        self._thread: threading.Thread | None = None
        self._deadline = 0.0

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "AdbDaemon":
        self._build_sandbox()
        # The adb server probes 5555-5585 for emulators: stay out of that range.
        for _ in range(50):
            sock = self._listen(0)
            if not 5550 <= sock.getsockname()[1] <= 5590:
                break
            sock.close()
        self._listener, self.port = sock, sock.getsockname()[1]
        self._deadline = time.monotonic() + self.lifetime_s
        self._thread = threading.Thread(target=self._accept_loop, name="fake-adbd", daemon=True)
        self._thread.start()
        if self.litert_zygote:
            self._start_zygote()
        return self

    def _start_zygote(self) -> None:
        import tempfile

        # A short folder of its own: AF_UNIX paths are limited to ~100 bytes, pytest's tmp_path can be longer.
        self._zygote_dir = tempfile.mkdtemp(prefix="fzyg")
        source = Path(self._zygote_dir) / "fake_benchmark_model.py"
        write_fake_benchmark_model(source)
        sock = Path(self._zygote_dir) / "sock"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self._zygote = subprocess.Popen([sys.executable, "-c", _ZYGOTE, str(sock), str(source), str(os.getpid())],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while not sock.exists():
            if self._zygote.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake benchmark_model's LiteRT zygote did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for conn in self._connections():
            conn.drop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for conn in self._connections():
            conn.join(timeout=5)
            for worker in conn.workers:
                worker.join(timeout=5)  # shell workers kill their command when the link is gone
        if self._zygote is not None:
            self._zygote.terminate()
            try:
                self._zygote.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait(timeout=5)
            self._zygote = None
        if self._zygote_dir is not None:
            import shutil

            shutil.rmtree(self._zygote_dir, ignore_errors=True)
            self._zygote_dir = None

    def __enter__(self) -> "AdbDaemon":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def alive(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    # -- fault injection -------------------------------------------------------------------------------------
    def disconnect_after(self, n_commands: int) -> None:
        """Drop the connection (no reply) when the (n+1)-th service is opened from now on; fires once."""
        with self._lock:
            self._disconnect_after = n_commands

    def disconnect_on(self, substring: str, after_s: float = 0.0) -> None:
        """Drop the connection ``after_s`` seconds into the first service whose name contains ``substring``."""
        with self._lock:
            self._disconnect_on = (substring, after_s)

    def reboot(self, down_s: float | None = None) -> None:
        """Drop every connection and refuse new ones (closed port) for ``down_s`` seconds, like a rebooting phone.

        Returns once the port is closed, so a connection attempt right after it is refused (on a loaded machine
        the accept loop could otherwise still take one).
        """
        with self._lock:
            self._went_down.clear()
            self._reboot_request = self.reboot_down_s if down_s is None else down_s
        for conn in self._connections():
            conn.drop()
        if threading.current_thread() is not self._thread:
            self._went_down.wait(timeout=5)

    def set_temperature(self, celsius: float) -> None:
        """Set every CPU thermal zone (millidegrees in sysfs, as on the phone)."""
        for zone_dir in (self.root / "sys/class/thermal").iterdir():
            if (zone_dir / "type").read_text().startswith("cpu"):
                (zone_dir / "temp").write_text(f"{int(celsius * 1000)}\n")

    def set_cpu_max_freq(self, cpus: Iterable[int], khz: int) -> None:
        """Cap cores the way thermal throttling does: scaling_max_freq (and the current clock) drop."""
        for cpu in cpus:
            freq = self.root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            (freq / "scaling_max_freq").write_text(f"{khz}\n")
            (freq / "scaling_cur_freq").write_text(f"{khz}\n")

    # -- the fake phone's filesystem ---------------------------------------------------------------------------
    def host_path(self, device_path: str) -> Path:
        """The sandbox file standing for an absolute device path (ValueError outside the sandbox)."""
        if not device_path.startswith("/"):
            raise ValueError("path must be absolute")
        joined = os.path.normpath(os.path.join(self.root, device_path.lstrip("/")))
        if joined != str(self.root) and not joined.startswith(str(self.root) + os.sep):
            raise ValueError("path leaves the device filesystem")
        return Path(joined)

    def device_command(self, command: str) -> str:
        return _DEVICE_PATH.sub(lambda m: str(self.root) + "/", command)

    def shell_env(self) -> dict[str, str]:
        env = {"PATH": f"{self.root}/system/bin:/usr/local/bin:/usr/bin:/bin", "HOME": f"{self.root}/data/local/tmp",
               "TMPDIR": f"{self.root}/data/local/tmp", "LANG": "C", "FAKE_ADBD_ROOT": str(self.root)}
        if self.crash_benchmark:
            env["FAKE_BENCHMARK_CRASH"] = "1"
        if self.benchmark_sleep_s:
            env["FAKE_BENCHMARK_SLEEP_S"] = str(self.benchmark_sleep_s)
        if self._zygote_dir is not None:
            env["FAKE_BENCHMARK_ZYGOTE"] = f"{self._zygote_dir}/sock"
        return env

    def _build_sandbox(self) -> None:
        for sub in ("data/local/tmp", "sdcard", "system/bin", "sys/class/thermal"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        cases = "".join(f"  {shlex.quote(k)}) printf '%s\\n' {shlex.quote(v)} ;;\n" for k, v in self.props.items())
        listing = "".join(f"  printf '%s\\n' {shlex.quote(f'[{k}]: [{v}]')}\n" for k, v in sorted(self.props.items()))
        _write_script(self.root / "system/bin/getprop",
                      f"#!/bin/sh\n# fake getprop: this fake phone's properties\nif [ $# -eq 0 ]; then\n{listing}"
                      f"  exit 0\nfi\ncase \"$1\" in\n{cases}  *) printf '%s\\n' \"${{2:-}}\" ;;\nesac\n")
        _write_script(self.root / "system/bin/taskset", _FAKE_TASKSET)
        for i, (name, celsius) in enumerate(DEFAULT_ZONES.items()):
            zone = self.root / f"sys/class/thermal/thermal_zone{i}"
            zone.mkdir(exist_ok=True)
            (zone / "type").write_text(name + "\n")
            (zone / "temp").write_text(f"{int(celsius * 1000)}\n")
        for cpu, khz in enumerate(DEFAULT_CPU_MAX_KHZ):
            freq = self.root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            for name in ("scaling_cur_freq", "scaling_max_freq", "cpuinfo_max_freq"):
                (freq / name).write_text(f"{khz}\n")

    # -- accept loop ---------------------------------------------------------------------------------------------
    @staticmethod
    def _listen(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebinding the same port after a "reboot"
        sock.bind(("127.0.0.1", port))
        sock.listen(8)
        return sock

    def _connections(self) -> list["_Connection"]:
        with self._lock:
            return list(self._conns)

    def _accept_loop(self) -> None:
        try:
            while self.alive():
                with self._lock:
                    down_s, self._reboot_request = self._reboot_request, None
                if down_s is not None:
                    if self._listener is not None:
                        self._listener.close()  # a rebooting phone refuses connections
                    self._listener, self._down_until = None, time.monotonic() + down_s
                    self._went_down.set()
                if self._listener is None:
                    if time.monotonic() < self._down_until:
                        time.sleep(0.02)
                        continue
                    self._listener = self._listen(self.port)
                readable, _, _ = select.select([self._listener], [], [], 0.05)
                if readable:
                    sock, _ = self._listener.accept()
                    conn = _Connection(self, sock)
                    with self._lock:
                        self._conns = [c for c in self._conns if c.is_alive()] + [conn]
                    conn.start()
        finally:
            if self._listener is not None:
                self._listener.close()

    def _check_faults(self, conn: "_Connection", service: str) -> bool:
        """Apply the disconnect faults to a newly opened service; False when the connection must drop now."""
        with self._lock:
            self.services.append(service)
            if self._disconnect_after is not None:
                if self._disconnect_after <= 0:
                    self._disconnect_after = None
                    return False
                self._disconnect_after -= 1
            if self._disconnect_on is not None and self._disconnect_on[0] in service:
                delay = self._disconnect_on[1]
                self._disconnect_on = None
                timer = threading.Timer(delay, conn.drop)
                timer.daemon = True
                timer.start()
        return True


class _Connection(threading.Thread):
    """One client connection: the handshake, then a reader that routes packets to per-stream threads."""

    def __init__(self, daemon: AdbDaemon, sock: socket.socket) -> None:
        super().__init__(name="fake-adbd-conn", daemon=True)
        self.d = daemon
        self.sock = sock
        self.sock.settimeout(5.0)  # bounds sendall; reads are select-polled
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # adb disables Nagle on its sockets too
        self.send_lock = threading.Lock()
        self.dead = threading.Event()
        self.version = daemon.protocol_version
        self.max_payload = daemon.max_payload
        self.online = False
        self.token = b""
        self.streams: dict[int, _Stream] = {}
        self.streams_lock = threading.Lock()
        self.next_id = 1
        self.workers: list[threading.Thread] = []

    def drop(self) -> None:
        """Cut the link like a pulled cable or a killed adbd."""
        self.dead.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> bool:
        check = sum(data) & 0xFFFFFFFF if self.version < VERSION_SKIP_CHECKSUM else 0
        packet = _HEADER.pack(command, arg0, arg1, len(data), check, command ^ 0xFFFFFFFF) + data
        try:
            with self.send_lock:
                self.sock.sendall(packet)
            return True
        except OSError:
            self.drop()
            return False

    def _recv_exact(self, size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            if self.dead.is_set() or not self.d.alive():
                raise _Drop
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable:
                chunk = self.sock.recv(size - len(buf))
                if not chunk:
                    raise _Drop
                buf += chunk
        return bytes(buf)

    def _read_packet(self) -> tuple[int, int, int, bytes]:
        command, arg0, arg1, length, check, magic = _HEADER.unpack(self._recv_exact(_HEADER.size))
        if magic != command ^ 0xFFFFFFFF or length > max(self.max_payload, self.d.max_payload):
            raise _Drop  # adbd drops a connection that sends garbage
        data = self._recv_exact(length) if length else b""
        if check and check != sum(data) & 0xFFFFFFFF:
            raise _Drop
        return command, arg0, arg1, data

    def run(self) -> None:
        try:
            while True:
                self._handle(*self._read_packet())
        except (_Drop, OSError):
            pass
        finally:
            self.dead.set()
            self.sock.close()

    def _handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == CNXN:
            self.online = False  # a CNXN on a live link restarts the handshake, as in adbd
            self.version = min(arg0, self.d.protocol_version)
            self.max_payload = max(min(arg1, self.d.max_payload), 1024)  # a 0 would stall every write
            if self.version < VERSION_MIN:
                raise _Drop
            if self.d.require_auth:
                self._send_token()
            else:
                self._go_online()
        elif command == AUTH and not self.online:
            self._auth(arg0, data)
        elif not self.online:
            return  # an unauthorized adbd ignores everything else
        elif command == OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif command in (WRTE, OKAY, CLSE):
            with self.streams_lock:
                stream = self.streams.get(arg1)
            if stream is not None:
                stream.inbox.put((command, data))

    def _send_token(self) -> None:
        self.token = secrets.token_bytes(TOKEN_SIZE)
        self.send(AUTH, AUTH_TOKEN, 0, self.token)

    def _go_online(self) -> None:
        self.online = True
        props = ";".join(f"{k}={self.d.props.get(k, '')}" for k in
                         ("ro.product.model", "ro.product.name", "ro.product.device"))
        self.send(CNXN, self.version, self.d.max_payload, f"device::{props};".encode())

    def _auth(self, kind: int, data: bytes) -> None:
        if kind == AUTH_SIGNATURE:
            if any(verify_token_signature(key, self.token, data) for key in self.d.accepted_keys):
                self.d.auth_log.append("signature")
                self._go_online()
            else:
                self._send_token()  # ask for the next key's signature, as adbd does
        elif kind == AUTH_RSAPUBLICKEY:
            if self.d.accept_unknown_keys:
                self.d.auth_log.append("prompt-accepted")
                with self.d._lock:
                    self.d.accepted_keys.append(android_pubkey(data))
                self._go_online()
            else:
                self.d.auth_log.append("prompt-unanswered")  # the link stays unauthorized: no reply at all

    def _open(self, remote_id: int, service: str) -> None:
        if not self.d._check_faults(self, service):
            self.drop()
            return
        kind, _, arg = service.partition(":")
        handlers = {"shell": _run_shell, "exec": _run_shell, "sync": _run_sync, "reboot": _run_reboot}
        if kind not in handlers or remote_id == 0:
            self.send(CLSE, 0, remote_id)  # open failed
            return
        with self.streams_lock:
            local_id, self.next_id = self.next_id, self.next_id + 1
            stream = _Stream(self, local_id, remote_id)
            self.streams[local_id] = stream
        self.send(OKAY, local_id, remote_id)
        worker = threading.Thread(target=_serve, args=(handlers[kind], stream, arg), name=f"fake-adbd-{kind}",
                                  daemon=True)
        self.workers = [w for w in self.workers if w.is_alive()] + [worker]
        worker.start()

    def forget(self, local_id: int) -> None:
        with self.streams_lock:
            self.streams.pop(local_id, None)


class _Stream:
    """One OPENed service: an inbox fed by the connection's reader, and flow-controlled writes."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.inbox: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.rx = bytearray()
        self.remote_closed = False
        self.closed = False

    @property
    def gone(self) -> bool:
        return self.remote_closed or self.conn.dead.is_set() or not self.conn.d.alive()

    def pump(self, timeout_s: float) -> int | None:
        """Handle one inbound packet (acknowledging data); its command, or None when none came."""
        try:
            command, data = self.inbox.get(timeout=timeout_s) if timeout_s > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return None
        if command == WRTE:
            self.rx += data
            self.conn.send(OKAY, self.local_id, self.remote_id)
        elif command == CLSE:
            self.remote_closed = True
        return command

    def write(self, data: bytes) -> bool:
        """Send data as WRTE packets, each waiting for the peer's OKAY; False when the stream is gone."""
        for start in range(0, max(len(data), 1), self.conn.max_payload):
            if self.gone or not self.conn.send(WRTE, self.local_id, self.remote_id,
                                               data[start:start + self.conn.max_payload]):
                return False
            deadline = time.monotonic() + _ACK_TIMEOUT_S
            while self.pump(0.05) != OKAY:
                if self.gone:
                    return False
                if time.monotonic() > deadline:
                    self.conn.drop()
                    return False
        return True

    def read_exact(self, size: int) -> bytes | None:
        deadline = time.monotonic() + _SYNC_IDLE_S
        while len(self.rx) < size:
            if self.gone or time.monotonic() > deadline:
                return None
            self.pump(0.05)
        out = bytes(self.rx[:size])
        del self.rx[:size]
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.forget(self.local_id)
            if not self.conn.dead.is_set():
                self.conn.send(CLSE, self.local_id, self.remote_id)


def _serve(handler, stream: _Stream, arg: str) -> None:
    try:
        handler(stream, arg)
    except OSError:
        stream.conn.drop()
    finally:
        stream.close()


def _run_reboot(stream: _Stream, arg: str) -> None:
    stream.conn.d.reboot()


def _run_shell(stream: _Stream, command: str) -> None:
    daemon = stream.conn.d
    if not command.strip():
        stream.write(b"this fake adbd runs commands only, not interactive shells\n")
        return
    proc = subprocess.Popen(["/bin/sh", "-c", daemon.device_command(command)], cwd=daemon.root,
                            env=daemon.shell_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + daemon.command_timeout_s
    try:
        while time.monotonic() < deadline:
            while stream.pump(0) is not None:  # stdin is not forwarded; acknowledge and drop it
                stream.rx.clear()
            if stream.gone:
                break
            readable, _, _ = select.select([fd], [], [], 0.05)
            if readable:
                chunk = os.read(fd, min(stream.conn.max_payload, 65536))
                if not chunk or not stream.write(chunk):
                    break
    finally:
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the command's own process group only
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
        proc.stdout.close()


def _sync_msg(tag: bytes, *fields: int) -> bytes:
    return tag + struct.pack(f"<{len(fields)}I", *fields)


def _sync_fail(stream: _Stream, reason: str) -> None:
    msg = reason.encode()
    stream.write(_sync_msg(b"FAIL", len(msg)) + msg)


def _stat_fields(path: Path) -> tuple[int, int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0, 0  # adbd answers a failed lstat with zeros
    return st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF


def _run_sync(stream: _Stream, arg: str) -> None:
    daemon = stream.conn.d
    while True:
        header = stream.read_exact(8)
        if header is None:
            return
        tag, length = header[:4], struct.unpack("<I", header[4:])[0]
        if tag == b"QUIT":
            return
        if length > 1024 and tag != b"DATA":
            _sync_fail(stream, "path too long")
            return
        payload = stream.read_exact(length)
        if payload is None:
            return
        try:
            path_text = payload.decode("utf-8")
            if tag == b"SEND":
                path_text = path_text.rpartition(",")[0]  # "path,mode": the last comma splits, as in adbd
            path = daemon.host_path(path_text)
        except (UnicodeDecodeError, ValueError) as exc:
            _sync_fail(stream, f"bad path: {exc}")
            return
        if tag == b"STAT":
            if not stream.write(_sync_msg(b"STAT", *_stat_fields(path))):
                return
        elif tag == b"LIST":
            if not _sync_list(stream, path):
                return
        elif tag == b"SEND":
            if not _sync_send(stream, path, int(payload.decode().rpartition(",")[2] or "0"), path_text):
                return
        elif tag == b"RECV":
            if not _sync_recv(stream, path):
                return
        else:
            _sync_fail(stream, f"unknown sync command {tag!r}")
            return


def _sync_list(stream: _Stream, path: Path) -> bool:
    out = bytearray()
    try:
        names = [".", ".."] + sorted(os.listdir(path))
    except OSError:
        names = []
    for name in names:
        encoded = name.encode("utf-8", "surrogateescape")
        out += _sync_msg(b"DENT", *_stat_fields(path / name), len(encoded)) + encoded
    return stream.write(bytes(out) + _sync_msg(b"DONE", 0, 0, 0, 0))


def _sync_send(stream: _Stream, path: Path, mode: int, device_path: str) -> bool:
    """Receive DATA chunks until DONE. A failure is reported once DONE arrives, and the service then ends.

    adbd sends FAIL as soon as write(2) fails and then discards data until DONE; the reply is deferred here
    because adb-shell 0.4.4 reads the sync reply only after sending DONE (an earlier FAIL is lost on it).
    """
    error = ""
    handle = None
    try:
        if path.is_dir():
            error = f"{device_path} is a directory"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "wb")
    except OSError as exc:
        error = f"open failed: {exc.strerror}"
    try:
        while True:
            header = stream.read_exact(8)
            if header is None:
                return False
            tag, length = header[:4], struct.unpack("<I", header[4:])[0]
            if tag == b"DONE":
                mtime = length  # DONE carries the mtime where the length would be
                break
            if tag != b"DATA" or length > SYNC_DATA_MAX:
                _sync_fail(stream, "invalid data message" if tag != b"DATA" else "oversize data message")
                return False
            chunk = stream.read_exact(length)
            if chunk is None:
                return False
            if stream.conn.d.storage_full and not error:
                error = "write failed: No space left on device"
            if handle is not None and not error:
                handle.write(chunk)
        if not error and stream.conn.d.storage_full:
            error = "write failed: No space left on device"
    finally:
        if handle is not None:
            handle.close()
    if error:
        if handle is not None:
            path.unlink(missing_ok=True)  # no partial file left behind
        _sync_fail(stream, error)
        return False
    os.chmod(path, stat.S_IMODE(mode) or 0o644)
    os.utime(path, (mtime, mtime))
    stream.conn.d.sent_files.append(device_path)
    return stream.write(_sync_msg(b"OKAY", 0))


def _sync_recv(stream: _Stream, path: Path) -> bool:
    try:
        handle = open(path, "rb")
    except OSError as exc:
        _sync_fail(stream, f"open failed: {exc.strerror}")
        return False
    with handle:
        while chunk := handle.read(SYNC_DATA_MAX):
            if not stream.write(_sync_msg(b"DATA", len(chunk)) + chunk):
                return False
    return stream.write(_sync_msg(b"DONE", 0))


def _write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def write_fake_benchmark_model(path: Path) -> Path:
    """Write the stand-in benchmark_model (an executable Python script) that tests push like the real binary."""
    # -S keeps start-up fast; LiteRT is found through the site folders listed in the script instead.
    sites = [p for p in sys.path if p and os.path.isdir(p) and os.path.basename(p) in ("site-packages",
                                                                                        "dist-packages")]
    source = _FAKE_BENCHMARK_MODEL.replace("SITE_PATHS = []", f"SITE_PATHS = {sites!r}", 1)
    return _write_script(Path(path), f"#!{sys.executable} -SE\n" + source)


PLACEHOLDER_TAG = b"NATDEPLOY-PLACEHOLDER-TFLITE"  # the fake benchmark_model makes up numbers for these files


def write_fake_tflite(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """A placeholder the fake benchmark_model accepts without LiteRT: the TFL3 identifier, a tag, then filler."""
    body = PLACEHOLDER_TAG + bytes((seed * 31 + i * 7) & 0xFF for i in range(max(size - 8, 0)))
    Path(path).write_bytes(struct.pack("<I", 28) + b"TFL3" + body[:max(size - 8, len(PLACEHOLDER_TAG))])
    return Path(path)


_FAKE_TASKSET = """#!/bin/sh
# fake toybox taskset for an 8-core phone: check the hex MASK, then run the command (no real pinning here)
mask=${1#0x}
case "$mask" in ''|*[!0-9a-fA-F]*) echo "taskset: bad mask '$1'" >&2; exit 1 ;; esac
shift
[ $# -gt 0 ] || { echo "usage: taskset [-ap] [mask] [PID | cmd [args...]]" >&2; exit 1; }
[ $(( 0x$mask & 0xff )) -ne 0 ] || { echo "taskset: sched_setaffinity: Invalid argument" >&2; exit 1; }
exec "$@"
"""

_FAKE_BENCHMARK_MODEL = r'''"""Stand-in for TFLite's benchmark_model on the fake phone (tests/adb_daemon.py).

It takes the real tool's flags, reads the --graph file like the real binary (failing the same way when it is
missing or not a TFLite flatbuffer), and prints its statistics in the real (2.14+) output format. A real .tflite
is really run with the LiteRT interpreter, honouring --num_threads, --use_xnnpack, --warmup_runs, --num_runs,
--warmup_min_secs, --min_secs and --max_secs as the real tool does (there is no GPU: --use_gpu runs on the CPU).
A placeholder from write_fake_tflite() gets synthetic numbers derived from its bytes, so transport tests need
no LiteRT. With $FAKE_BENCHMARK_ZYGOTE set, the whole run happens in a fork of a server that has LiteRT loaded
already, so the fake starts in milliseconds, as a native binary does, instead of a Python import's half second.
"""
import hashlib
import json
import os
import random
import signal
import socket
import sys
import time

FLAGS = {"graph": "", "num_threads": "-1", "warmup_runs": "1", "num_runs": "50", "use_gpu": "false",
         "use_xnnpack": "true", "min_secs": "1", "warmup_min_secs": "0.5", "max_secs": "150", "help": "false"}
PLACEHOLDER_TAG = b"NATDEPLOY-PLACEHOLDER-TFLITE"
SITE_PATHS = []  # filled in by write_fake_benchmark_model: where LiteRT lives (the script runs with -S)


def say(text=""):
    print("INFO: " + text if text else "", flush=True)


def err(text):
    print("ERROR: " + text, flush=True)


def shown(path):
    root = os.environ.get("FAKE_ADBD_ROOT", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


def stat_line(values):
    if not values:
        return "count=0"
    if min(values) == max(values):
        return "count=%d curr=%d%s" % (len(values), values[-1], "(all same)" if len(values) > 1 else "")
    avg = sum(values) / len(values)
    std = int((sum((v - avg) ** 2 for v in values) / len(values)) ** 0.5)
    line = "count=%d first=%d curr=%d min=%d max=%d avg=%.6g std=%d" % (
        len(values), values[0], values[-1], min(values), max(values), avg, std)
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return line + " p5=%d median=%d p95=%d" % (pick(0.05), pick(0.5), pick(0.95))


def preload():
    """Import what a real run needs (the zygote does this once, before it forks)."""
    for path in SITE_PATHS:
        if path not in sys.path:
            sys.path.append(path)
    import numpy  # noqa: F401
    from ai_edge_litert import interpreter  # noqa: F401


def timed_runs(fn, runs, min_secs, max_secs):
    """Call fn at least `runs` times and for at least min_secs, but stop after max_secs: microseconds per call."""
    values, start = [], time.perf_counter()
    while (len(values) < runs or time.perf_counter() - start < min_secs) and time.perf_counter() - start < max_secs:
        t0 = time.perf_counter()
        fn()
        values.append(int((time.perf_counter() - t0) * 1e6))
    return values


def real_model(data, threads, xnnpack):
    """(invoke, init microseconds) for a LiteRT interpreter on the model, or None after printing the error."""
    preload()
    import numpy as np
    from ai_edge_litert import interpreter as lite

    t0 = time.perf_counter()
    resolver = lite.OpResolverType.AUTO if xnnpack else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = lite.Interpreter(model_content=data, num_threads=threads if threads > 0 else None,
                                  experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        err("Failed to construct interpreter: %s" % (str(exc).splitlines() or [""])[0])
        err("Benchmarking failed.")
        return None
    rng = np.random.default_rng(0)
    for inp in interp.get_input_details():
        interp.set_tensor(inp["index"], rng.standard_normal(tuple(inp["shape"])).astype(inp["dtype"]))
    return interp.invoke, int((time.perf_counter() - t0) * 1e6)


def main(argv):
    flags, unknown = dict(FLAGS), []
    for arg in argv[1:]:
        key, _, value = arg[2:].partition("=")
        if arg.startswith("--") and key in flags:
            flags[key] = value or "true"
        else:
            unknown.append(arg)
    if flags["help"] == "true":
        err("usage: %s <flags>\nFlags:\n%s" % (argv[0], "\n".join("\t--%s=%s" % kv for kv in FLAGS.items())))
        err("Benchmarking failed.")
        return 1
    threads, warmup_runs, num_runs = int(flags["num_threads"]), int(flags["warmup_runs"]), int(flags["num_runs"])
    min_secs, warmup_min_secs, max_secs = (float(flags[k]) for k in ("min_secs", "warmup_min_secs", "max_secs"))
    gpu, graph = flags["use_gpu"] == "true", flags["graph"]
    say("STARTING!")
    say("Log parameter values verbosely: [0]")
    say("Min num runs: [%d]" % num_runs)
    say("Num threads: [%d]" % threads)
    say("Graph: [%s]" % shown(graph))
    say("Signature to run: []")
    say("#threads used for CPU inference: [%d]" % threads)
    if gpu:
        say("Use gpu: [1]")
    if unknown:
        print("WARNING: Unconsumed cmdline flags: " + " ".join(unknown), flush=True)
    if not graph:
        err("Please specify the name of your TF Lite input file with --graph")
        err("Benchmarking failed.")
        return 1
    try:
        with open(graph, "rb") as f:
            data = f.read()
    except OSError:
        err("Could not open '%s'." % shown(graph))
        err("Failed to mmap model %s" % shown(graph))
        err("Benchmarking failed.")
        return 1
    if data[4:8] != b"TFL3":
        err("Model provided has model identifier '%s', should be 'TFL3'" % data[4:8].decode("latin-1"))
        err("Failed to mmap model %s" % shown(graph))
        err("Benchmarking failed.")
        return 1
    say("Loaded model %s" % shown(graph))
    say("Initialized TensorFlow Lite runtime.")
    say("Created TensorFlow Lite delegate for GPU." if gpu else "Created TensorFlow Lite XNNPACK delegate for CPU.")
    say("The input model file size (MB): %g" % (len(data) / 1e6))
    if data[8:8 + len(PLACEHOLDER_TAG)] == PLACEHOLDER_TAG:
        rng = random.Random(hashlib.sha256(data).digest())
        base = (400 + len(data) / 64) / max(1, min(threads, 4)) ** 0.8 / (3 if gpu else 1)
        init_us = 900 + len(data) // 500
        warm_fn = lambda n: [int(base * (1.5 if i == 0 else 1 + 0.08 * rng.random())) for i in range(max(n, 0))]
        timed_fn = lambda n: [int(base * (1 + 0.05 * rng.random())) for _ in range(max(n, 0))]
    else:
        model = real_model(data, threads, flags["use_xnnpack"] == "true")
        if model is None:
            return 1
        invoke, init_us = model
        warm_fn = lambda n: timed_runs(invoke, n, warmup_min_secs, max_secs)
        timed_fn = lambda n: timed_runs(invoke, n, min_secs, max_secs)
    say("Initialized session in %.3fms." % (init_us / 1000))
    say("Running benchmark for at least %d iterations and at least %s seconds but terminate if exceeding %s "
        "seconds." % (warmup_runs, flags["warmup_min_secs"], flags["max_secs"]))
    warm = warm_fn(warmup_runs)
    say(stat_line(warm))
    print(flush=True)
    time.sleep(float(os.environ.get("FAKE_BENCHMARK_SLEEP_S", "0")))
    say("Running benchmark for at least %d iterations and at least %s seconds but terminate if exceeding %s "
        "seconds." % (num_runs, flags["min_secs"], flags["max_secs"]))
    if os.environ.get("FAKE_BENCHMARK_CRASH"):
        os.kill(os.getpid(), signal.SIGSEGV)  # dies like a native crash: the shell reports status 139
    timed = timed_fn(num_runs)
    say(stat_line(timed))
    print(flush=True)
    if timed:
        say("Inference timings in us: Init: %d, First inference: %d, Warmup (avg): %.6g, Inference (avg): %.6g" % (
            init_us, (warm or timed)[0], sum(warm) / len(warm) if warm else 0, sum(timed) / len(timed)))
    say("Memory footprint delta from the start of the tool (MB): init=%.6g overall=%.6g" % (
        len(data) / 1e6 + 2.5, len(data) / 1e6 + 6.1))
    return 0


def delegated(argv):
    """The exit status of this run done by the zygote, or None when there is none to ask."""
    path = os.environ.get("FAKE_BENCHMARK_ZYGOTE")
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
    except OSError:
        return None
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [request], [1, 2])  # the run writes straight to our stdout and stderr
    reply = conn.recv(4096)  # if we are killed (timeout), the closed socket makes the zygote kill the run
    if not reply:
        err("the fake benchmark_model's zygote went away")
        return 1
    status = json.loads(reply)
    if "signal" in status:
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])  # die the same way, so the shell reports 128 + signal
    return status.get("exit", 1)


if __name__ == "__main__":
    code = delegated(sys.argv)
    sys.exit(main(sys.argv) if code is None else code)
'''

# The fake benchmark_model's fork server: imports LiteRT once, then forks a child per run. Single-threaded on
# purpose (forking a threaded process is unsafe). Each request is served by a handler fork that runs the model in
# a second fork, reports its exit status, and kills it when the requesting fake binary dies (e.g. on a timeout).
_ZYGOTE = r'''
import json, os, select, signal, socket, sys, traceback

sock_path, source, parent = sys.argv[1], sys.argv[2], int(sys.argv[3])
fake = {"__name__": "fake_benchmark_model"}
exec(compile(open(source).read(), source, "exec"), fake)
fake["preload"]()


def serve(conn):
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            code = fake["main"](request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    for fd in fds:
        os.close(fd)
    # pidfd (Linux 5.3+) wakes select when the run ends; without it, poll.
    child = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    while True:
        ready, _, _ = select.select([conn] + ([child] if child is not None else []), [], [],
                                    None if child is not None else 0.005)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reply = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)})
            conn.send(json.dumps(reply).encode())
            return
        if conn in ready and not conn.recv(16):  # the fake binary is gone: its run goes too
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return


server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.bind(sock_path + ".tmp")
server.listen(16)
os.rename(sock_path + ".tmp", sock_path)  # appears only once it accepts
while os.getppid() == parent:  # ends with the test process at the latest
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    if not select.select([server], [], [], 0.2)[0]:
        continue
    conn, _ = server.accept()
    if os.fork() == 0:
        server.close()
        try:
            serve(conn)
        finally:
            os._exit(0)
    conn.close()
'''
