"""Static check of a QDQ graph against TensorRT's explicit-quantization rules (no TensorRT needed).

What TensorRT's strongly typed networks take from Q/DQ nodes, as its developer guide states them
for int8: symmetric quantization only (zero points 0, int8), scales positive build-time constants,
activations per tensor, weights per tensor or per output channel, every QuantizeLinear consumed by
DequantizeLinear nodes (a Q/DQ pair), and a product quantized on both of its inputs or on none.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

PRODUCTS = ("MatMul", "Gemm", "Conv")


def _constants(graph: onnx.GraphProto) -> dict:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def check_qdq(model: onnx.ModelProto, name: str) -> list:
    """Problems (strings); [] for a graph without Q/DQ nodes or one that follows the rules."""
    graph = model.graph
    nodes = list(graph.node)
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        return []
    consts = _constants(graph)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    problems = []
    for n in nodes:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{name}: {n.op_type} {n.name or n.output[0]!r}"
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        zero = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None:
            problems.append(f"{where}: scale is not a build-time constant")
            continue
        if scale.dtype != np.float32 or not (np.isfinite(scale).all() and (scale > 0).all()):
            problems.append(f"{where}: scale must be finite positive float32")
        if zero is None:
            problems.append(f"{where}: no constant int8 zero point (the default is uint8, which TensorRT lacks)")
        elif zero.dtype != np.int8 or np.any(zero != 0):
            problems.append(f"{where}: zero point must be int8 0 (TensorRT quantizes symmetrically), got "
                            f"{zero.dtype} {np.unique(zero)[:3].tolist()}")
        per_channel = scale.ndim > 0 and scale.size > 1
        if n.op_type == "QuantizeLinear":
            if per_channel:
                problems.append(f"{where}: activations must be quantized per tensor (scalar scale)")
            bad = [c.op_type for c in consumers.get(n.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad or not consumers.get(n.output[0]):
                problems.append(f"{where}: must feed DequantizeLinear nodes only (a Q/DQ pair), feeds {bad or 'nothing'}")
            continue
        src = n.input[0]
        weight = consts.get(src)
        if weight is None:
            if producer.get(src) is None or producer[src].op_type != "QuantizeLinear":
                problems.append(f"{where}: input is neither a QuantizeLinear output nor an int8 weight")
        elif weight.dtype != np.int8:
            problems.append(f"{where}: weight {src!r} is {weight.dtype}, must be int8")
        if per_channel:
            if weight is None:
                problems.append(f"{where}: per-channel scales are for weights, this input is an activation")
                continue
            axis = _axis(n) % weight.ndim
            if scale.ndim != 1 or scale.size != weight.shape[axis]:
                problems.append(f"{where}: {scale.size} scales for axis {axis} of a {list(weight.shape)} weight")
            for user in consumers.get(n.output[0], []):
                if user.op_type == "MatMul" and user.input[1] == n.output[0] and axis != weight.ndim - 1:
                    problems.append(f"{where}: a MatMul weight is quantized per output channel (last axis), "
                                    f"not axis {axis}")
    for n in nodes:
        if n.op_type in PRODUCTS:
            data = [i for i in n.input[:2] if i]
            quantized = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in data]
            if any(quantized) and not all(quantized):
                problems.append(f"{name}: {n.op_type} {n.name or n.output[0]!r} has a Q/DQ pair on one input only; "
                                f"TensorRT runs a product in int8 only when both inputs are quantized")
    return problems


def quantized_products(model: onnx.ModelProto) -> int:
    """How many products take both inputs from DequantizeLinear nodes."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type in PRODUCTS and all(
        producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2]))
