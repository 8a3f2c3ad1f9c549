"""Shards: parts of one gallery, each searched on its own; their top-k lists merged into one.

A shard owns a contiguous range of gallery rows [start, stop). It does its own first stage (the
globals' shortlist of k' of *its* items) and its own rerank, and returns gallery positions (start +
row), so results from any number of shards merge into the list one process would give: exact search
is the same top-k; two-stage search is the top-k of a rerank of the union of the shards' shortlists.
Ties break by the smaller gallery position, as kidrr.runtime.search.top_k does in one process.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kidrr.errors import InputError
from kidrr.runtime import CaptionIndex, Gallery
from kidrr.runtime.search import shortlist_rows, top_k


@dataclass(frozen=True)
class EncodedQuery:
    """One encoded caption and what to search for: words (L, D), global (D,), k, k' (None: exact)."""
    words: np.ndarray
    global_: np.ndarray
    k: int
    shortlist: int | None = None


def split_rows(size: int, shards: int) -> list:
    """[(start, stop)] of `shards` contiguous, near-equal row ranges covering 0..size."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise InputError(f"shards must be an integer >= 1, got {shards!r}")
    if shards > size:
        raise InputError(f"cannot cut a gallery of {size} items into {shards} shards; use at most {size}")
    edges = np.linspace(0, size, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def shard_of(gallery: Gallery, start: int, stop: int) -> Gallery:
    """Rows start..stop of a gallery as a gallery of their own (copies: a shard outlives the whole)."""
    return Gallery(np.array(gallery.locals[start:stop]), np.array(gallery.globals[start:stop]),
                   gallery.bundle_id)


def queries_from_index(index: CaptionIndex, ks, shortlists) -> list:
    """An encoded batch (CaptionIndex, sorted by length) -> EncodedQuery per caption, in caller order."""
    out = [None] * len(index)
    for row in range(len(index)):
        original = int(index.order[row])
        words = index.words[index.starts[row]:index.starts[row + 1]]
        out[original] = EncodedQuery(words, index.globals[row], int(ks[original]), shortlists[original])
    return out


class ShardSearcher:
    """Searches one shard for encoded captions; any retriever on the shard's bundle does the scoring."""

    def __init__(self, retriever, gallery: Gallery, start: int = 0):
        if gallery.bundle_id != retriever.bundle_id:
            raise InputError("the shard's gallery was encoded by another bundle than the retriever's")
        self.retriever = retriever
        self.gallery = gallery
        self.start = int(start)

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, queries: list) -> list:
        """[EncodedQuery] -> per query [(gallery position, score)] best first, at most k of them."""
        n = len(self.gallery)
        results: list = [None] * len(queries)
        exact = [i for i, q in enumerate(queries) if q.shortlist is None or q.shortlist >= n]
        if exact:
            index = self._index([queries[i] for i in exact])
            scores = self.retriever.score(self.gallery, index)          # (n, q): all exact queries at once
            for col, i in enumerate(exact):
                results[i] = self._positions(top_k(scores[:, col], min(queries[i].k, n)))
        staged = [i for i in range(len(queries)) if results[i] is None]
        if staged:
            globs = np.stack([queries[i].global_ for i in staged])
            for kp in sorted({queries[i].shortlist for i in staged}):
                group = [j for j, i in enumerate(staged) if queries[i].shortlist == kp]
                rows = shortlist_rows(globs[group], self.gallery.globals, kp)
                for j, row in zip(group, rows):
                    q = queries[staged[j]]
                    idx = np.sort(row)
                    s = self.retriever.runner.score(self.gallery.locals[idx], self.gallery.globals[idx],
                                                    q.words[None], q.global_[None], np.array([len(q.words)]))
                    results[staged[j]] = self._positions(top_k(s[:, 0], min(q.k, len(idx)), ids=idx))
        return results

    def _index(self, queries: list) -> CaptionIndex:
        lengths = np.array([len(q.words) for q in queries], dtype=np.int64)
        dim = queries[0].words.shape[1]
        padded = np.zeros((len(queries), int(lengths.max()), dim), dtype=np.float32)
        for i, q in enumerate(queries):
            padded[i, :len(q.words)] = q.words
        return CaptionIndex.from_encoded(padded, np.stack([q.global_ for q in queries]), lengths,
                                         self.gallery.bundle_id)

    def _positions(self, hits: list) -> list:
        return [(self.start + i, s) for i, s in hits]


def merge_top_k(per_shard: list, k: int) -> list:
    """Per-shard [(position, score)] lists -> the best k overall; ties by the smaller position."""
    hits = [h for hits in per_shard for h in hits]
    hits.sort(key=lambda h: (-h[1], h[0]))
    return hits[:k]
