"""The one place that reads natdeploy's environment variables; each is read when asked, never at import.

``NATDEPLOY_DEBUG=1``        the CLI shows tracebacks for known errors too
``NATDEPLOY_NO_PROGRESS=1``  no progress bars (an alias of ``--quiet`` for bars)
``NATDEPLOY_TABLES``         the one latency-table folder, read and written (default: read the user's folder
                             ``$XDG_DATA_HOME/natdeploy/latency_tables``, else ``~/.local/share/natdeploy/latency_tables``,
                             then the built-in tables; new tables go to the user's folder)
``NATDEPLOY_DEVICES``        the device-spec folder (default: the built-in ``devices/``)

The built-in specs and tables are the checkout's top-level ``devices/`` and ``latency_tables/`` (an editable
install), or their copies in ``natdeploy/_data/`` that a wheel ships.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = Path(__file__).resolve().parent / "_data"  # filled by the wheel build (setup.py)


def _flag(name: str) -> bool:
    return os.environ.get(name) == "1"


def debug() -> bool:
    """Whether ``NATDEPLOY_DEBUG=1`` asks for tracebacks of known errors."""
    return _flag("NATDEPLOY_DEBUG")


def progress_disable(quiet: bool = False) -> bool | None:
    """The value for tqdm's ``disable``: True with ``quiet`` or ``NATDEPLOY_NO_PROGRESS=1``, else None, which
    makes tqdm itself turn the bar off when its stream (stderr) is not a terminal."""
    return True if quiet or _flag("NATDEPLOY_NO_PROGRESS") else None


def builtin_dir(name: str) -> Path:
    """A built-in data folder (``devices`` or ``latency_tables``): the checkout's own, else the installed copy."""
    source = PROJECT_ROOT / name
    return source if source.is_dir() and (PROJECT_ROOT / "pyproject.toml").is_file() else PACKAGE_DATA / name


def devices_dir() -> Path:
    """Where device specs live: ``$NATDEPLOY_DEVICES`` or the built-in ``devices/`` folder."""
    env = os.environ.get("NATDEPLOY_DEVICES")
    return Path(env) if env else builtin_dir("devices")


def user_tables_dir() -> Path:
    """The user's own latency tables: ``$XDG_DATA_HOME/natdeploy/latency_tables`` (an absolute XDG_DATA_HOME
    only, as the XDG spec says), else ``~/.local/share/natdeploy/latency_tables``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "natdeploy" / "latency_tables"


def tables_dirs() -> list[Path]:
    """The latency-table folders, in the order they are searched: ``[$NATDEPLOY_TABLES]``, else the user's
    folder, then the built-in tables."""
    env = os.environ.get("NATDEPLOY_TABLES")
    return [Path(env)] if env else [user_tables_dir(), builtin_dir("latency_tables")]


def tables_dir() -> Path:
    """Where new latency tables go: ``$NATDEPLOY_TABLES``, else the user's folder (:func:`user_tables_dir`)."""
    return tables_dirs()[0]
