"""The fake adbd's services (tests/adb_daemon.py): ``shell:``/``exec:`` (raw, stdout and stderr merged),
``sync:`` v1 (STAT, LIST, SEND, RECV, QUIT) and ``reboot:``. Each runs in its own thread on one stream."""

from __future__ import annotations

import os
import select
import signal
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adb_daemon import _Stream

SYNC_DATA_MAX = 64 * 1024


def serve(handler, stream: _Stream, arg: str) -> None:
    try:
        handler(stream, arg)
    except OSError:
        stream.conn.drop()
    finally:
        stream.close()


def run_reboot(stream: _Stream, arg: str) -> None:
    stream.conn.d.reboot()


def run_shell(stream: _Stream, command: str) -> None:
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


def run_sync(stream: _Stream, arg: str) -> None:
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
