"""Near-duplicate groups of a gallery: items whose globals' cosine is at least a threshold.

Each live item's few nearest neighbours come from the first stage (the segments' ANN indexes,
or exact scans of small segments), not from all n^2 pairs; pairs above the threshold are joined
into groups (connected components: A~B and B~C put A, B and C in one group).
"""
from __future__ import annotations

import numpy as np

from kidrr.errors import InputError

DEFAULT_THRESHOLD = 0.95
NEIGHBOURS = 8               # neighbours looked at per item (a bigger group still joins through chains)
QUERY_BATCH = 4096


def find_duplicates(gallery, threshold: float = DEFAULT_THRESHOLD, neighbours: int = NEIGHBOURS,
                    method: str | None = None, progress=None) -> list:
    """[[id, ...], ...]: groups of two or more near-identical live items, each in row order, the
    groups by their first row."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise InputError(f"threshold must be a cosine in (0, 1], got {threshold!r}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or not 1 <= neighbours <= 100:
        raise InputError(f"neighbours must be an integer in 1..100, got {neighbours!r}")
    parent: dict = {}

    def root(x):
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for seg in gallery.segments:
        live = np.setdiff1d(np.arange(seg.rows), seg.dead)
        for b0 in range(0, len(live), QUERY_BATCH):
            local = live[b0:b0 + QUERY_BATCH]
            queries = np.asarray(seg.globals[local], dtype=np.float32)
            found = gallery.nearest(queries, neighbours + 1, method)
            for row, (rows, sims) in zip((local + seg.start).tolist(), found):
                for other in rows[(sims >= threshold) & (rows != row)].tolist():
                    a, b = root(row), root(other)
                    parent.setdefault(a, a)
                    parent.setdefault(b, b)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            if progress is not None:
                progress.update(len(local))
    groups: dict = {}
    for x in list(parent):
        groups.setdefault(root(x), []).append(x)
    out = []
    for members in sorted(groups.values(), key=min):
        if len(members) > 1:
            out.append(gallery.labels(np.sort(np.array(members, dtype=np.int64))))
    return out
