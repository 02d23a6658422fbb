"""Measured against predicted latency of the exported files, per target device of the run.

Each device is measured with the same backend its latency table used, on the exported file that backend runs (its
``artifact_format``: onnxruntime on model.onnx, LiteRT on model.tflite), with the table's statistic, and brought to
the table's machine speed by the predictor's own speed model (natdeploy.latency.speed), so the measured number is
comparable to the predicted one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from natdeploy.devices import DeviceSpec, load_device
from natdeploy.errors import NatDeployError
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.space import Arch

log = logging.getLogger(__name__)

NOISE_FRACTION = 0.05  # the least tolerance over a budget, as a fraction of it
FILE_OF_FORMAT = {"onnx": "model.onnx", "tflite": "model.tflite"}


@dataclass
class DeviceLatency:
    """Prediction, measurement and budget for one device; ``not_measured`` says why a number is absent."""

    device: str
    budget_ms: float | None = None
    predicted_ms: float | None = None
    not_predicted: str | None = None
    measured_ms: float | None = None
    # measured_ms brought to the table's machine speed by the anchor timed beside the file (local CPU specs
    # with ``anchor: true``; see natdeploy.latency.speed)
    measured_at_table_speed_ms: float | None = None
    not_measured: str | None = None
    statistic: str = "p10"
    measurement: dict[str, Any] | None = None
    runtime: str | None = None
    file: str | None = None
    relative_noise: float | None = None  # the table's run-to-run spread: median std/median of its subnets
    tolerance_ms: float | None = None
    over_budget: bool | None = None
    notes: list[str] = field(default_factory=list)
    table: dict[str, Any] | None = None  # the predicting table's summary and provenance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.measured_ms is not None and self.predicted_ms:
            d["measured_over_predicted"] = round(self.measured_ms / self.predicted_ms, 4)
        if d["not_measured"] is not None:
            d["measured_ms"] = f"not measured: {self.not_measured}"
        return d


def _predict(device: str, arch: Arch, n_classes: int, predictors: Mapping[str, LatencyPredictor] | None,
             out: DeviceLatency) -> LatencyPredictor | None:
    from natdeploy.latency.store import predictor_for

    try:
        predictor = predictors[device] if predictors and device in predictors else predictor_for(device)
        out.predicted_ms = float(predictor.predict(arch, n_classes)[0])
    except (NatDeployError, ValueError, KeyError) as exc:
        out.not_predicted = f"no prediction: {exc}"
        return None
    table = predictor.table
    out.statistic = table.statistic
    spread = [m.std_ms / m.median_ms for m in table.e2e.values() if m.median_ms > 0]
    if spread:
        out.relative_noise = float(np.median(spread))
    out.table = {"device": table.device, "statistic": table.statistic, "n_ops": len(table.ops),
                 "n_e2e": len(table.e2e), "drift": round(table.drift, 4), "provenance": dict(table.provenance)}
    return predictor


def _artifact(spec: DeviceSpec, files: Mapping[str, bytes]) -> tuple[str | None, str | None]:
    """(format of the file this device's backend runs, or None; reason when it cannot be measured here)."""
    if spec.transport != "local":
        how = ("a phone over adb with TFLite's benchmark_model" if spec.transport == "adb" else "a CUDA GPU")
        return None, f"transport {spec.transport!r} needs {how}; measure the bundle's file there"
    from natdeploy.latency.backends import backend_class

    fmt = backend_class(spec).artifact_format
    if fmt is None:
        return None, f"runtime {spec.runtime!r} runs no exported file (the bundle holds ONNX and TFLite only)"
    if fmt not in files:
        return None, f"{FILE_OF_FORMAT[fmt]} was not exported (add {fmt} to the formats)"
    if spec.batch_size != 1:
        return None, f"the device spec times batch {spec.batch_size}, the exported model takes batch 1"
    return fmt, None


def _precision_mismatch(device: str, spec: DeviceSpec, files: Mapping[str, bytes], precision: Mapping[str, str],
                        predictor: LatencyPredictor | None) -> str | None:
    """What to say when the file this device runs (its backend's format) has another precision than the models
    its table measured (an int8 file against an fp32 table), or None when they agree."""
    from natdeploy.devices import known_devices
    from natdeploy.latency.backends import backend_class

    fmt = backend_class(spec).artifact_format
    if fmt is None or fmt not in files:
        return None
    shipped = precision.get(fmt, "fp32")
    measured = predictor.table.precision if predictor is not None else spec.precision
    if shipped == measured:
        return None
    sibling = f"{device}-{shipped}"
    hint = (f"; search with --device {sibling} for {shipped} latency" if sibling in known_devices()
            else f"; search with a {shipped} device spec for {shipped} latency")
    return (f"{FILE_OF_FORMAT[fmt]} is {shipped}, but the latency table of {device} measured {measured} models: its "
            f"prediction and budget describe a {measured} model, not the shipped file{hint}")


def _measure(spec: DeviceSpec, fmt: str, model: bytes, arch: Arch, out: DeviceLatency,
             predictor: LatencyPredictor | None) -> None:
    from natdeploy.latency.backends import get_backend

    try:
        with get_backend(spec) as backend:
            # the file's bytes are the backend's artifact: it opens its own session or interpreter on them
            m = backend.measure_batch([(model, (1, 3, arch.r, arch.r))], spec.e2e_warmup, spec.e2e_runs)[0]
            out.runtime = backend.runtime_version()
    except NatDeployError as exc:
        out.not_measured = f"the {spec.runtime} backend cannot run here: {exc}"
        return
    out.file = FILE_OF_FORMAT[fmt]
    out.measurement = m.to_dict()
    out.measured_ms = m.value(out.statistic)
    if predictor is not None and predictor.speed.anchored(m):
        out.measured_at_table_speed_ms = predictor.speed.normalise(m)
    if out.relative_noise is None and m.median_ms > 0:  # no table: this measurement's own spread
        out.relative_noise = m.std_ms / m.median_ms


def check_latency(arch: Arch, n_classes: int, devices: Sequence[str], files: Mapping[str, bytes],
                  budgets: Mapping[str, float], predictors: Mapping[str, LatencyPredictor] | None = None,
                  specs: Mapping[str, DeviceSpec] | None = None,
                  precision: Mapping[str, str] | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per device: predicted (its table), measured (the exported file, same backend), budget; and the warnings.

    ``files`` maps a format (onnx, tflite) to the bytes shipped; ``precision`` maps a format to fp32/int8. A file
    whose precision differs from the models its device's table measured is named in a warning (and the device's
    notes): an int8 file checked against an fp32 table.
    """
    report: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for device in devices:
        out = DeviceLatency(device, budget_ms=budgets.get(device))
        predictor = _predict(device, arch, n_classes, predictors, out)
        try:
            spec = specs[device] if specs and device in specs else load_device(device)
        except NatDeployError as exc:
            out.not_measured = f"no device spec: {exc}"
            spec = None
        if spec is not None:
            fmt, why = _artifact(spec, files)
            if fmt is None:
                out.not_measured = why
            else:
                _measure(spec, fmt, files[fmt], arch, out, predictor)
            mismatch = _precision_mismatch(device, spec, files, precision or {}, predictor)
            if mismatch:
                out.notes.append(mismatch)
                warnings.append(mismatch)
                log.warning(mismatch)
        coverage = predictor.coverage_warning([arch], n_classes) if predictor is not None else None
        if coverage:  # after the measurement's own notes
            out.notes.append(coverage)
            warnings.append(f"{device}: {coverage}")
        if out.measured_ms is not None and out.budget_ms is not None:
            out.tolerance_ms = max(NOISE_FRACTION, out.relative_noise or 0.0) * out.budget_ms
            # at the table's machine speed where the anchor allows: the budget was set against its predictions
            judged = out.measured_at_table_speed_ms or out.measured_ms
            out.over_budget = judged > out.budget_ms + out.tolerance_ms
            if out.over_budget:
                pred = f"{out.predicted_ms:.3f} ms" if out.predicted_ms is not None else "no prediction"
                speed = ("" if out.measured_at_table_speed_ms is None else
                         f" ({out.measured_at_table_speed_ms:.3f} ms at the table's machine speed)")
                msg = (f"{out.file} on {device}: measured {out.measured_ms:.3f} ms{speed} ({out.statistic}) exceeds "
                       f"the budget {out.budget_ms:g} ms by more than the noise ({out.tolerance_ms:.3f} ms); "
                       f"predicted {pred}")
                warnings.append(msg)
                log.warning(msg)
        report[device] = out.to_dict()
    return report, warnings
