"""Where each device's latency table lives, and the predictor that serves it.

A device's table is ``<folder>/<device>.json`` in the first of the table folders that has it
(:func:`natdeploy.settings.tables_dirs`: ``$NATDEPLOY_TABLES``, else the user's data folder, then the built-in
tables), with its fitted models beside it (:func:`natdeploy.latency.predictor.models_path`). New tables go to
:func:`new_table_path`. A command's ``--tables DIR`` and ``--table DEVICE=PATH`` apply through
:func:`table_locations`, for the duration of that command only.
"""

from __future__ import annotations

import contextvars
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from natdeploy import settings
from natdeploy.devices import known_devices, load_device
from natdeploy.errors import NatDeployError
from natdeploy.latency.backends import host_cpu
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.table import TableError

log = logging.getLogger(__name__)

# (folder read first and written, {device: table file}) of the running command; see table_locations
_LOCATIONS: contextvars.ContextVar[tuple[Path | None, dict[str, Path]]] = contextvars.ContextVar(
    "natdeploy_table_locations", default=(None, {}))


@contextmanager
def table_locations(folder: str | os.PathLike | None = None,
                    files: Mapping[str, str | os.PathLike] | None = None) -> Iterator[None]:
    """Within the block, read tables from ``folder`` first (and write new ones there), and take ``files``
    (``{device: path}``) as those devices' tables."""
    token = _LOCATIONS.set((Path(folder) if folder else None, {d: Path(p) for d, p in (files or {}).items()}))
    try:
        yield
    finally:
        _LOCATIONS.reset(token)


def tables_dirs() -> list[Path]:
    """The table folders in search order (``--tables`` first, then :func:`natdeploy.settings.tables_dirs`)."""
    folder = _LOCATIONS.get()[0]
    return ([folder] if folder else []) + [d for d in settings.tables_dirs() if d != folder]


def new_table_path(device: str) -> Path:
    """Where a new table of ``device`` goes: ``--tables DIR``, ``$NATDEPLOY_TABLES``, else the user's folder."""
    return tables_dirs()[0] / f"{device}.json"


def table_path(device: str) -> Path:
    """The path of ``device``'s table: a ``--table`` given for it, else the first folder that has one, else
    where a new one would go (whether or not it exists yet)."""
    files = _LOCATIONS.get()[1]
    if device in files:
        return files[device]
    for folder in tables_dirs():
        path = folder / f"{device}.json"
        if path.is_file():
            return path
    return new_table_path(device)


def has_table(device: str) -> bool:
    return table_path(device).is_file()


def known_tables() -> list[str]:
    """The devices with a table in any table folder."""
    names = {p.stem for folder in tables_dirs() if folder.is_dir() for p in folder.glob("*.json")
             if not p.name.endswith(".xgb.json")}
    return sorted(names)


def missing_table_message(device: str) -> str:
    """Why there is no table for ``device``, and what to do: profile a known device, or pick a known name."""
    looked = ", ".join(str(d) for d in tables_dirs())
    if device in known_devices():
        return (f"no latency table for {device!r} (looked in {looked}); build it with "
                f"`natdeploy profile --device {device}`, or give one with --table")
    tables = ", ".join(known_tables()) or "none"
    return (f"unknown device {device!r}; devices with a latency table: {tables} (device specs: "
            f"{', '.join(known_devices())}); or give a table file with --table")


def predictor_for(device: str, table: str | os.PathLike | None = None) -> LatencyPredictor:
    """The latency predictor of a device's table (``table``: another table file, which must be of that device);
    warns when a local table was measured on another CPU. A table of another precision than the device spec's (an
    fp32 table for an int8 device) is refused."""
    path = Path(table) if table else table_path(device)
    if not path.is_file():
        if table or device in _LOCATIONS.get()[1]:
            raise TableError(f"latency table {path} does not exist; give the path of an existing table file "
                             f"(tables found: {', '.join(known_tables()) or 'none'})")
        raise TableError(missing_table_message(device))
    predictor = LatencyPredictor.load(path)
    measured_on = predictor.table.provenance.get("host")
    try:
        spec = load_device(device)
    except (NatDeployError, ValueError):  # an imported table may name no device spec
        spec = None
    if spec is not None:  # the precision first: of the two refusals, it says more about what is wrong
        mismatch = predictor.table.precision_mismatch(spec.precision)
        if mismatch:
            raise TableError(f"latency table {path} cannot predict for {device!r}: {mismatch}, and {device} runs "
                             f"{spec.precision} models; profile it with `natdeploy profile --device {device}`")
    explicit = bool(table) or device in _LOCATIONS.get()[1]
    if explicit and predictor.table.device != device:  # a file given for the device must be of that device
        raise TableError(f"latency table {path} is of device {predictor.table.device!r}, not {device!r}; pass "
                         f"--device {predictor.table.device}, or the table of {device!r}")
    local = spec is not None and spec.transport == "local"
    if local and measured_on and measured_on != host_cpu():
        log.warning("latency table %s was measured on %r, but this host is %r: predictions describe that machine. "
                    "Run `natdeploy profile --device %s --out <new table>` to measure this one", path, measured_on,
                    host_cpu(), device)
    return predictor
