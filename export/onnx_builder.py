"""A small ONNX graph writer used for both graph bodies and kidrr function bodies.

Graph mode keeps constants as initializers; function mode emits Constant nodes (a FunctionProto has
no initializers), so the same op helpers write both.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16, INT64, BOOL = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.BOOL
NP_OF = {FLOAT: np.float32, FLOAT16: np.float16}
ATTR_TYPES = {"float": onnx.AttributeProto.FLOAT, "int": onnx.AttributeProto.INT,
              "ints": onnx.AttributeProto.INTS}


class Builder:
    def __init__(self, function: bool = False, dtype: int = FLOAT):
        self.function = function
        self.dtype = dtype                   # float type this body computes in
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0
        self._consts: dict = {}
        self._weights: set = set()

    # ---- naming and constants -------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "c") -> str:
        """A constant tensor, deduplicated by value; float constants take the body's dtype by default."""
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(NP_OF[dtype or self.dtype])
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        tensor = numpy_helper.from_array(arr, name)
        if self.function:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.initializers.append(tensor)
        self._consts[key] = name
        return name

    def weight(self, name: str, value: np.ndarray) -> str:
        """A named initializer (graph mode only): model weights keep readable names; a weight used
        twice (a shared pooling layer) is written once."""
        assert not self.function
        if name in self._weights:
            return name
        self._weights.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def attr_const(self, attr: str, kind: str, hint: str = "attr") -> str:
        """A Constant whose value is the calling node's attribute `attr` (function mode)."""
        out = self.fresh(hint)
        node = helper.make_node("Constant", [], [out])
        proto = onnx.AttributeProto()
        proto.name, proto.ref_attr_name, proto.type = f"value_{kind}", attr, ATTR_TYPES[kind]
        node.attribute.append(proto)
        self.nodes.append(node)
        return out

    # ---- nodes ---------------------------------------------------------------------------
    def op(self, op_type: str, *inputs, outputs: int = 1, domain: str = "", out_names=None, refs=None,
           **attrs):
        """One node. refs: {attribute: (calling node's attribute, kind)} (function bodies only)."""
        names = list(out_names) if out_names else [self.fresh(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, domain=domain or None, **attrs)
        for attr, (ref, kind) in (refs or {}).items():
            proto = onnx.AttributeProto()
            proto.name, proto.ref_attr_name, proto.type = attr, ref, ATTR_TYPES[kind]
            node.attribute.append(proto)
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def __getattr__(self, op_type: str):
        # b.MatMul(x, y) == b.op("MatMul", x, y): keeps graph code close to the math.
        if op_type[:1].isupper():
            return lambda *inputs, **kw: self.op(op_type, *inputs, **kw)
        raise AttributeError(op_type)

    # ---- composite helpers shared by every body ------------------------------------------
    def axes(self, *axes: int) -> str:
        return self.const(np.array(axes, dtype=np.int64), hint="axes")

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.Unsqueeze(x, self.axes(*axes))

    def squeeze(self, x: str, *axes: int) -> str:
        return self.Squeeze(x, self.axes(*axes))

    def dims(self, x: str, start: int, stop: int) -> str:
        """Shape(x)[start:stop] as a 1-D int64 tensor."""
        return self.Shape(x, start=start, end=stop)

    def l2norm(self, x: str, axes: str | None = None) -> str:
        """x / (sqrt(sum x^2) + 1e-8); in fp16 bodies computed in fp32 (1e-8 underflows fp16)."""
        if self.dtype == FLOAT16:
            x32 = self.Cast(x, to=FLOAT)
            return self.Cast(self._l2norm(x32, axes, FLOAT), to=FLOAT16)
        return self._l2norm(x, axes, self.dtype)

    def _l2norm(self, x, axes, dtype):
        axes = axes or self.axes(-1)
        norm = self.Sqrt(self.ReduceSum(self.Mul(x, x), axes, keepdims=1))
        return self.Div(x, self.Add(norm, self.const(np.float32(1e-8), dtype)))

    def masked_softmax(self, logits: str, mask_bool: str, axis: int) -> str:
        """softmax(where(mask, x, -inf)); fp16 bodies do it in fp32."""
        if self.dtype == FLOAT16:
            x32 = self.Cast(logits, to=FLOAT)
            filled = self.Where(mask_bool, x32, self.const(np.float32(-np.inf), FLOAT))
            return self.Cast(self.Softmax(filled, axis=axis), to=FLOAT16)
        filled = self.Where(mask_bool, logits, self.const(np.float32(-np.inf)))
        return self.Softmax(filled, axis=axis)

    def linear(self, x: str, weight_t: str, bias: str | None) -> str:
        y = self.MatMul(x, weight_t)
        return self.Add(y, bias) if bias else y

    def linear_int8(self, x: str, weight_q: str, weight_scale: str, bias: str) -> str:
        """Dynamic int8: activations quantized per tensor (uint8), weights per output column (int8)."""
        xq, xs, xz = self.op("DynamicQuantizeLinear", x, outputs=3)
        acc = self.MatMulInteger(xq, weight_q, xz)
        scale = self.Mul(xs, weight_scale)
        return self.Add(self.Mul(self.Cast(acc, to=FLOAT), scale), bias)

    # ---- output --------------------------------------------------------------------------
    def function_proto(self, name: str, inputs, outputs, attributes, opset: int, domain: str = "kidrr",
                       doc: str = "") -> onnx.FunctionProto:
        return helper.make_function(domain, name, list(inputs), list(outputs), self.nodes,
                                    [helper.make_opsetid("", opset)], attributes=list(attributes),
                                    doc_string=doc)
