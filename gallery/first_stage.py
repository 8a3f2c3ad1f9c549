"""The first stage: the k' items whose globals have the largest dot product with each query.

Exact: blocked matrix products over the memory-mapped globals (the reference; memory stays one
block). Approximate: a faiss index per segment (IVF-Flat or HNSW-Flat, inner product), read
with IO_FLAG_MMAP so its vectors are file-backed pages, not anonymous memory.
"""
from __future__ import annotations

import math

import numpy as np

from kidrr.errors import DataError, InputError

EXACT_BLOCK_ROWS = 65536


IVF_TRAIN_PER_LIST = 40    # k-means training points per list (faiss warns below 39)
IVF_TRAIN_ITERATIONS = 10  # faiss' default is 25; the lists only route the search, 10 is plenty


def ivf_nlist(rows: int) -> int:
    """2 sqrt(n) lists (2,000 at 1M): at least 16, at most rows / 40 so k-means has enough points per list.
    Fewer lists than faiss' 4-16 sqrt(n) keep training to a minute on two cores; nprobe makes up for it."""
    return int(max(1, min(max(16, 2 * math.sqrt(rows)), rows // IVF_TRAIN_PER_LIST)))


def default_nprobe(nlist: int) -> int:
    # 1/32 of the lists, at least 16 (1/32 of the items scanned: ~1 ms at 1M); `kidrr bench scale`
    # measures the final top-10 overlap with the exact first stage it gives (docs/gallery.md).
    return int(min(nlist, max(16, nlist // 32)))


HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


def build_index(globals_: np.ndarray, method: str, seed: int = 0, progress=None):
    """A faiss index over one segment's globals (row i -> faiss id i) and its parameters."""
    import faiss
    n, d = globals_.shape
    if method == "ivf":
        nlist = ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = IVF_TRAIN_ITERATIONS
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))
        index.train(np.ascontiguousarray(globals_[sample], dtype=np.float32))
        params = {"nlist": nlist}
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    else:
        raise InputError(f"unknown ANN method {method!r}; choose ivf or hnsw")
    step = 50_000
    for start in range(0, n, step):
        index.add(np.ascontiguousarray(globals_[start:start + step], dtype=np.float32))
        if progress is not None:
            progress.update(min(step, n - start))
    return index, params


def serialize(index) -> bytes:
    import faiss
    return faiss.serialize_index(index).tobytes()


def read_index(path: str, shown: str | None = None):
    import faiss
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise DataError(f"faiss cannot read {shown or path} ({str(exc).splitlines()[0][:200]}); rebuild it with "
                        f"`kidrr gallery compact`") from exc


INDEX_CLASSES = {"ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat"}
CHECK_SAMPLE_ROWS = 3


def check_index(index, method: str, params: dict, globals_: np.ndarray, path: str) -> None:
    """DataError unless index is this segment's: its class, metric, size, dimension and parameters,
    and a few of its stored vectors, equal what the manifest and the segment's globals say. A hash
    in the manifest only proves the file is the one recorded, not that it belongs to this segment."""
    import faiss
    rows, dim = globals_.shape

    def bad(what):
        return DataError(f"{path}: {what}; the index does not belong to this segment. Rebuild it with "
                         f"`kidrr gallery compact`, or search with --first-stage exact")
    if type(index).__name__ != INDEX_CLASSES[method]:
        raise bad(f"a faiss {type(index).__name__}, the manifest says {method} ({INDEX_CLASSES[method]})")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise bad("its metric is not inner product")
    if index.ntotal != rows or index.d != dim:
        raise bad(f"it holds {index.ntotal} vectors of {index.d} dimensions, the segment {rows} of {dim}")
    if method == "ivf":
        got = {"nlist": int(index.nlist)}
    else:
        got = {"M": int(index.hnsw.nb_neighbors(1)), "efConstruction": int(index.hnsw.efConstruction)}
    if got != params:
        raise bad(f"its parameters are {got}, the manifest says {params}")
    sample = sorted({0, rows // 2, rows - 1})[:CHECK_SAMPLE_ROWS]
    want = np.ascontiguousarray(globals_[sample], dtype=np.float32)
    if method == "hnsw":
        stored = np.stack([faiss.downcast_index(index.storage).reconstruct(int(r)) for r in sample])
        same = np.array_equal(stored, want)
    else:
        # Search each sampled row for itself alone: a few nearest lists hold it, and its stored
        # vector's product with the row is the row's squared norm.
        same = True
        for r, q in zip(sample, want):
            sp = faiss.SearchParametersIVF(nprobe=int(min(index.nlist, 8)), sel=faiss.IDSelectorRange(r, r + 1))
            sims, ids = index.search(q[None], 1, params=sp)
            norm = float(q @ q)
            same &= bool(ids[0, 0] == r and abs(float(sims[0, 0]) - norm) <= 1e-4 * max(1.0, norm))
    if not same:
        raise bad(f"its stored vectors differ from the segment's globals (rows {sample})")


def check_params(method: str, params) -> str | None:
    """What is wrong with an ANN entry's params for method (None when they are exactly what build_index writes)."""
    keys = {"ivf": {"nlist"}, "hnsw": {"M", "efConstruction"}}[method]
    if not isinstance(params, dict) or set(params) != keys:
        return f"{method} params must be exactly {sorted(keys)}, got {params!r}"
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 30 for v in params.values()):
        return f"{method} params must be integers in 1..{1 << 30}, got {params!r}"
    return None


def live_selector(dead: np.ndarray):
    """A faiss IDSelector that skips the removed rows (tombstones) inside the index's scan, so a
    search returns `size` live rows without asking for `size + removed` and filtering after."""
    import faiss
    batch = faiss.IDSelectorBatch(np.ascontiguousarray(dead, dtype=np.int64))
    selector = faiss.IDSelectorNot(batch)
    selector.keep_alive = batch     # the Not selector holds a raw pointer to the batch
    return selector


def mask_selector(keep: np.ndarray):
    """A faiss IDSelector letting through the rows where keep is True (a bitmap: one bit per row)."""
    import faiss
    bits = np.packbits(np.asarray(keep, dtype=bool), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bits))
    selector.keep_alive = bits      # the selector holds a raw pointer to the bits
    return selector


def exact_subset(queries: np.ndarray, globals_: np.ndarray, rows: np.ndarray, size: int):
    """(sims, local rows) of the `size` best of the given rows per query, by an exact scan of them only."""
    sims_all, rows_all = None, None
    for b0 in range(0, len(rows), EXACT_BLOCK_ROWS):
        part = rows[b0:b0 + EXACT_BLOCK_ROWS]
        sims, at = exact_block(queries, globals_[part], size)
        sims_all, rows_all = merge(sims_all, rows_all, sims, part[at], size)
    return sims_all, rows_all


def search_index(index, method: str, params: dict, queries: np.ndarray, size: int, nprobe=None, ef=None,
                 selector=None):
    """(sims, rows) of the `size` best rows per query (rows `selector` lets through, if given); rows -1
    where the index found fewer."""
    import faiss
    for name, value in (("nprobe", nprobe), ("ef", ef)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise InputError(f"{name} must be an integer >= 1 (or None for the default), got {value!r}")
    extra = {} if selector is None else {"sel": selector}
    if method == "ivf":
        sp = faiss.SearchParametersIVF(nprobe=int(nprobe or default_nprobe(params["nlist"])), **extra)
    else:
        sp = faiss.SearchParametersHNSW(efSearch=int(max(ef or 0, 2 * size, 64)), **extra)
    sims, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), size, params=sp)
    return sims, rows


def products(queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    """queries @ block.T. One query: numpy's own loop (einsum, one thread), not BLAS: OpenBLAS runs a
    matrix-vector product of more than ~1,000 rows of D=256 on all its threads, and waking them cost
    10-30 ms a query on the shared 2-core machine against 0.1-0.2 ms in one thread (4,000 rows;
    measured in docs/gallery.md: the 1% filter's exact scan of its matches)."""
    if len(queries) == 1:
        return np.einsum("qd,nd->qn", queries, block)
    return queries @ block.T


def exact_block(queries: np.ndarray, block: np.ndarray, size: int, dead: np.ndarray | None = None):
    """(sims, local rows) of the `size` best rows of one block per query (dead rows excluded)."""
    sims = products(queries, np.asarray(block, dtype=np.float32))
    if not np.isfinite(sims).all():
        raise DataError("a gallery global vector holds NaN or inf; run `kidrr gallery verify`")
    if dead is not None and len(dead):
        sims[:, dead] = -np.inf
    size = min(size, sims.shape[1])
    part = np.argpartition(-sims, size - 1, axis=1)[:, :size]
    return np.take_along_axis(sims, part, axis=1), part


def merge(best_sims, best_rows, sims, rows, size):
    """Keep the `size` largest of two (q, *) candidate sets (rows -1 mean none)."""
    if best_sims is None:
        s, r = sims, rows
    else:
        s, r = np.concatenate([best_sims, sims], axis=1), np.concatenate([best_rows, rows], axis=1)
    s = np.where(r < 0, -np.inf, s)
    if s.shape[1] > size:
        part = np.argpartition(-s, size - 1, axis=1)[:, :size]
        s, r = np.take_along_axis(s, part, axis=1), np.take_along_axis(r, part, axis=1)
    return s, r
