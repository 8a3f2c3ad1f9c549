"""Recall@K of bundle graphs on a split, and the recall delta of a precision variant (torch-free).

The bench reuses these: `score_split(sessions, vocab, split)` and `recall_delta(variant, reference, ...)`.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from .. import metrics
from ..tokenizer import Vocabulary, pad_batch


def caption_ids(vocab: Vocabulary, captions, max_len: int):
    """Token ids; over-long captions are cut keeping <end> (evaluation data must not be dropped)."""
    out = []
    for cap in captions:
        ids = vocab.encode(cap)
        out.append(ids if len(ids) <= max_len else ids[:max_len - 1] + ids[-1:])
    return out


def encode_split(sessions: dict, vocab: Vocabulary, split, max_len: int, batch: int = 256):
    """Run the two encoders: image (locals, globals) and caption (locals, globals, lengths) arrays."""
    img_l, img_g = [], []
    for i in range(0, len(split.images), batch):
        l, g = sessions["image_encoder"].run(None, {"features": np.ascontiguousarray(split.images[i:i + batch],
                                                                                      dtype=np.float32)})
        img_l.append(l)
        img_g.append(g)
    ids, lengths = pad_batch(caption_ids(vocab, split.captions, max_len))
    cap_l = np.zeros(ids.shape + (img_l[0].shape[-1],), np.float32)
    cap_g = []
    for i in range(0, len(ids), batch):
        lens = lengths[i:i + batch]
        l, g = sessions["text_encoder"].run(None, {"ids": ids[i:i + batch, :lens.max()], "lengths": lens})
        cap_l[i:i + batch, :l.shape[1]] = l
        cap_g.append(g)
    return (np.concatenate(img_l), np.concatenate(img_g)), (cap_l, np.concatenate(cap_g), lengths)


def score_encoded(similarity, images, captions, tile_images: int = 64, tile_captions: int = 16,
                  progress: bool = True) -> np.ndarray:
    """(n, m) scores in tiles; captions sorted by length so each tile is cut to its longest caption."""
    img_l, img_g = images
    cap_l, cap_g, lengths = captions
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(img_l), len(order)), np.float32)
    steps = [(i, j) for i in range(0, len(img_l), tile_images) for j in range(0, len(order), tile_captions)]
    for i, j in tqdm(steps, desc="scoring tiles", disable=not progress, leave=False):
        cols = order[j:j + tile_captions]
        lmax = int(lengths[cols].max())
        out[i:i + tile_images, cols] = similarity.run(None, {
            "img_locals": img_l[i:i + tile_images], "img_global": img_g[i:i + tile_images],
            "cap_locals": np.ascontiguousarray(cap_l[cols, :lmax]), "cap_global": cap_g[cols],
            "cap_lengths": lengths[cols]})[0]
    return out


def score_split(sessions: dict, vocab: Vocabulary, split, max_len: int, progress: bool = True) -> np.ndarray:
    images, captions = encode_split(sessions, vocab, split, max_len)
    return score_encoded(sessions["similarity"], images, captions, progress=progress)


def recall_delta(variant: dict, reference: dict, vocab: Vocabulary, split, max_len: int,
                 progress: bool = True) -> dict:
    """Recall of both session sets on split and variant - reference for every metric."""
    ref = metrics.recall(score_split(reference, vocab, split, max_len, progress), split.caption_image)
    var = metrics.recall(score_split(variant, vocab, split, max_len, progress), split.caption_image)
    return {"reference": ref, "variant": var, "delta": {k: var[k] - ref[k] for k in ref}}
