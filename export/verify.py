"""Parity of exported graphs with the PyTorch model on sample inputs (needs torch)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import KidrrError

FP32_TOLERANCE = 1e-5
RECALL_TARGETS = {"fp16": 1.0, "int8": 1.0, "int8-dynamic": 3.0}   # max |delta rSum| against fp32


class VerificationError(KidrrError):
    """The exported graphs disagree with the PyTorch model beyond the tolerance."""


def sample_inputs(cfg, n: int = 5, m: int = 6, regions: int = 7, seed: int = 0):
    """Features (n, R, F), ids (m, L) with varied true lengths (one of length 1), lengths (m,)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, regions, cfg.feature_size)).astype(np.float32)
    lengths = np.array([1 + (k * 5) % 11 for k in range(m)], dtype=np.int64)
    lengths[0] = 11
    ids = np.zeros((m, int(lengths.max())), np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, cfg.vocab_size, size=length)
    return features, ids, lengths


def _rank_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Fractions of images (rows) and captions (columns) whose top-1 match and whose full ranking agree."""
    return {"top1_i2t": float(np.mean(a.argmax(1) == b.argmax(1))),
            "top1_t2i": float(np.mean(a.argmax(0) == b.argmax(0))),
            "ranking_i2t": float(np.mean([(np.argsort(-x) == np.argsort(-y)).all() for x, y in zip(a, b)])),
            "ranking_t2i": float(np.mean([(np.argsort(-x) == np.argsort(-y)).all() for x, y in zip(a.T, b.T)]))}


@torch.no_grad()
def parity(model, sessions: dict, n: int = 5, m: int = 6, regions: int = 7, seed: int = 0) -> dict:
    """Max abs difference of every output, each graph fed the same inputs as PyTorch, plus the
    end-to-end scores (ORT encoders -> ORT similarity) and their rank agreement with PyTorch."""
    features, ids, lengths = sample_inputs(model.cfg, n, m, regions, seed)
    il, ig = model.encode_images(torch.from_numpy(features))
    cl, cg = model.encode_texts(torch.from_numpy(ids), torch.from_numpy(lengths))
    scores = model.score(il, ig, cl, cg, torch.from_numpy(lengths)).numpy()
    diffs = {}
    ort_il, ort_ig = sessions["image_encoder"].run(None, {"features": features})
    diffs["image_encoder.img_locals"] = float(np.abs(ort_il - il.numpy()).max())
    diffs["image_encoder.img_global"] = float(np.abs(ort_ig - ig.numpy()).max())
    ort_cl, ort_cg = sessions["text_encoder"].run(None, {"ids": ids, "lengths": lengths})
    diffs["text_encoder.cap_locals"] = float(np.abs(ort_cl - cl.numpy()).max())
    diffs["text_encoder.cap_global"] = float(np.abs(ort_cg - cg.numpy()).max())
    feed = {"img_locals": il.numpy(), "img_global": ig.numpy(), "cap_locals": cl.numpy(), "cap_global": cg.numpy(),
            "cap_lengths": lengths}
    diffs["similarity.scores"] = float(np.abs(sessions["similarity"].run(None, feed)[0] - scores).max())
    end_to_end = sessions["similarity"].run(None, {"img_locals": ort_il, "img_global": ort_ig, "cap_locals": ort_cl,
                                                   "cap_global": ort_cg, "cap_lengths": lengths})[0]
    diffs["end_to_end.scores"] = float(np.abs(end_to_end - scores).max())
    return {"max_abs_diff": diffs, "rank_agreement": _rank_agreement(end_to_end, scores),
            "shapes": {"n": n, "m": m, "R": regions, "L": int(ids.shape[1])}}


def check_parity(report: dict, precision: str, text_precision: str = "fp32") -> list:
    """Names of outputs over the fp32 tolerance (fp32 graphs only: the image encoder always is, the
    text encoder unless its pretrained transformer is quantized)."""
    bad = []
    for name, diff in report["max_abs_diff"].items():
        quantized_text = text_precision != "fp32" and name.startswith("text_encoder")
        fp32_graph = not quantized_text and (
            precision == "fp32" or not (name.startswith("similarity") or name.startswith("end_to_end")))
        if fp32_graph and not diff <= FP32_TOLERANCE:
            bad.append(f"{name} {diff:.3g}")
    return bad
