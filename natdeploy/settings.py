"""The one place that reads natdeploy's environment variables; each is read when asked, never at import.

``NATDEPLOY_DEBUG=1``        the CLI shows tracebacks for known errors too
``NATDEPLOY_NO_PROGRESS=1``  no progress bars (an alias of ``--quiet`` for bars)
``NATDEPLOY_TABLES``         the latency-table folder (default: the project's ``latency_tables/``)
``NATDEPLOY_DEVICES``        the device-spec folder (default: the project's ``devices/``)
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _flag(name: str) -> bool:
    return os.environ.get(name) == "1"


def debug() -> bool:
    """Whether ``NATDEPLOY_DEBUG=1`` asks for tracebacks of known errors."""
    return _flag("NATDEPLOY_DEBUG")


def progress_disable(quiet: bool = False) -> bool | None:
    """The value for tqdm's ``disable``: True with ``quiet`` or ``NATDEPLOY_NO_PROGRESS=1``, else None, which
    makes tqdm itself turn the bar off when its stream (stderr) is not a terminal."""
    return True if quiet or _flag("NATDEPLOY_NO_PROGRESS") else None


def devices_dir() -> Path:
    """Where device specs live: ``$NATDEPLOY_DEVICES`` or the project's ``devices/`` folder."""
    env = os.environ.get("NATDEPLOY_DEVICES")
    return Path(env) if env else PROJECT_ROOT / "devices"


def tables_dir() -> Path:
    """Where latency tables live: ``$NATDEPLOY_TABLES`` or the project's ``latency_tables/`` folder."""
    env = os.environ.get("NATDEPLOY_TABLES")
    return Path(env) if env else PROJECT_ROOT / "latency_tables"
