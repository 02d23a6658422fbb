"""Where each device's latency table lives, and the predictor that serves it.

A device's table is ``<tables dir>/<device>.json`` (the folder is :func:`natdeploy.devices.tables_dir`:
``$NATDEPLOY_TABLES`` or the shipped ``latency_tables/``), with its fitted models beside it
(:func:`natdeploy.latency.predictor.models_path`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from natdeploy.devices import load_device, tables_dir
from natdeploy.errors import NatDeployError
from natdeploy.latency.backends import host_cpu
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.table import TableError

log = logging.getLogger(__name__)


def table_path(device: str) -> Path:
    """The path of ``device``'s latency table (whether or not it exists yet)."""
    return tables_dir() / f"{device}.json"


def has_table(device: str) -> bool:
    return table_path(device).exists()


def predictor_for(device: str, table: str | os.PathLike | None = None) -> LatencyPredictor:
    """The latency predictor of a device's table (``table``: another table file); warns when a local table was
    measured on another CPU. A table of another precision than the device spec's (an fp32 table for an int8
    device) is refused."""
    path = Path(table) if table else table_path(device)
    if not path.exists() and not table:
        raise TableError(f"no latency table for {device!r} at {path}; build it with "
                         f"`natdeploy profile --device {device}`")
    predictor = LatencyPredictor.load(path)
    measured_on = predictor.table.provenance.get("host")
    try:
        spec = load_device(device)
    except (NatDeployError, ValueError):  # an imported table may name no device spec
        spec = None
    if spec is not None:
        mismatch = predictor.table.precision_mismatch(spec.precision)
        if mismatch:
            raise TableError(f"latency table {path} cannot predict for {device!r}: {mismatch}, and {device} runs "
                             f"{spec.precision} models; profile it with `natdeploy profile --device {device}`")
    local = spec is not None and spec.transport == "local"
    if local and measured_on and measured_on != host_cpu():
        log.warning("latency table %s was measured on %r, but this host is %r: predictions describe that machine. "
                    "Run `natdeploy profile --device %s --out <new table>` to measure this one", path, measured_on,
                    host_cpu(), device)
    return predictor
