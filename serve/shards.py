"""Shards: parts of one collection, each searched on its own; their top-k lists merged into one.

A shard is any GallerySource the Retriever searches: rows [start, stop) of an in-memory v1
gallery (labels: gallery positions), or one format-2 gallery folder (labels: its ids). Each shard
does its own first stage (k' of *its* items) and its own rerank through Retriever.search_text, so
merged results equal what one process gives: exact search is the same top-k; two-stage search is
the top-k of a rerank of the union of the shards' shortlists. Ties keep the single-process order:
by shard (shards are consecutive row ranges), then by the shard's own order (smaller row first).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from kidrr.errors import InputError
from kidrr.runtime import CaptionIndex, Gallery


@dataclass(frozen=True)
class EncodedQuery:
    """One encoded caption and what to search for: words (L, D), global (D,), k, k' (None: exact)."""
    words: np.ndarray
    global_: np.ndarray
    k: int
    shortlist: int | None = None


@dataclass(frozen=True)
class ShardSpec:
    """Where a shard's items live: rows [start, stop) of a v1 .npz gallery file, or a format-2 folder."""
    path: str
    start: int | None = None
    stop: int | None = None

    @property
    def on_disk(self) -> bool:
        return self.start is None

    def open(self, retriever, whole: Gallery | None = None):
        """The shard's GallerySource (verified against the retriever's bundle)."""
        if self.on_disk:
            from kidrr.gallery import open_gallery     # format-2 galleries: only when a shard is one
            gallery = open_gallery(self.path, bundle_id=retriever.bundle_id, dim=retriever.planner.dim)
            gallery.load_indexes()                     # checksum any ANN index now, not on a first query
            return gallery
        whole = whole if whole is not None else retriever.load_gallery(self.path)
        if (self.start, self.stop) == (0, len(whole)):
            return whole
        return Gallery(np.array(whole.locals[self.start:self.stop]), np.array(whole.globals[self.start:self.stop]),
                       whole.bundle_id)                # copies: a shard outlives the whole


def split_rows(size: int, shards: int) -> list:
    """[(start, stop)] of `shards` contiguous, near-equal row ranges covering 0..size."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise InputError(f"shards must be an integer >= 1, got {shards!r}")
    if shards > size:
        raise InputError(f"cannot cut a gallery of {size} items into {shards} shards; use at most {size}")
    edges = np.linspace(0, size, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def is_v1_file(path: str) -> bool:
    return os.path.isfile(path)


def queries_from_index(index: CaptionIndex, ks, shortlists) -> list:
    """An encoded batch (CaptionIndex, sorted by length) -> EncodedQuery per caption, in caller order."""
    out: list = [None] * len(index)
    for row in range(len(index)):
        original = int(index.order[row])
        words = index.words[index.starts[row]:index.starts[row + 1]]
        out[original] = EncodedQuery(words, index.globals[row], int(ks[original]), shortlists[original])
    return out


def _index_of(queries: list, bundle_id: str) -> CaptionIndex:
    lengths = np.array([len(q.words) for q in queries], dtype=np.int64)
    padded = np.zeros((len(queries), int(lengths.max()), queries[0].words.shape[1]), dtype=np.float32)
    for i, q in enumerate(queries):
        padded[i, :len(q.words)] = q.words
    return CaptionIndex.from_encoded(padded, np.stack([q.global_ for q in queries]), lengths, bundle_id)


class ShardSearcher:
    """Searches one shard for encoded captions with the Retriever (its first stage and rerank)."""

    def __init__(self, retriever, source, offset: int | None = None):
        self.retriever, self.source = retriever, source
        self.offset = offset              # in-memory rows: labels become gallery positions offset + row

    def __len__(self) -> int:
        return len(self.source)

    def search(self, queries: list) -> list:
        """[EncodedQuery] -> per query [(label, score)] best first, at most k of them. Queries with the
        same k and k' are searched together (one scoring pass for exact search)."""
        n = len(self.source)
        results: list = [None] * len(queries)
        groups: dict = {}
        for i, q in enumerate(queries):
            groups.setdefault((min(q.k, n), q.shortlist), []).append(i)
        for (k, kp), members in groups.items():
            index = _index_of([queries[i] for i in members], self.source.bundle_id)
            found = self.retriever.search_text(index, k, gallery=self.source, shortlist=kp)
            for i, hits in zip(members, found):
                results[i] = hits if self.offset is None else [(self.offset + p, s) for p, s in hits]
        return results


def merge_top_k(per_shard: list, k: int) -> list:
    """Per-shard [(label, score)] lists, in shard order -> the best k; ties: earlier shard, then its order."""
    keyed = [(-s, shard, rank, label) for shard, hits in enumerate(per_shard) for rank, (label, s) in enumerate(hits)]
    keyed.sort(key=lambda x: x[:3])
    return [(label, -neg) for neg, _, _, label in keyed[:k]]
