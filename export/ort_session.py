"""ONNX Runtime sessions for checks and scoring (torch-free)."""
from __future__ import annotations

import onnxruntime as ort


def session(model, threads: int = 0, optimization: str = "all", optimized_path: str | None = None):
    """An InferenceSession on the CPU provider from a path, bytes or ModelProto; quiet logging."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
