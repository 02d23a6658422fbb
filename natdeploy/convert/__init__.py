"""torch -> ONNX and torch -> Keras -> TFLite converters, shared by the latency backends and the exporter.

TensorFlow is imported only when a TFLite function runs.
"""

from natdeploy.convert.onnx_export import export_onnx, onnx_bytes
from natdeploy.convert.ops import GlobalAvgPool, build_op_module, op_input_shape, randomize_weights_
from natdeploy.convert.tflite import build_keras_model, random_calibration, tflite_bytes, tflite_bytes_at, to_tflite

__all__ = ["export_onnx", "onnx_bytes", "build_op_module", "op_input_shape", "randomize_weights_", "GlobalAvgPool",
           "build_keras_model", "to_tflite", "tflite_bytes", "tflite_bytes_at", "random_calibration"]
