"""A loopback stand-in for a phone's adbd, speaking the real ADB wire protocol over TCP (tests only).

Clients connect to ``127.0.0.1:<port>`` exactly as to a phone in ``adb tcpip`` mode: adb-shell, or Debian's
``adb`` after ``adb connect``. Implemented: the 24-byte message header (little-endian command, arg0, arg1,
length, byte-sum checksum, magic), CNXN version negotiation, RSA AUTH (TOKEN / SIGNATURE / RSAPUBLICKEY),
OPEN/OKAY/WRTE/CLSE streams with one unacknowledged WRTE per stream, the ``shell:``/``exec:`` services (raw,
stdout and stderr merged, no exit status, as adbd without shell protocol v2), ``sync:`` v1 (STAT, LIST, SEND,
RECV, QUIT) and ``reboot:``. Not implemented: shell v2, sync v2, TLS, delayed acks, interactive shells, stdin.

The phone's filesystem is a sandbox folder: sync paths map under it, and shell commands run with /bin/sh in it
after rewriting device paths (``/data/...``, ``/sys/...``, ...) to sandbox paths. The sandbox holds a fake
``getprop`` and ``taskset``, thermal zones and cpufreq files; ``fake_phone.write_fake_benchmark_model`` writes a
stand-in benchmark_model that a test pushes like the real binary. It really runs a real .tflite with LiteRT
(``litert_zygote=True`` preloads LiteRT in a fork server, so each run starts in milliseconds like a native
binary). Fault hooks: :meth:`AdbDaemon.disconnect_after`, :meth:`AdbDaemon.disconnect_on`, ``storage_full``,
:meth:`AdbDaemon.reboot`, ``crash_benchmark``; ``speed_factor`` makes a slower phone.
Every loop is bounded: by the daemon's lifetime, a command timeout, or an idle timeout. The services live in
tests/adb_services.py, the fake phone's tools in tests/fake_phone.py.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import secrets
import select
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from adb_services import run_reboot, run_shell, run_sync, serve
from fake_phone import FAKE_TASKSET, ZYGOTE, write_fake_benchmark_model, write_script


def _tag(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


CNXN, AUTH, OPEN, OKAY, CLSE, WRTE = (_tag(t) for t in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))
VERSION_MIN = 0x01000000
VERSION_SKIP_CHECKSUM = 0x01000001  # from this version on, peers may send 0 instead of the data checksum
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20
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
        self.speed_factor = 1.0  # >1: a slower phone; its benchmark_model reports times this many times longer
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
        self._zygote = subprocess.Popen([sys.executable, str(ZYGOTE), str(sock), str(source), str(os.getpid())],
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
        if threading.current_thread() is not self._thread:
            self._went_down.wait(timeout=5)  # closed first: a client that reconnects at once is refused
        for conn in self._connections():
            conn.drop()

    def power_on(self) -> None:
        """End a reboot's down time now: the port opens again (for a test that decides when a phone is back)."""
        with self._lock:
            self._down_until = 0.0

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
        if self.speed_factor != 1.0:
            env["FAKE_BENCHMARK_SLOWDOWN"] = str(self.speed_factor)
        if self._zygote_dir is not None:
            env["FAKE_BENCHMARK_ZYGOTE"] = f"{self._zygote_dir}/sock"
        return env

    def _build_sandbox(self) -> None:
        for sub in ("data/local/tmp", "sdcard", "system/bin", "sys/class/thermal"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        cases = "".join(f"  {shlex.quote(k)}) printf '%s\\n' {shlex.quote(v)} ;;\n" for k, v in self.props.items())
        listing = "".join(f"  printf '%s\\n' {shlex.quote(f'[{k}]: [{v}]')}\n" for k, v in sorted(self.props.items()))
        write_script(self.root / "system/bin/getprop",
                      f"#!/bin/sh\n# fake getprop: this fake phone's properties\nif [ $# -eq 0 ]; then\n{listing}"
                      f"  exit 0\nfi\ncase \"$1\" in\n{cases}  *) printf '%s\\n' \"${{2:-}}\" ;;\nesac\n")
        write_script(self.root / "system/bin/taskset", FAKE_TASKSET)
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
                self._dispatch(*self._read_packet())
        except (_Drop, OSError):
            pass
        finally:
            self.dead.set()
            self.sock.close()

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
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
        handlers = {"shell": run_shell, "exec": run_shell, "sync": run_sync, "reboot": run_reboot}
        if kind not in handlers or remote_id == 0:
            self.send(CLSE, 0, remote_id)  # open failed
            return
        with self.streams_lock:
            local_id, self.next_id = self.next_id, self.next_id + 1
            stream = _Stream(self, local_id, remote_id)
            self.streams[local_id] = stream
        self.send(OKAY, local_id, remote_id)
        worker = threading.Thread(target=serve, args=(handlers[kind], stream, arg), name=f"fake-adbd-{kind}",
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
