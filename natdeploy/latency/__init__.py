"""Latency: op signatures, measured tables, the machine-speed model, predictors, and device profiling."""

from natdeploy.latency.measure import Measurement
from natdeploy.latency.ops import OpSig, arch_ops, space_ops
from natdeploy.latency.predictor import LatencyPredictor
from natdeploy.latency.speed import SpeedModel
from natdeploy.latency.table import LatencyTable, TableError

__all__ = ["Measurement", "OpSig", "arch_ops", "space_ops", "LatencyPredictor", "LatencyTable", "SpeedModel",
           "TableError"]
