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
import threading
import time
from dataclasses import dataclass

import numpy as np

from kidrr.errors import InputError, KidrrError
from kidrr.runtime import CaptionIndex, Gallery


@dataclass(frozen=True)
class EncodedQuery:
    """One encoded caption and what to search for: words (L, D), global (D,), k, k' (None: exact),
    a metadata filter (canonical JSON text), a dedup threshold, and how a shard treats a filter field
    it lacks ("error", or "none" when other shards may have it)."""
    words: np.ndarray
    global_: np.ndarray
    k: int
    shortlist: int | None = None
    where: str | None = None
    dedup: float | None = None
    unknown: str = "error"


@dataclass(frozen=True)
class ShardSpec:
    """Where a shard's items live: rows [start, stop) of a v1 .npz gallery file, or a format-2 folder."""
    path: str
    start: int | None = None
    stop: int | None = None

    @property
    def on_disk(self) -> bool:
        return self.start is None

    def open(self, retriever, whole: Gallery | None = None, previous=None):
        """The shard's GallerySource (verified against the retriever's bundle). previous: the snapshot
        this one replaces, whose ANN indexes are reused where the segment is the same."""
        if self.on_disk:
            from kidrr.gallery import open_gallery     # format-2 galleries: only when a shard is one
            gallery = open_gallery(self.path, bundle_id=retriever.bundle_id, dim=retriever.planner.dim)
            if previous is not None:
                gallery.adopt_indexes(previous)
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


def manifest_signature(folder: str):
    """What changes when a writer commits a new generation (the manifest is renamed into place)."""
    st = os.stat(os.path.join(folder, "manifest.json"))
    return st.st_ino, st.st_size, st.st_mtime_ns


class ShardSearcher:
    """Searches one shard for encoded captions with the Retriever (its first stage and rerank).

    A format-2 shard (spec given) follows its gallery: at most every check_s seconds, before a
    search, it looks at the manifest and, after a commit, answers from the new generation (items
    removed or added by kidrr gallery are seen within check_s plus one open). If the new generation
    cannot be opened, the last good one keeps answering and `stale` says why (readiness reports it).
    """

    def __init__(self, retriever, source, offset: int | None = None, spec: ShardSpec | None = None,
                 check_s: float = 1.0):
        self.retriever, self.source = retriever, source
        self.offset = offset              # in-memory rows: labels become gallery positions offset + row
        self.spec, self.check_s, self.stale = spec if spec is not None and spec.on_disk else None, check_s, None
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._signature = None
        if self.spec is not None:
            try:
                self._signature = manifest_signature(self.spec.path)
            except OSError:
                pass

    def __len__(self) -> int:
        return len(self.source)

    def refresh(self, force: bool = False) -> None:
        if self.spec is None or (not force and time.monotonic() - self._checked < self.check_s):
            return
        with self._lock:
            if not force and time.monotonic() - self._checked < self.check_s:
                return
            self._checked = time.monotonic()
            try:
                signature = manifest_signature(self.spec.path)
                if signature != self._signature:
                    self.source = self.spec.open(self.retriever, previous=self.source)
                    self._signature = signature
                self.stale = None
            except (KidrrError, OSError) as exc:
                self.stale = f"gallery {self.spec.path} changed but its new generation cannot be opened ({exc})"

    def search(self, queries: list) -> list:
        """[EncodedQuery] -> per query [(label, score)] best first, at most k of them. Queries with the
        same k and k' are searched together (one scoring pass for exact search)."""
        self.refresh()
        source = self.source              # one snapshot for the whole call, whatever a refresh does meanwhile
        n = len(source)
        if n == 0:                        # every item removed: this shard has nothing to add to a merge
            return [[] for _ in queries]
        results: list = [None] * len(queries)
        groups: dict = {}
        for i, q in enumerate(queries):
            groups.setdefault((min(q.k, n), q.shortlist, q.where, q.dedup, q.unknown), []).append(i)
        for (k, kp, where, dedup, unknown), members in groups.items():
            index = _index_of([queries[i] for i in members], source.bundle_id)
            found = self.retriever.search_text(index, k, gallery=source, shortlist=kp,
                                               where=compile_for(source, where, unknown), dedup=dedup)
            for i, hits in zip(members, found):
                results[i] = hits if self.offset is None else [(self.offset + p, s) for p, s in hits]
        return results


    def global_of(self, label):
        """The stored global (D,) of the item labelled `label` in answers (a format-2 id, or a v1 gallery
        position), or None when this shard does not hold it."""
        self.refresh()
        source = self.source
        if self.offset is None:
            row = source.find([label]).get(label) if isinstance(label, str) else None
        else:
            row = label - self.offset if isinstance(label, int) and 0 <= label - self.offset < len(source) else None
        return None if row is None else source.gather(np.array([row], dtype=np.int64))[1][0]

    def similar(self, global_: np.ndarray, k: int, where: str | None, dedup: float | None, unknown: str,
                exclude=None) -> list:
        """[(label, score)] of the items most like a global (their globals' cosine), best first."""
        self.refresh()
        source = self.source
        if len(source) == 0:
            return []
        skip = None
        if exclude is not None:
            skip = [exclude] if self.offset is None else [exclude - self.offset]
        hits = self.retriever.search_similar(global_, min(k, len(source)), gallery=source,
                                             where=compile_for(source, where, unknown), dedup=dedup, exclude=skip)
        return hits if self.offset is None else [(self.offset + p, s) for p, s in hits]


def compile_for(source, where: str | None, unknown: str):
    """A filter (JSON text) compiled for one shard's snapshot; InputError for a gallery without metadata."""
    if where is None:
        return None
    if not hasattr(source, "compile_filter"):
        raise InputError("this service's gallery is a v1 .npz file, which holds no metadata; filters need "
                         "format-2 gallery folders (kidrr index, kidrr gallery)")
    return source.compile_filter(where, unknown=unknown)


def merge_top_k(per_shard: list, k: int) -> list:
    """Per-shard [(label, score)] lists, in shard order -> the best k; ties: earlier shard, then its order."""
    keyed = [(-s, shard, rank, label) for shard, hits in enumerate(per_shard) for rank, (label, s) in enumerate(hits)]
    keyed.sort(key=lambda x: x[:3])
    return [(label, -neg) for neg, _, _, label in keyed[:k]]
