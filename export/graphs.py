"""The three bundle graphs, written from a KIDRR model's weights (docs/bundle.md names and axes).

Graphs are written directly with onnx.helper rather than traced: every axis stays symbolic, the
custom ops are nodes in domain `kidrr` whose model-local function bodies come from
kidrr_functions.py, and the similarity graph can use a faster (but equal) formulation than the
PyTorch code: the relation steps' query/key projections folded into one S x S matrix and the
cross attention as large matrix products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from . import kidrr_functions as fn
from .onnx_builder import BOOL, FLOAT, FLOAT16, INT64, NP_OF, Builder
from ..errors import ConfigError

DOMAIN = fn.DOMAIN
IR_VERSION = 10          # ONNX Runtime >= 1.20 and TensorRT 10 read IR 10


@dataclass
class SimilarityOptions:
    precision: str = "fp32"        # fp32 | fp16 | int8 (dynamic, the relation and similarity projections)
    fold_qk: bool = True           # one S x S matrix per relation step instead of two projections
    attention_layout: str = "gemm"  # gemm | batched (the literal broadcast; for the benchmark)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


def _linear(b: Builder, prefix: str, lin: torch.nn.Linear, dtype=np.float32):
    """(weight transposed (in, out), bias) initializers of an nn.Linear."""
    wt = b.weight(f"{prefix}.weight_t", _np(lin.weight).T.astype(dtype))
    bias = b.weight(f"{prefix}.bias", _np(lin.bias).astype(dtype)) if lin.bias is not None else None
    return wt, bias


def _value_info(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(b: Builder, name, inputs, outputs, functions, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
                              functions=functions, producer_name="kidrr-export", ir_version=IR_VERSION)
    return model


# ---- shared pieces -----------------------------------------------------------------------------
def _length_mask(b: Builder, lengths: str, like: str) -> str:
    """(m, L) bool, True at real tokens; L read from like's axis 1."""
    length = b.squeeze(b.dims(like, 1, 2), 0)
    pos = b.Range(b.const(np.int64(0)), length, b.const(np.int64(1)))
    return b.Less(b.unsqueeze(pos, 0), b.unsqueeze(lengths, 1))


def _attention_pool(b: Builder, prefix: str, pool, x: str, maskf: str, maskb: str) -> str:
    m = b.unsqueeze(maskf, 2)
    total = b.ReduceSum(b.Mul(x, m), b.axes(1), keepdims=0)
    mean = b.Div(total, b.Max(b.ReduceSum(m, b.axes(1), keepdims=0), b.const(np.float32(1.0))))
    local = b.Tanh(b.linear(x, *_linear(b, f"{prefix}.local", pool.local)))
    glob = b.Tanh(b.linear(mean, *_linear(b, f"{prefix}.glob", pool.glob)))
    logits = b.squeeze(b.linear(b.Mul(local, b.unsqueeze(glob, 1)), *_linear(b, f"{prefix}.weight", pool.weight)), 2)
    weights = b.masked_softmax(logits, maskb, axis=1)
    return b.l2norm(b.ReduceSum(b.Mul(b.unsqueeze(weights, 2), x), b.axes(1), keepdims=0))


def _dissemination(b: Builder, prefix: str, model, kgid, pool, x, maskf, maskb, knowledge):
    pool_prefix = prefix + "_pool"
    g = _attention_pool(b, pool_prefix, pool, x, maskf, maskb)
    dim = x_dim = model.cfg.embed_size
    scale = b.const(np.float32(math.sqrt(dim)), hint="sqrt_dim")
    for k, step in enumerate(kgid.steps):
        p = f"{prefix}.steps.{k}"
        gate_w = _np(step.gate.weight)
        ins = [x, g, maskf] + ([knowledge] if knowledge else [])
        ins += [b.weight(f"{p}.gate.weight_x_t", gate_w[:, :x_dim].T.copy()),
                b.weight(f"{p}.gate.weight_g_t", gate_w[:, x_dim:].T.copy()),
                b.weight(f"{p}.gate.bias", _np(step.gate.bias))]
        for name in ("broadcast", "query", "key", "value", "out"):
            ins += list(_linear(b, f"{p}.{name}", getattr(step, name)))
        ins += [b.weight(f"{p}.norm.weight", _np(step.norm.weight)), b.weight(f"{p}.norm.bias", _np(step.norm.bias)),
                scale]
        x = b.op("DisseminationStep", *ins, domain=DOMAIN, epsilon=float(step.norm.eps))
        g = _attention_pool(b, pool_prefix, pool, x, maskf, maskb)
    return x, g


def _kgid_functions(model, opset):
    return [fn.dissemination_step(opset, model.knowledge is not None)] if model.cfg.kgid_steps else []


# ---- image encoder ----------------------------------------------------------------------------
def image_encoder(model, opset: int) -> onnx.ModelProto:
    cfg = model.cfg
    b = Builder()
    v = b.l2norm(b.linear("features", *_linear(b, "image_encoder.fc", model.image_encoder.fc)))
    maskf = b.ConstantOfShape(b.dims("features", 0, 2), value=numpy_helper.from_array(np.ones(1, np.float32)))
    maskb = b.Cast(maskf, to=BOOL)
    knowledge = b.weight("knowledge", _np(model.knowledge)) if model.knowledge is not None else None
    x, g = _dissemination(b, "image_kgid", model, model.image_kgid, model.image_pool, v, maskf, maskb, knowledge)
    b.Identity(x, out_names=["img_locals"])
    b.Identity(g, out_names=["img_global"])
    d = cfg.embed_size
    return _model(b, "kidrr_image_encoder",
                  [_value_info("features", FLOAT, ["n", "R", cfg.feature_size])],
                  [_value_info("img_locals", FLOAT, ["n", "R", d]), _value_info("img_global", FLOAT, ["n", d])],
                  _kgid_functions(model, opset), opset)


# ---- text encoder -----------------------------------------------------------------------------
def _gru_weights(b: Builder, prefix: str, gru: torch.nn.GRU):
    """PyTorch (r, z, n) gate order -> ONNX (z, r, h); linear_before_reset matches PyTorch's GRU."""
    def reorder(w):
        r, z, n = np.split(_np(w), 3, axis=0)
        return np.concatenate([z, r, n], axis=0)
    w = b.weight(f"{prefix}.W", reorder(gru.weight_ih_l0)[None])
    r = b.weight(f"{prefix}.R", reorder(gru.weight_hh_l0)[None])
    bias = b.weight(f"{prefix}.B", np.concatenate([reorder(gru.bias_ih_l0), reorder(gru.bias_hh_l0)])[None])
    return w, r, bias


def _gru(b: Builder, prefix: str, gru, words_seq_first: str, hidden: int) -> str:
    y = b.op("GRU", words_seq_first, *_gru_weights(b, prefix, gru), hidden_size=hidden, linear_before_reset=1,
             outputs=1)
    return b.Transpose(b.squeeze(y, 1), perm=[1, 0, 2])                  # (L, 1, m, H) -> (m, L, H)


def text_precision(cfg, precision: str) -> str:
    """The text encoder's own precision: the pretrained transformer follows the bundle's int8 (its
    matrix products are the caption's whole cost); everything else, and every BiGRU, stays fp32."""
    return "int8" if cfg.text_encoder == "minilm-l6" and precision == "int8" else "fp32"


def text_encoder(model, opset: int, precision: str = "fp32") -> onnx.ModelProto:
    cfg = model.cfg
    b = Builder()
    maskb = _length_mask(b, "lengths", "ids")
    maskf = b.Cast(maskb, to=FLOAT)
    knowledge = b.weight("knowledge", _np(model.knowledge)) if model.knowledge is not None else None
    if cfg.text_encoder == "minilm-l6":
        t, sentence = _minilm_words(b, model.text_encoder, maskf, text_precision(cfg, precision) == "int8")
    else:
        t, sentence = _bigru_words(b, model.text_encoder, cfg, maskb, maskf), None
    x, g = _dissemination(b, "text_kgid", model, model.text_kgid, model.text_pool, t, maskf, maskb, knowledge)
    if sentence is not None:
        g = b.l2norm(b.Add(g, sentence))
    b.Identity(x, out_names=["cap_locals"])
    b.Identity(g, out_names=["cap_global"])
    d = cfg.embed_size
    return _model(b, "kidrr_text_encoder",
                  [_value_info("ids", INT64, ["m", "L"]), _value_info("lengths", INT64, ["m"])],
                  [_value_info("cap_locals", FLOAT, ["m", "L", d]), _value_info("cap_global", FLOAT, ["m", d])],
                  _kgid_functions(model, opset), opset)


def _bigru_words(b: Builder, enc, cfg, maskb: str, maskf: str) -> str:
    words = b.Gather(b.weight("text_encoder.embed.weight", _np(enc.embed.weight)), "ids", axis=0)  # (m, L, W)
    fwd = _gru(b, "text_encoder.gru_fwd", enc.gru_fwd, b.Transpose(words, perm=[1, 0, 2]), cfg.embed_size)
    # Backward direction: reverse each caption within its own length (padding stays in place), run a
    # forward GRU, reverse back: exactly TextEncoder.forward, no packed sequences.
    pos = b.unsqueeze(b.Range(b.const(np.int64(0)), b.squeeze(b.dims("ids", 1, 2), 0), b.const(np.int64(1))), 0)
    rev = b.Where(maskb, b.Sub(b.Sub(b.unsqueeze("lengths", 1), b.const(np.int64(1))), pos),
                  b.Expand(pos, b.Shape("ids")))
    rev3 = b.Expand(b.unsqueeze(rev, 2), b.Shape(words))
    rwords = b.GatherElements(words, rev3, axis=1)
    bwd_rev = _gru(b, "text_encoder.gru_bwd", enc.gru_bwd, b.Transpose(rwords, perm=[1, 0, 2]), cfg.embed_size)
    rev_h = b.Expand(b.unsqueeze(rev, 2), b.Shape(bwd_rev))
    bwd = b.GatherElements(bwd_rev, rev_h, axis=1)
    return b.Mul(b.l2norm(b.Div(b.Add(fwd, bwd), b.const(np.float32(2.0)))), b.unsqueeze(maskf, 2))


def _layer_norm(b: Builder, prefix: str, x: str, norm) -> str:
    return b.LayerNormalization(x, b.weight(f"{prefix}.weight", _np(norm.weight)),
                                b.weight(f"{prefix}.bias", _np(norm.bias)), axis=-1, epsilon=float(norm.eps))


def _minilm_words(b: Builder, enc, maskf: str, int8: bool):
    """The pretrained BERT (kidrr/minilm.py) as plain ONNX ops, then KIDRR's heads on its states:
    words (m, L, D) zero at padding, and the projected mean-pooled sentence vector (m, D)."""
    bert = enc.bert
    p = "text_encoder.bert"
    hidden = bert.word.embedding_dim
    pos = b.Range(b.const(np.int64(0)), b.squeeze(b.dims("ids", 1, 2), 0), b.const(np.int64(1)))
    emb = b.Add(b.Add(b.Gather(b.weight(f"{p}.word.weight", _np(bert.word.weight)), "ids", axis=0),
                      b.unsqueeze(b.Gather(b.weight(f"{p}.position.weight", _np(bert.position.weight)), pos, axis=0), 0)),
                b.weight(f"{p}.token_type.weight_0", _np(bert.token_type.weight[0])))
    x = _layer_norm(b, f"{p}.norm", emb, bert.norm)
    # additive attention mask (m, 1, 1, L): 0 at real tokens, the float minimum at padding (as torch)
    bias = b.unsqueeze(b.Mul(b.Sub(b.const(np.float32(1.0)), maskf), b.const(np.float32(np.finfo(np.float32).min))), 1, 2)
    # The layers run on (m*L, H) rows: every linear map is then one 2-D product that ONNX Runtime fuses
    # with its bias (Gemm), which at batch 1 is most of the caption's latency (op count, not FLOPs).
    shape_3d = b.Concat(b.dims("ids", 0, 2), b.const(np.array([hidden], dtype=np.int64)), axis=0)
    x = b.Reshape(x, b.const(np.array([-1, hidden], dtype=np.int64), hint="rows_shape"))
    for i, layer in enumerate(bert.layers):
        x = _bert_layer(b, f"{p}.layers.{i}", layer, x, bias, hidden, int8)
    x = b.Reshape(x, shape_3d)
    words = b.Mul(b.l2norm(b.linear(x, *_linear(b, "text_encoder.word_proj", enc.word_proj))), b.unsqueeze(maskf, 2))
    m = b.unsqueeze(maskf, 2)
    mean = b.Div(b.ReduceSum(b.Mul(x, m), b.axes(1), keepdims=0),
                 b.Max(b.ReduceSum(m, b.axes(1), keepdims=0), b.const(np.float32(1.0))))
    return words, b.linear(mean, *_linear(b, "text_encoder.sentence_proj", enc.sentence_proj))


def _bert_layer(b: Builder, p: str, layer, x: str, bias: str, hidden: int, int8: bool) -> str:
    """One BERT layer on rows x (m*L, H), with query, key and value as one product (H -> 3H).

    int8: three of its four matrix products dynamically quantized (activations per tensor, weights
    per output column), as the similarity graph's int8 variant does. The feed-forward output stays
    fp32: its input, the GELU of the 1536-wide layer, has the outliers a per-tensor scale loses
    (f8k-photos dev, 5fold, caption encoder alone at int8: all four -1.70 rSum, without it -0.62)."""
    def lin(y, name, weight, bias_):
        if not int8 or name == "out":
            return b.linear(y, b.weight(f"{p}.{name}.weight_t", weight.T.copy()), b.weight(f"{p}.{name}.bias", bias_))
        q, scale = _quantize_columns(weight.T)
        return b.linear_int8(y, b.weight(f"{p}.{name}.weight_q", q), b.weight(f"{p}.{name}.weight_scale", scale),
                             b.weight(f"{p}.{name}.bias", bias_))

    def module(name):
        m_ = getattr(layer, name)
        return _np(m_.weight), _np(m_.bias)
    heads = layer.heads
    head_dim = hidden // heads
    (wq, bq), (wk, bk), (wv, bv) = module("query"), module("key"), module("value")
    qkv = lin(x, "qkv", np.concatenate([wq, wk, wv]), np.concatenate([bq, bk, bv]))
    # (m*L, 3H) -> (3, m, heads, L, head_dim); m and L come from the mask bias (m, 1, 1, L)
    lengths = b.dims(bias, 3, 4)
    qkv = b.Reshape(qkv, b.Concat(b.const(np.array([-1], dtype=np.int64)), lengths,
                                  b.const(np.array([3, heads, head_dim], dtype=np.int64)), axis=0))
    qkv = b.Transpose(qkv, perm=[2, 0, 3, 1, 4])
    q, k, v = (b.Gather(qkv, b.const(np.int64(i)), axis=0) for i in range(3))
    logits = b.Add(b.Mul(b.MatMul(q, b.Transpose(k, perm=[0, 1, 3, 2])), b.const(np.float32(1.0 / math.sqrt(head_dim)))),
                   bias)
    ctx = b.Transpose(b.MatMul(b.Softmax(logits, axis=-1), v), perm=[0, 2, 1, 3])
    ctx = b.Reshape(ctx, b.const(np.array([-1, hidden], dtype=np.int64), hint="rows_shape"))
    x = _layer_norm(b, f"{p}.attn_norm", b.Add(x, lin(ctx, "attn_out", *module("attn_out"))), layer.attn_norm)
    inner = lin(x, "inner", *module("inner"))
    # exact (erf) GELU, written in the order ONNX Runtime's Gelu fusion recognises: x/sqrt2, erf, +1, *x, *0.5
    erf = b.Erf(b.Div(inner, b.const(np.float32(math.sqrt(2.0)))))
    gelu = b.Mul(b.Mul(inner, b.Add(erf, b.const(np.float32(1.0)))), b.const(np.float32(0.5)))
    return _layer_norm(b, f"{p}.out_norm", b.Add(x, lin(gelu, "out", *module("out"))), layer.out_norm)


def _quantize_columns(w_t: np.ndarray):
    """Symmetric int8 per output column: (int8 weights (in, out), float32 scales (out,))."""
    scale = np.abs(w_t).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(w_t / scale), -127, 127).astype(np.int8), scale


class _Weights:
    """Writes a linear map's initializers in the similarity graph's precision."""

    def __init__(self, b: Builder, precision: str):
        self.b, self.precision = b, precision
        self.np_dtype = np.float16 if precision == "fp16" else np.float32

    def plain(self, name, w_t: np.ndarray, bias: np.ndarray):
        return [self.b.weight(f"{name}.weight_t", w_t.astype(self.np_dtype)),
                self.b.weight(f"{name}.bias", bias.astype(self.np_dtype))]

    def projected(self, name, w_t: np.ndarray, bias: np.ndarray):
        """A projection the int8 variant quantizes."""
        if self.precision != "int8":
            return self.plain(name, w_t, bias)
        q, scale = _quantize_columns(w_t)
        return [self.b.weight(f"{name}.weight_q", q), self.b.weight(f"{name}.weight_scale", scale),
                self.b.weight(f"{name}.bias", bias.astype(np.float32))]


def _relation_weights(step):
    """(M, c) with logits = (s M + c) s^T; equal, up to terms constant over the key index that the
    softmax ignores (s_p.Wq^T bk and bq.bk), to (s Wq^T + bq)(s Wk^T + bk)^T. Folded in float64."""
    wq, bq, wk = (_np(step.query.weight).astype(np.float64), _np(step.query.bias).astype(np.float64),
                  _np(step.key.weight).astype(np.float64))
    return (wq.T @ wk).astype(np.float32), (wk.T @ bq).astype(np.float32)


def similarity(model, opset: int, options: SimilarityOptions | None = None) -> onnx.ModelProto:
    opt = options or SimilarityOptions()
    cfg = model.cfg
    if cfg.global_attn_norm != "context":
        raise ConfigError(f"global_attn_norm={cfg.global_attn_norm!r} is not exported yet; only 'context'")
    dtype = FLOAT16 if opt.precision == "fp16" else FLOAT
    int8 = opt.precision == "int8"
    b = Builder(dtype=dtype)
    w = _Weights(b, opt.precision)
    io = ["img_locals", "img_global", "cap_locals", "cap_global"]
    img_l, img_g, cap_l, cap_g = [b.Cast(x, to=FLOAT16) if dtype == FLOAT16 else x for x in io]
    word_maskb = _length_mask(b, "cap_lengths", cap_l)
    word_mask = b.Cast(word_maskb, to=dtype)
    region_mask = b.ConstantOfShape(b.dims(img_l, 0, 2),
                                    value=numpy_helper.from_array(np.ones(1, NP_OF[dtype])))

    def sv(name, module, x, y):
        ins = w.projected(name, _np(module.fc.weight).T, _np(module.fc.bias))
        return b.op("SimilarityVector", x, y, *ins, domain=DOMAIN)

    def attend(query, context, mask, over_queries: bool):
        if opt.attention_layout == "gemm":
            axes = [3] if over_queries else [1]
        else:
            axes = [3] if over_queries else [2]
        return b.op("CrossAttention", query, context, mask, domain=DOMAIN, smooth_lambda=float(cfg.smooth_lambda),
                    leaky_slope=float(cfg.leaky_slope), norm_axes=axes)

    def pair_major(attended, context_major_is_captions: bool):
        """(Bc, Bq, 1, D) -> (n, m, D)."""
        x = b.squeeze(attended, 2)
        return b.Transpose(x, perm=[1, 0, 2]) if context_major_is_captions else x

    gg = sv("sv_gg", model.sv_gg, b.unsqueeze(img_g, 1), b.unsqueeze(cap_g, 0))                  # (n, m, S)
    ll = sv("sv_ll", model.sv_ll, attend(cap_l, img_l, region_mask, True), cap_l)                 # (n, m, L, S)
    a_g = pair_major(attend(b.unsqueeze(cap_g, 1), img_l, region_mask, False), False)
    tv = sv("sv_gl", model.sv_gl, a_g, b.unsqueeze(cap_g, 0))
    b_g = pair_major(attend(b.unsqueeze(img_g, 1), cap_l, word_mask, False), True)
    vt = b.op("SimilarityVector", b_g, b.unsqueeze(img_g, 1), *[f"sv_gl.{s}" for s in (
        ("weight_q", "weight_scale", "bias") if int8 else ("weight_t", "bias"))], domain=DOMAIN)
    nodes = b.Concat(b.unsqueeze(gg, 2), b.unsqueeze(tv, 2), b.unsqueeze(vt, 2), ll, axis=2)   # (n, m, 3+L, S)
    three = b.ConstantOfShape(b.Concat(b.dims(cap_g, 0, 1), b.const(np.array([3], np.int64)), axis=0),
                              value=numpy_helper.from_array(np.ones(1, NP_OF[dtype])))
    node_mask = b.Concat(three, word_mask, axis=1)                                                 # (m, 3+L)
    s = b.Mul(nodes, b.unsqueeze(node_mask, 0, 3))
    prev = b.const(np.float32(0.0), hint="no_prev_adj")
    for k, step in enumerate(model.relation):
        p = f"relation.{k}"
        if opt.fold_qk:
            m_mat, c_vec = _relation_weights(step)
            rel = w.projected(f"{p}.qk", m_mat, c_vec)
        else:
            rel = None
        upd = w.projected(f"{p}.update", _np(step.update.weight).T, _np(step.update.bias))
        gamma = float(torch.sigmoid(step.gamma_logit).item()) if (cfg.rgr_adaptive and k > 0) else 0.0
        if rel is not None:
            rows, row_mask = s, node_mask
            if k == len(model.relation) - 1:  # the readout reads node 0 only: update just that row
                rows, row_mask = _first(b, s, 2), _first(b, node_mask, 1)
                prev = _first(b, prev, 2) if k > 0 else prev
            s, prev = b.op("RelationStep", rows, s, node_mask, row_mask, prev, *rel, *upd, domain=DOMAIN, outputs=2,
                           gamma=gamma)
        else:
            s, prev = _unfolded_relation_step(b, w, p, step, s, node_mask, prev, upd, gamma)
    s0 = b.Gather(s, b.const(np.int64(0)), axis=2)                                                  # (n, m, S)
    ro_w, ro_b = _np(model.readout.weight).T, _np(model.readout.bias)
    logit = b.squeeze(b.linear(s0, *w.plain("readout", ro_w, ro_b)), 2)
    score = b.Sigmoid(logit) if cfg.score_activation == "sigmoid" else logit
    score = b.Cast(score, to=FLOAT) if dtype == FLOAT16 else score
    if cfg.score_fusion:   # + weight x the globals' cosine, in fp32 from the graph's own inputs
        cosine = b.MatMul("img_global", b.Transpose("cap_global", perm=[1, 0]))
        score = b.Add(score, b.Mul(cosine, b.const(np.float32(cfg.score_fusion), FLOAT)))
    b.Identity(score, out_names=["scores"])
    d = cfg.embed_size
    functions = [fn.cross_attention(opset, dtype, opt.attention_layout), fn.similarity_vector(opset, dtype, int8)]
    if opt.fold_qk and cfg.rgr_steps:
        functions.append(fn.relation_step(opset, dtype, int8))
    return _model(b, "kidrr_similarity",
                  [_value_info("img_locals", FLOAT, ["n", "R", d]), _value_info("img_global", FLOAT, ["n", d]),
                   _value_info("cap_locals", FLOAT, ["m", "L", d]), _value_info("cap_global", FLOAT, ["m", d]),
                   _value_info("cap_lengths", INT64, ["m"])],
                  [_value_info("scores", FLOAT, ["n", "m"])], functions, opset)


def _first(b, x, axis: int):
    """x sliced to index 0 along axis, keeping the axis."""
    zero, one = b.const(np.array([0], np.int64)), b.const(np.array([1], np.int64))
    return b.Slice(x, zero, one, b.const(np.array([axis], np.int64)))


def _unfolded_relation_step(b, w, p, step, s, node_mask, prev, upd, gamma):
    """The literal q/k/update step as plain ops (benchmark baseline for the folded RelationStep)."""
    q = b.linear(s, *w.plain(f"{p}.query", _np(step.query.weight).T, _np(step.query.bias)))
    k = b.linear(s, *w.plain(f"{p}.key", _np(step.key.weight).T, _np(step.key.bias)))
    logits = b.MatMul(q, b.Transpose(k, perm=[0, 1, 3, 2]))
    adj = b.masked_softmax(logits, b.Cast(b.unsqueeze(node_mask, 0, 2), to=BOOL), axis=-1)
    g = b.const(np.float32(gamma))
    adj = b.Add(b.Mul(g, prev), b.Mul(b.const(np.float32(1.0 - gamma)), adj))
    s = b.Mul(b.Relu(b.linear(b.MatMul(adj, s), *upd)), b.unsqueeze(node_mask, 0, 3))
    return s, adj
