"""Shared helpers for benchmark scripts: machine description and RESULTS.md updates."""

from __future__ import annotations

import datetime as _dt
import platform
import re
from pathlib import Path

from natdeploy.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine_line(threads: int) -> str:
    import os

    from natdeploy.latency.backends import host_cpu

    return (f"{host_cpu()}, {os.cpu_count()} cores visible, {threads} thread(s), Python {platform.python_version()}, "
            f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def record(section: str, body: str) -> None:
    """Replace (or append) the ``## section`` of benchmarks/RESULTS.md with ``body``."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nThe latest run of each benchmark.\n"
    block = f"## {section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    atomic_write_text(RESULTS, text.rstrip() + "\n")
