"""The verified deployment bundle: pick the Arch, export TFLite/ONNX through natdeploy.convert, check parity,
int8 accuracy and latency, and publish a folder plus zip with metadata, labels and a README.

The command-line wiring lives in :mod:`natdeploy.export.cli_command`, which this package does not import.
"""

from natdeploy.export.bundle import FORMATS, ExportResult, build_subnet, export_bundle, parse_formats
from natdeploy.export.errors import ExportError
from natdeploy.export.source import read_run, select_entry

__all__ = ["export_bundle", "ExportResult", "ExportError", "FORMATS", "parse_formats", "build_subnet", "read_run",
           "select_entry"]
