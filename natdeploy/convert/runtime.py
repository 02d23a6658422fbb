"""The runtimes natdeploy runs converted models in: onnxruntime sessions and LiteRT (TFLite) interpreters.

One owner for both, so that the latency backends time exactly the sessions and interpreters that the exporter's
checks run. Where callers differ (the LiteRT backend can leave out the default XNNPACK delegate, as its device spec
says), the difference is a parameter here, not a second way of building the runtime.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def onnx_session(model_bytes: bytes, threads: int = 1, provider: str = CPU_PROVIDER) -> Any:
    """An onnxruntime session as natdeploy runs them everywhere: ``threads`` intra-op threads, sequential
    execution, all graph optimisations, one execution provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=[provider])


def onnx_providers() -> list[str]:
    """The execution providers this onnxruntime install offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def onnxruntime_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def tflite_interpreter(model_bytes: bytes, threads: int = 1, default_delegates: bool = True) -> Any:
    """A LiteRT interpreter with tensors allocated. ``default_delegates``: LiteRT's default delegates (XNNPACK),
    as the interpreter applies them unless told otherwise; False runs the builtin kernels only."""
    from ai_edge_litert import interpreter as lite

    resolver = (lite.OpResolverType.AUTO if default_delegates
                else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp = lite.Interpreter(model_content=model_bytes, num_threads=threads, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp


def litert_version() -> str:
    return version("ai-edge-litert")
