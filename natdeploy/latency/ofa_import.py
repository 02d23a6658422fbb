"""Import Once-for-All's published per-resolution lookup tables (``<r>_lookup_table.yaml``)."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import yaml

from natdeploy import __version__
from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import OpSig
from natdeploy.latency.table import LatencyTable, TableError

_NAME = re.compile(r"(\d+)_lookup_table\.yaml")


def import_ofa_tables(folder: str | Path, device: str) -> LatencyTable:
    """Read every ``<r>_lookup_table.yaml`` in ``folder`` into one natdeploy table for ``device``.

    OFA publishes mean, std and count per op, not a median; the mean is used as the table's statistic. An op found
    in several files (the head, and the last stage's small maps, shared between resolutions) keeps each file's own
    value for its resolution (``LatencyTable.resolution_ops``), so that the table's sum at an imported resolution is
    OFA's own sum there; ``ops`` holds the value of the last file that has the op (what other resolutions use).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*_lookup_table.yaml") if _NAME.fullmatch(p.name)) if folder.is_dir() else []
    if not files:
        raise TableError(f"{folder} holds no OFA lookup tables (files named <resolution>_lookup_table.yaml)")
    table = LatencyTable(device=device, statistic="mean")
    classes = set()
    per_file: dict[int, dict[str, Measurement]] = {}
    for path in files:
        own = per_file.setdefault(int(_NAME.fullmatch(path.name).group(1)), {})
        try:
            entries = yaml.safe_load(path.read_text())
            if not isinstance(entries, dict):
                raise ValueError("top level is not a mapping")
            for key, stats in entries.items():
                op = OpSig.from_key(key)
                mean = float(stats["mean"])
                m = Measurement(median_ms=mean, mean_ms=mean, std_ms=float(stats.get("std", 0.0)),
                                count=int(stats.get("count", 0)), warmup=0)
                table.add_op(op, m)
                own[op.key] = m
                if op.kind == "Logits":
                    classes.add(op.out_c)
        except (yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
            raise TableError(f"OFA lookup table {path} is not readable ({type(exc).__name__}: {exc})") from None
    for r, own in per_file.items():
        differs = {k: m for k, m in own.items() if table.ops[k] != m}
        if differs:
            table.resolution_ops[r] = differs
    table.n_classes = classes.pop() if len(classes) == 1 else 1000
    table.provenance = {
        "device": device, "source": f"OFA published lookup tables imported from {folder}",
        "runtime": "tflite (as published by OFA)", "runtime_version": None, "threads": None, "host": None,
        "precision": "fp32", "statistic": "mean (OFA publishes no median)",
        "resolutions": sorted(per_file),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "natdeploy_version": __version__,
    }
    return table
