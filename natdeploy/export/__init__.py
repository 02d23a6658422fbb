"""The verified deployment bundle: pick the Arch, export TFLite/ONNX through natdeploy.convert, check parity,
int8 accuracy and latency, and publish a folder plus zip with metadata, labels and a README.

The names load on first use, so that the CLI can read :class:`ExportOptions` defaults without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {"export_bundle": "bundle", "ExportResult": "bundle", "build_subnet": "bundle",
          "ExportError": "errors", "ExportOptions": "options", "FORMATS": "options", "parse_formats": "options",
          "read_run": "source", "select_entry": "source"}

__all__ = ["export_bundle", "ExportOptions", "ExportResult", "ExportError", "FORMATS", "parse_formats",
           "build_subnet", "read_run", "select_entry"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'natdeploy.export' has no attribute {name!r}")
    return getattr(import_module(f"natdeploy.export.{home}"), name)
