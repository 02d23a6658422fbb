"""The fake phone's tools for tests/adb_daemon.py: the stand-in benchmark_model, placeholder .tflite files and a
toybox-like taskset. The stand-in's source is tests/fake_benchmark_model.py, its fork server tests/fake_zygote.py."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZYGOTE = HERE / "fake_zygote.py"
PLACEHOLDER_TAG = b"NATDEPLOY-PLACEHOLDER-TFLITE"  # the fake benchmark_model makes up numbers for these files


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def write_fake_benchmark_model(path: Path) -> Path:
    """Write the stand-in benchmark_model (an executable Python script) that tests push like the real binary."""
    # -S keeps start-up fast; LiteRT is found through the site folders listed in the script instead.
    sites = [p for p in sys.path if p and os.path.isdir(p) and os.path.basename(p) in ("site-packages",
                                                                                        "dist-packages")]
    source = (HERE / "fake_benchmark_model.py").read_text()
    source = source.replace("SITE_PATHS = []", f"SITE_PATHS = {sites!r}", 1)
    return write_script(Path(path), f"#!{sys.executable} -SE\n" + source)


def write_fake_tflite(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """A placeholder the fake benchmark_model accepts without LiteRT: the TFL3 identifier, a tag, then filler."""
    body = PLACEHOLDER_TAG + bytes((seed * 31 + i * 7) & 0xFF for i in range(max(size - 8, 0)))
    Path(path).write_bytes(struct.pack("<I", 28) + b"TFL3" + body[:max(size - 8, len(PLACEHOLDER_TAG))])
    return Path(path)


FAKE_TASKSET = """#!/bin/sh
# fake toybox taskset for an 8-core phone: check the hex MASK, then run the command (no real pinning here)
mask=${1#0x}
case "$mask" in ''|*[!0-9a-fA-F]*) echo "taskset: bad mask '$1'" >&2; exit 1 ;; esac
shift
[ $# -gt 0 ] || { echo "usage: taskset [-ap] [mask] [PID | cmd [args...]]" >&2; exit 1; }
[ $(( 0x$mask & 0xff )) -ne 0 ] || { echo "taskset: sched_setaffinity: Invalid argument" >&2; exit 1; }
exec "$@"
"""
