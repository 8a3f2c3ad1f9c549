"""Static int8 similarity graph in QDQ form (docs/export.md), made by ONNX Runtime's own quantizer.

The fp32 graph's kidrr functions are inlined first (the quantizer does not look inside model-local
functions), then `onnxruntime.quantization.quantize_static` puts QuantizeLinear/DequantizeLinear
pairs around the relation steps' products: weights int8 per output channel, activations int8 per
tensor, both symmetric (zero point 0, as TensorRT's explicit quantization requires; S8S8 QDQ is
ONNX Runtime's recommended first choice on x86). Activation ranges come from calibration tiles of
the user's data; the rest of the split is held out for the export's recall gate.

Which products: the relation steps' folded q/k and update projections. The SimilarityVector
projections (their input (x - y)^2 is non-negative and heavy-tailed) and the readout lost 5.7 and
3.3 rSum on 60 held-out synthetic dev images when quantized the same way; the relation steps lost 0.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnx.inliner

from ..data import Split, load_split
from ..errors import InputError

CALIBRATION_TILES = 16                 # tiles of TILE_IMAGES x TILE_CAPTIONS pairs
TILE_IMAGES, TILE_CAPTIONS = 16, 16
MIN_PART_IMAGES = 10                   # images to calibrate on, and as many held out for the gate
MAX_CALIBRATION_IMAGES = 100           # the calibration half is cut here (enough tiles, fast)
QUANTIZED_WEIGHTS = (".qk.weight_t", ".update.weight_t")   # relation steps' products (names: graphs.py)


class CalibrationError(InputError):
    """The calibration data cannot calibrate this model (shape, size, missing files)."""


def calibration_split(model, source: str | None) -> tuple[Split, str]:
    """(split, description). source: None (the synthetic dev set if the model reads its features),
    'synthetic', or a folder holding dev_ims.npy + dev_caps.txt (the published layout)."""
    from ..errors import DataError
    from ..synthetic import SyntheticConfig, make_synthetic
    want = model.cfg.feature_size
    if source in (None, "synthetic"):
        syn = SyntheticConfig()
        if syn.feature_size != want:
            raise CalibrationError(
                f"int8 needs calibration data: the model reads {want}-d features and the synthetic set has "
                f"{syn.feature_size}-d ones; pass --calibration DATA, a folder with dev_ims.npy and dev_caps.txt "
                f"(the dev split the model was trained with)")
        split, what = make_synthetic("dev", syn), "synthetic dev"
    else:
        if not os.path.isdir(source):
            raise CalibrationError(f"calibration data {source} is not a folder; pass 'synthetic' or a folder with "
                                   f"dev_ims.npy and dev_caps.txt")
        try:
            split = load_split(source, "dev")
        except DataError as exc:
            raise CalibrationError(f"calibration data: {exc}") from exc
        what = f"{source} dev"
    if split.feature_size != want:
        raise CalibrationError(f"calibration data {what} has {split.feature_size}-d region features but the model "
                               f"reads {want}-d ones; calibrate on features from the extractor it was trained on")
    if len(split.images) < 2 * MIN_PART_IMAGES:
        raise CalibrationError(f"calibration data {what} has {len(split.images)} images; int8 needs at least "
                               f"{2 * MIN_PART_IMAGES} ({MIN_PART_IMAGES} to calibrate, {MIN_PART_IMAGES} held out "
                               f"for the recall check). Give a larger dev split")
    return split, what


def split_parts(split: Split, held_out_images: int | None) -> tuple[Split, Split]:
    """(calibration part, held-out part): the first half (at most MAX_CALIBRATION_IMAGES) calibrates,
    the second half (its first held_out_images, all if None) checks recall."""
    half = len(split.images) // 2
    calibrate = split.subset(min(half, MAX_CALIBRATION_IMAGES))
    n_held = len(split.images) - half if held_out_images is None else max(MIN_PART_IMAGES, held_out_images)
    return calibrate, split.subset(min(n_held, len(split.images) - half), half)


def calibration_feeds(images, captions, seed: int = 0) -> list:
    """Similarity-graph feeds: tiles of random images x random captions, each cut to its longest caption."""
    img_l, img_g = images
    cap_l, cap_g, lengths = captions
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(CALIBRATION_TILES):
        i = np.sort(rng.choice(len(img_l), min(TILE_IMAGES, len(img_l)), replace=False))
        j = np.sort(rng.choice(len(cap_l), min(TILE_CAPTIONS, len(cap_l)), replace=False))
        lmax = int(lengths[j].max())
        feeds.append({"img_locals": np.ascontiguousarray(img_l[i]), "img_global": np.ascontiguousarray(img_g[i]),
                      "cap_locals": np.ascontiguousarray(cap_l[j, :lmax]), "cap_global": np.ascontiguousarray(cap_g[j]),
                      "cap_lengths": np.ascontiguousarray(lengths[j])})
    return feeds


def _named_inlined(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its kidrr functions inlined and every node named (the quantizer selects by name)."""
    model = onnx.inliner.inline_local_functions(fp32)
    del model.functions[:]
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type.lower()}_{i}"
    return model


def products_to_quantize(model: onnx.ModelProto) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2
            and n.input[1] in inits and n.input[1].endswith(QUANTIZED_WEIGHTS)]


def _keep_fp32_elsewhere(model: onnx.ModelProto, quantized: set) -> None:
    """The quantizer hands a quantized activation's DequantizeLinear output to every consumer of the
    tensor; the products left in fp32 (attention, the adjacency mix) get the fp32 tensor back, so they
    lose no precision and TensorRT sees no product quantized on one input only."""
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]


def quantize_similarity(fp32: onnx.ModelProto, feeds: list) -> onnx.ModelProto:
    """The static int8 QDQ graph of an fp32 similarity graph, calibrated on feeds (MinMax)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    model = _named_inlined(fp32)
    nodes = products_to_quantize(model)
    if not nodes:
        raise InputError("the similarity graph has no relation-step products to quantize (rgr_steps = 0?); "
                         "export fp32 or fp16 instead")
    with tempfile.TemporaryDirectory(prefix="kidrr-qdq-") as tmp:
        out = os.path.join(tmp, "similarity_int8.onnx")
        quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
        quantized = onnx.load(out)
    _keep_fp32_elsewhere(quantized, set(nodes))
    quantized.producer_name = fp32.producer_name
    quantized.graph.name = fp32.graph.name
    onnx.checker.check_model(quantized, full_check=True)
    return quantized
