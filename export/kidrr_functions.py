"""Bodies of the custom `kidrr` ops, written as ONNX model-local functions in standard ONNX.

ONNX Runtime and TensorRT's parser inline them; a plugin or fused kernel can replace a node by its
(domain, name). Each body is generated per model (its knowledge-node count) and per precision.

  CrossAttention(query (Bq,Q,D), context (Bc,C,D), context_mask (Bc,C)) -> (Bc,Bq,Q,D)
      SCAN attention of every query set against every context set (KIDRR.attend), as two large
      products: (Bc*C, D) x (D, Bq*Q) scores, then per context set (Bq*Q, C) x (C, D).
      attrs: smooth_lambda, leaky_slope, norm_axes ([3] = over queries, [1] = over the context).
  SimilarityVector(x, y, weights...) -> l2norm(W (x - y)^2 + b)             (broadcasting)
  RelationStep(rows (n,m,Q,S), s (n,m,N,S), node_mask (m,N), row_mask (m,Q), prev_adj, weights...) -> (rows', adj)
      The query/key projections are folded into one S x S matrix at export (see graphs.py).
      attr gamma: adj = gamma * prev_adj + (1 - gamma) * softmax(...)
  DisseminationStep(x (B,L,D), g (B,D), mask (B,L)[, knowledge (K,D)], weights...) -> x'
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from .onnx_builder import BOOL, FLOAT, Builder

DOMAIN = "kidrr"


def cross_attention(opset: int, dtype: int, layout: str = "gemm"):
    b = Builder(function=True, dtype=dtype)
    query, context, mask = "query", "context", "context_mask"
    lam = b.attr_const("smooth_lambda", "float")
    if dtype != FLOAT:
        lam = b.Cast(lam, to=dtype)
    norm_axes = b.attr_const("norm_axes", "ints")
    q_dims, c_dims = b.dims(query, 0, 2), b.dims(context, 0, 2)
    if layout == "gemm":
        # One (Bc*C, D) x (D, Bq*Q) product instead of Bc*Bq tiny ones.
        scores = b.Gemm(b.Flatten(context, axis=2), b.Flatten(query, axis=2), transB=1)
        a = b.Reshape(scores, b.Concat(c_dims, q_dims, axis=0))             # (Bc, C, Bq, Q)
        mask4 = b.unsqueeze(mask, 2, 3)
        c_axis = 1
    else:  # "batched": the literal broadcast of the PyTorch code, kept for the benchmark
        a = b.MatMul(b.unsqueeze(context, 1), b.Transpose(b.unsqueeze(query, 0), perm=[0, 1, 3, 2]))
        mask4 = b.unsqueeze(mask, 1, 3)                                     # (Bc, 1, C, 1)
        c_axis = 2
    a = b.LeakyRelu(a, refs={"alpha": ("leaky_slope", "float")})
    a = b.l2norm(b.Mul(a, mask4), norm_axes)
    alpha = b.masked_softmax(b.Mul(a, lam), b.Cast(mask4, to=BOOL), axis=c_axis)
    if layout == "gemm":
        alpha3 = b.Reshape(alpha, b.const(np.array([0, 0, -1], dtype=np.int64)))      # (Bc, C, Bq*Q)
        att = b.MatMul(b.Transpose(alpha3, perm=[0, 2, 1]), context)                    # (Bc, Bq*Q, D)
        att = b.Reshape(att, b.Concat(b.dims(context, 0, 1), q_dims, b.const(np.array([-1], np.int64)),
                                      axis=0))
    else:
        att = b.MatMul(b.Transpose(alpha, perm=[0, 1, 3, 2]), b.unsqueeze(context, 1))
    b.l2norm(att)
    b.nodes[-1].output[0] = "attended"
    return b.function_proto("CrossAttention", [query, context, mask], ["attended"],
                            ["smooth_lambda", "leaky_slope", "norm_axes"], opset,
                            doc="SCAN cross attention (KIDRR.attend) over every (context set, query set) pair")


def similarity_vector(opset: int, dtype: int, int8: bool = False):
    b = Builder(function=True, dtype=dtype)
    diff = b.Sub("x", "y")
    sq = b.Mul(diff, diff)
    if int8:
        inputs = ["x", "y", "weight_q", "weight_scale", "bias"]
        proj = b.linear_int8(sq, "weight_q", "weight_scale", "bias")
    else:
        inputs = ["x", "y", "weight_t", "bias"]
        proj = b.linear(sq, "weight_t", "bias")
    b.l2norm(proj)
    b.nodes[-1].output[0] = "sim"
    return b.function_proto("SimilarityVector", inputs, ["sim"], [], opset,
                            doc="sv(x, y) = l2norm(W (x - y)^2 + b), broadcasting over leading axes")


def relation_step(opset: int, dtype: int, int8: bool = False):
    """rows' = relu(W_u (A s) + b_u) * row_mask, A = gamma A_prev + (1 - gamma) softmax_q(u_p . s_q),
    u = rows M + c. `rows` is s itself (every node is updated), or only node 0 in the last step: the
    readout reads s_0 alone, so the last step computes that one row (same values, ~1/3 of its work)."""
    b = Builder(function=True, dtype=dtype)
    rows, s, mask, row_mask, prev = "rows", "s", "node_mask", "row_mask", "prev_adj"
    if int8:
        weights = ["relation_weight_q", "relation_scale", "relation_bias", "update_weight_q", "update_scale",
                   "update_bias"]
        lin = lambda x, w, sc, bias: b.linear_int8(x, w, sc, bias)  # noqa: E731
        u = lin(rows, *weights[0:3])
    else:
        weights = ["relation_weight", "relation_bias", "update_weight_t", "update_bias"]
        u = b.linear(rows, weights[0], weights[1])
    logits = b.MatMul(u, b.Transpose(s, perm=[0, 1, 3, 2]))                       # (n, m, rows, N)
    key_mask = b.Cast(b.unsqueeze(mask, 0, 2), to=BOOL)                           # (1, m, 1, N)
    adj = b.masked_softmax(logits, key_mask, axis=-1)
    gamma = b.attr_const("gamma", "float")
    one_minus = b.Sub(b.const(np.float32(1.0), FLOAT), gamma)                     # in fp32, as PyTorch does
    if dtype != FLOAT:
        gamma, one_minus = b.Cast(gamma, to=dtype), b.Cast(one_minus, to=dtype)
    adj = b.Add(b.Mul(gamma, prev), b.Mul(one_minus, adj), out_names=["adj"])
    mixed = b.MatMul(adj, s)
    upd = lin(mixed, *weights[3:6]) if int8 else b.linear(mixed, weights[2], weights[3])
    b.Mul(b.Relu(upd), b.unsqueeze(row_mask, 0, 3), out_names=["s_out"])
    return b.function_proto("RelationStep", [rows, s, mask, row_mask, prev] + weights, ["s_out", "adj"], ["gamma"],
                            opset, doc="one relation-graph-reconstruction step over every pair of a tile")


def dissemination_step(opset: int, with_knowledge: bool):
    """One KGID step (DisseminationStep.forward); the gate's [x; g] product is split so the
    global's half is computed once per item rather than once per node."""
    b = Builder(function=True)
    x, g, mask = "x", "g", "mask"
    weights = ["gate_x_t", "gate_g_t", "gate_bias", "broadcast_t", "broadcast_bias", "query_t", "query_bias",
               "key_t", "key_bias", "value_t", "value_bias", "out_t", "out_bias", "norm_weight", "norm_bias",
               "scale"]
    (gxt, ggt, gb, bt, bb, qt, qb, kt, kb, vt, vb, ot, ob, lnw, lnb, scale) = weights
    keep = b.unsqueeze(mask, 2)
    gate = b.Sigmoid(b.Add(b.MatMul(x, gxt), b.unsqueeze(b.linear(g, ggt, gb), 1)))
    xb = b.Mul(b.Add(x, b.Mul(gate, b.unsqueeze(b.linear(g, bt, bb), 1))), keep)
    batch = b.dims(x, 0, 1)
    parts = [xb, b.unsqueeze(g, 1)]
    inputs = [x, g, mask]
    if with_knowledge:
        inputs.append("knowledge")
        parts.append(b.Expand(b.unsqueeze("knowledge", 0), b.Concat(batch, b.Shape("knowledge"), axis=0)))
    nodes = b.Concat(*parts, axis=1)
    # Global and knowledge nodes are always valid: the mask is the locals' mask, padded with ones.
    n_extra = b.Sub(b.dims(nodes, 1, 2), b.dims(x, 1, 2))
    ones = b.ConstantOfShape(b.Concat(batch, n_extra, axis=0),
                             value=numpy_helper.from_array(np.ones(1, np.float32)))
    node_mask = b.Cast(b.unsqueeze(b.Concat(mask, ones, axis=1), 1), to=BOOL)      # (B, 1, L+1+K)
    logits = b.Div(b.MatMul(b.linear(xb, qt, qb), b.Transpose(b.linear(nodes, kt, kb), perm=[0, 2, 1])), scale)
    attn = b.MatMul(b.masked_softmax(logits, node_mask, axis=-1), b.linear(nodes, vt, vb))
    normed = b.LayerNormalization(b.linear(attn, ot, ob), lnw, lnb, axis=-1,
                                  refs={"epsilon": ("epsilon", "float")})
    b.Mul(b.l2norm(b.Add(xb, b.Relu(normed))), keep, out_names=["x_out"])
    return b.function_proto("DisseminationStep", inputs + weights, ["x_out"], ["epsilon"], opset,
                            doc="one knowledge-graph iterative dissemination step (broadcast, attend, update)")

