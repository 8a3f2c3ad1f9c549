"""Recall@K, rSum and median rank from a score matrix (torch-free: the runtime and bench use it)."""
from __future__ import annotations

import numpy as np

from .errors import InputError

PROTOCOLS = ("all", "1k", "5fold", "5k")


def _ranks(scores: np.ndarray, caption_image: np.ndarray):
    """0-based ranks; ties count against the model (a constant scorer ranks last, not first)."""
    n_img, n_cap = scores.shape
    pos = scores[caption_image, np.arange(n_cap)]                       # (m,) score of each true pair
    t2i = (scores >= pos[None, :]).sum(0) - 1                           # images scoring at least as high
    i2t = np.empty(n_img, dtype=np.int64)
    for img in range(n_img):  # n_img rows of one vector op each: cheap beside scoring
        row = scores[img]
        own = row[caption_image == img]
        if own.size == 0:
            raise InputError(f"image {img} has no caption in the evaluation set")
        i2t[img] = (row[None, :] >= own[:, None]).sum(1).min() - 1
    return i2t, t2i


def recall(scores: np.ndarray, caption_image: np.ndarray) -> dict:
    """R@1/5/10 both ways, rSum and median ranks for scores (n_images, n_captions)."""
    scores = np.asarray(scores, dtype=np.float64)
    caption_image = np.asarray(caption_image)
    if scores.ndim != 2 or scores.shape[1] != caption_image.shape[0]:
        raise InputError(f"scores {scores.shape} do not match {caption_image.shape[0]} captions")
    if not np.isfinite(scores).all():
        raise InputError("the score matrix holds NaN or inf; the model or its inputs are broken")
    i2t, t2i = _ranks(scores, caption_image)
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * float(np.mean(ranks < k))
        out[f"{name}_medr"] = float(np.floor(np.median(ranks)) + 1)
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def folds(n_images: int, protocol: str):
    """Image index ranges [start, stop) to evaluate, exactly per the published protocols, or InputError.

    all: every image at once, any n. 5k: COCO 5K, exactly 5,000 images ranked at once. 5fold: five
    equal folds (COCO 1K: 5 x 1,000 of the 5K test set), so n must be a multiple of 5. 1k: folds of
    exactly 1,000 images (Flickr30K's 1,000-image test is one fold), so n must be a multiple of 1,000.
    Nothing is dropped or padded: a split that does not fit the protocol is refused, naming the
    protocol that would take it, so every reported number covers every image.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise InputError(f"a protocol needs at least one image, got {n_images!r}")
    n = int(n_images)
    if protocol == "all":
        return [(0, n)]
    if protocol == "5k":
        if n != 5000:
            raise InputError(f"protocol 5k ranks exactly 5,000 images (COCO 5K test) at once, this split has {n}; "
                             f"use --protocol all to rank all {n} at once")
        return [(0, n)]
    size = 1000 if protocol == "1k" else n // 5
    if size == 0 or n % size or (protocol == "5fold" and n % 5):
        need = "a multiple of 1,000 images" if protocol == "1k" else "a multiple of 5 images (5 equal folds)"
        raise InputError(f"protocol {protocol} needs {need}, this split has {n}: images would be dropped. "
                         f"Use --protocol all (all {n} images at once), or a split that fits")
    return [(s, s + size) for s in range(0, n, size)]


def average(results: list) -> dict:
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}
