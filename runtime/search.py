"""Ranking: top-k of a score row, and the first stage of two-stage search (globals' dot product)."""
from __future__ import annotations

import numpy as np

from kidrr.errors import InputError


def check_k(k, size: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"k must be an integer, got {type(k).__name__}")
    if size == 0:
        raise InputError(f"the {what} is empty; index some items before searching")
    if k <= 0 or k > size:
        raise InputError(f"k must be in 1..{size} (the {what} holds {size} items), got {k}")
    return int(k)


def check_shortlist(shortlist, k: int, size: int):
    """None: exact search. Otherwise k' with k <= k'; k' >= size also means exact."""
    if shortlist is None:
        return None
    if isinstance(shortlist, bool) or not isinstance(shortlist, (int, np.integer)):
        raise InputError(f"shortlist (k') must be an integer or None, got {type(shortlist).__name__}")
    if shortlist < k:
        raise InputError(f"shortlist k'={shortlist} is smaller than k={k}; k' must be >= k")
    return None if shortlist >= size else int(shortlist)


def top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> list:
    """[(index, score)] best first; ties broken by the smaller index (deterministic)."""
    scores = np.asarray(scores)
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        # argpartition may cut through a tie at the k-th score: pull in every tied candidate.
        part = np.flatnonzero(scores >= scores[part].min())
    else:
        part = np.arange(len(scores))
    order = part[np.lexsort((part, -scores[part]))][:k]
    labels = order if ids is None else ids[order]
    return [(int(i), float(scores[j])) for i, j in zip(labels, order)]


def shortlist_rows(query_globals: np.ndarray, item_globals: np.ndarray, size: int) -> np.ndarray:
    """(q, size) indices of the items whose globals have the largest dot product with each query.

    One matrix product for all queries; the order within a row is unspecified (the rerank sorts).
    """
    sims = query_globals @ item_globals.T
    return np.argpartition(-sims, size - 1, axis=1)[:, :size]


DEDUP_POOL = 4          # with dedup, 4 k candidates (at least 32) are ranked, then collapsed to k
DEDUP_POOL_MIN = 32


def check_dedup(dedup):
    """None (no collapsing) or a globals cosine threshold in (0, 1]."""
    if dedup is None:
        return None
    if isinstance(dedup, bool) or not isinstance(dedup, (int, float, np.floating, np.integer)) \
            or not 0 < float(dedup) <= 1:
        raise InputError(f"dedup must be a cosine threshold in (0, 1] (e.g. 0.95) or None, got {dedup!r}")
    return float(dedup)


def dedup_pool(k: int, shortlist: int | None) -> int:
    """Candidates ranked before near-duplicates are collapsed: 4 k (at least 32), within the shortlist."""
    pool = max(DEDUP_POOL * k, DEDUP_POOL_MIN)
    return pool if shortlist is None else max(k, min(pool, shortlist))


def collapse(globals_: np.ndarray, threshold: float, k: int) -> list:
    """Indices of the candidates kept, best first: a candidate whose global has a dot product >=
    threshold with an already kept one is its near-duplicate and is left out; at most k kept."""
    g = np.asarray(globals_, dtype=np.float32)
    kept: list = []
    for i in range(len(g)):
        if kept and float((g[kept] @ g[i]).max()) >= threshold:
            continue
        kept.append(i)
        if len(kept) == k:
            break
    return kept


def compile_where(gallery, where):
    """A metadata filter compiled against this gallery (None for none). Only format-2 galleries,
    whose items carry metadata, can be filtered."""
    if where is None:
        return None
    if hasattr(where, "masks"):            # compiled already
        return where
    compile_ = getattr(gallery, "compile_filter", None)
    if compile_ is None:
        raise InputError(f"a {type(gallery).__name__} has no metadata to filter on; filters need a format-2 "
                         f"gallery (kidrr.gallery, made by kidrr index or kidrr gallery)")
    return compile_(where)
