"""``ExportOptions``: what to export and how; the one home of the exporter's defaults (the CLI reads them too).

Light on purpose (no torch): ``natdeploy --help`` builds its flags from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from natdeploy.export.errors import ExportError

if TYPE_CHECKING:
    from natdeploy.data import ImageData
    from natdeploy.space import Arch

FORMATS = ("tflite", "onnx")


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """``"tflite,onnx"`` or a list -> validated, de-duplicated formats in the given order."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = list(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in out if f not in FORMATS]
    if unknown or not out:
        raise ExportError(f"unknown export format(s) {unknown or formats!r}; choose from {', '.join(FORMATS)} "
                          "(comma-separated)")
    return out


@dataclass(frozen=True)
class ExportOptions:
    """The choices of one export; ``export_bundle`` validates them before any slow work.

    ``arch`` picks an archive Arch of a run; else ``budget`` (ms for every device of the run, or
    ``{device: ms}``; None: the run's own budgets) picks the most accurate one within it. ``supernet`` is the
    checkpoint for an Arch source. ``data`` replaces the run's data (required for int8 from an Arch source).
    ``bn_images`` defaults to the run's bn_batches x 256, as the search evaluated.
    """

    formats: str | Sequence[str] = FORMATS
    arch: "Arch | str | None" = None
    budget: float | Mapping[str, float] | None = None
    supernet: str | Path | None = None
    data: "ImageData | None" = None
    devices: Sequence[str] | None = None
    int8: bool = False
    int8_io: bool = False
    calibration_images: int = 200
    parity_images: int = 50
    bn_images: int | None = None
    dynamic_batch: bool = False
    opset: int = 17
    overwrite: bool = False
    val_limit: int | None = None
    measure_latency: bool = True

    @classmethod
    def default(cls, name: str) -> Any:
        """The default value of field ``name`` (for the CLI's help texts and argparse defaults)."""
        for f in fields(cls):
            if f.name == name:
                return f.default
        raise KeyError(name)
