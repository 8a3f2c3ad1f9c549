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
