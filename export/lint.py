"""`kidrr export lint`: will TensorRT's ONNX parser take this bundle? Runs without TensorRT."""
from __future__ import annotations

import os

import onnx
from onnx import helper, inliner, shape_inference

from . import trt_support as ts
from .qdq_rules import check_qdq
from .manifest import check_bundle

PROFILE_AXES = ("n", "m", "R", "L")
IMAGE_AXES = ("H", "W")   # preprocess.onnx: one image of any size (it runs on ONNX Runtime CPU)


def _dtype_name(elem: int) -> str:
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}.get(
        elem, helper.tensor_dtype_to_np_dtype(elem).name if elem else "undefined")


def lint_model(model: onnx.ModelProto, name: str, ort_only: bool = False) -> list:
    """Problems (strings) that would stop TensorRT's parser or its optimisation profiles.

    ort_only (preprocess.onnx, which always runs on ONNX Runtime's CPU provider): uint8 tensors and
    the image axes H, W are allowed; every other rule still applies."""
    problems = []
    profile_axes = PROFILE_AXES + IMAGE_AXES if ort_only else PROFILE_AXES
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if not ts.TRT_MIN_OPSET <= opset <= ts.TRT_MAX_OPSET:
        problems.append(f"{name}: opset {opset} is outside TensorRT's {ts.TRT_MIN_OPSET}..{ts.TRT_MAX_OPSET}")
    flat = inliner.inline_local_functions(model)
    constants = {i.name for i in flat.graph.initializer}
    constants |= {o for n in flat.graph.node if n.op_type == "Constant" for o in n.output}
    for node in flat.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{name}: node {node.op_type} in domain {node.domain!r} has no body to inline")
        elif node.op_type not in ts.SUPPORTED_OPS:
            why = ts.WHY_UNSUPPORTED.get(node.op_type, "not in TensorRT's ONNX operator support list")
            problems.append(f"{name}: op {node.op_type} is unsupported ({why})")
        idx = ts.CONSTANT_INPUTS.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx] and node.input[idx] not in constants:
            problems.append(f"{name}: {node.op_type} input {node.input[idx]!r} must be a build-time constant")
    inferred = shape_inference.infer_shapes(flat)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    io_names = {v.name for v in list(flat.graph.input) + list(flat.graph.output)}
    for v in values:
        dt = _dtype_name(v.type.tensor_type.elem_type)
        if dt not in ts.SUPPORTED_DTYPES and not (dt == "uint8" and (ort_only or v.name in io_names)):
            problems.append(f"{name}: tensors of dtype {dt}, which TensorRT does not support inside a network")
    for t in flat.graph.initializer:
        dt = _dtype_name(t.data_type)
        if dt not in ts.SUPPORTED_DTYPES:
            problems.append(f"{name}: initializer {t.name!r} has dtype {dt}, which TensorRT does not support")
    for v in model.graph.input:
        for k, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_param"):
                if d.dim_param not in profile_axes:
                    problems.append(f"{name}: input {v.name} axis {k} is dynamic ({d.dim_param!r}) but not one of "
                                    f"the profile axes {profile_axes}")
            elif d.dim_value < 1:
                problems.append(f"{name}: input {v.name} axis {k} has no size and no name: no profile can cover it")
    problems += check_qdq(flat, name)
    counts: dict = {}
    for p in problems:
        counts[p] = counts.get(p, 0) + 1
    return [p if c == 1 else f"{p} (x{c})" for p, c in counts.items()]


def lint_bundle(bundle: str) -> dict:
    """{graph: [problems]} after checking the bundle's hashes (BundleError if edited)."""
    manifest = check_bundle(bundle)
    return {g: lint_model(onnx.load(os.path.join(bundle, e["file"])), g,
                          ort_only=(g == "preprocess"))
            for g, e in manifest["graphs"].items()}
