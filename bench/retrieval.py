"""Full retrieval (rank the whole evaluation set both ways) and the two-stage sweep, per protocol fold."""
from __future__ import annotations

import numpy as np

from kidrr import metrics
from kidrr.data import CAPTIONS_PER_IMAGE

from .timing import timed


def fold_split(split, start: int, stop: int):
    return split.subset(stop - start, start)


def full_retrieval(rt, split, protocol: str, progress=lambda msg: None) -> tuple[dict, list]:
    """Encode, score and rank every fold exhaustively; (result, [(gallery, captions) per fold]).

    Wall time per fold = encode images + encode captions (tokenisation included) + score all
    pairs + sort every image's captions and every caption's images.
    """
    folds = metrics.folds(len(split.images), protocol)
    parts = {"image_encode_s": 0.0, "caption_encode_s": 0.0, "score_s": 0.0, "rank_s": 0.0}
    recalls, encoded = [], []
    pairs = 0
    for f, (start, stop) in enumerate(folds):
        sub = fold_split(split, start, stop)
        progress(f"full retrieval, fold {f + 1}/{len(folds)}: encoding")
        gallery, t_img = timed(lambda: rt.encode_images(sub.images))
        captions, t_cap = timed(lambda: rt.encode_texts(sub.captions))
        progress(f"full retrieval, fold {f + 1}/{len(folds)}: scoring {len(gallery)}x{len(captions)}")
        scores, t_score = timed(lambda: rt.score(gallery, captions))
        _, t_rank = timed(lambda: (np.argsort(-scores, axis=1, kind="stable"),
                                   np.argsort(-scores, axis=0, kind="stable")))
        for key, secs in zip(parts, (t_img, t_cap, t_score, t_rank)):
            parts[key] += secs
        pairs += scores.size
        recalls.append(metrics.recall(scores, sub.caption_image))
        encoded.append((gallery, captions, sub))
    result = {"protocol": protocol, "folds": [list(f) for f in folds], "pairs": pairs,
              "wall_s": sum(parts.values()), **parts, "score_pairs_per_s": pairs / parts["score_s"],
              "recall": metrics.average(recalls)}
    return result, encoded


def _recall_from_hits(t2i_hits, i2t_hits, caption_image) -> dict:
    """R@1/5/10 and rSum from top-k lists (a match beyond the list counts as missed)."""
    out = {}
    t2i_rank = [next((r for r, (i, _) in enumerate(h) if i == caption_image[j]), np.inf)
                for j, h in enumerate(t2i_hits)]
    i2t_rank = [next((r for r, (c, _) in enumerate(h) if c // CAPTIONS_PER_IMAGE == i), np.inf)
                for i, h in enumerate(i2t_hits)]
    for name, ranks in (("i2t", np.asarray(i2t_rank)), ("t2i", np.asarray(t2i_rank))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * float(np.mean(ranks < k))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def two_stage_sweep(rt, encoded: list, shortlists: list, exhaustive: dict, progress=lambda msg: None) -> list:
    """For each k': rank both ways by the globals' dot product, rerank the top k' with the full scorer.

    Time covers the search calls only (queries and items already encoded), the same scope as the
    exhaustive score_s it is compared with.
    """
    rows = []
    for kp in shortlists:
        progress(f"two-stage k'={kp}")
        k = min(10, kp)
        t2i_s = i2t_s = 0.0
        recalls = []
        for gallery, captions, sub in encoded:
            if kp >= min(len(gallery), len(captions)):
                continue  # k' covers a whole side: that is exhaustive search, not a shortlist
            t2i, secs = timed(lambda: rt.search_text(captions, k, gallery=gallery, shortlist=kp))
            t2i_s += secs
            i2t, secs = timed(lambda: rt.search_image(gallery, k, captions=captions, shortlist=kp))
            i2t_s += secs
            recalls.append(_recall_from_hits(t2i, i2t, sub.caption_image))
        if not recalls:
            continue
        rec = metrics.average(recalls)
        total = t2i_s + i2t_s
        rows.append({"shortlist": kp, "t2i_s": t2i_s, "i2t_s": i2t_s, "total_s": total,
                     "speedup_vs_exhaustive": exhaustive["score_s"] / total, "recall": rec,
                     "delta_rsum": rec["rsum"] - exhaustive["recall"]["rsum"]})
    return rows
