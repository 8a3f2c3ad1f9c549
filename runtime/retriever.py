"""The runtime's public face: a bundle + a backend -> galleries, caption indexes, scores, search.

Thread-safety contract: a Retriever may be shared by any number of threads. Its runner is
stateless after loading (onnxruntime's session.run and torch inference are thread-safe), galleries
and caption indexes are read-only, and the only mutable state (the tile-plan cache and the
attached gallery / caption index) is behind a lock. Calls from many threads return what serial
calls return. Attaching a new gallery while searches run is allowed: each search uses the index
it read when it started.
"""
from __future__ import annotations

import threading

import numpy as np
from tqdm import tqdm

from kidrr.data import check_features
from kidrr.errors import BundleError, InputError, UnknownItem

from .bundle import load_bundle
from .captions import check_policies, tokenize_captions
from .gallery import CaptionIndex, Gallery, GallerySource
from .runner import load_runner
from .search import (check_dedup, check_k, check_shortlist, collapse, compile_where, dedup_pool, shortlist_rows,
                     top_k)
from .tiling import TilePlanner, score_all, timer

ENCODE_BATCH = 256   # items per encoder call: the encoders are cheap, this only bounds memory
STREAM_TILE_ROWS = 2048   # items read at a time by exhaustive search over a gallery not held in memory


class Retriever:
    def __init__(self, bundle_path: str, backend: str = "ort", threads: int = 0,
                 memory_budget_mb: float = 256.0, tiles: tuple | None = None, on_long: str = "refuse",
                 verify: bool = True, on_unknown: str = "refuse", **backend_options):
        """backend: 'ort' | 'trt' | 'torch'. threads: 0 = the backend's default. tiles=(images, captions)
        fixes the score tile instead of choosing it. on_long: 'refuse' | 'truncate' over-long captions.
        on_unknown: 'refuse' | 'keep' captions with no known word ('keep' is evaluation's policy)."""
        check_policies(on_long, on_unknown)   # a bad policy fails here, not on the first long caption
        self.bundle = load_bundle(bundle_path, verify=verify)
        self.runner = load_runner(backend, self.bundle, threads=threads, **backend_options)
        model = self.bundle.model
        self.feature_size = int(model["feature_size"])
        self.planner = TilePlanner(int(model["embed_size"]), int(model["sim_size"]),
                                   int(memory_budget_mb * 2**20), tiles)
        self.on_long, self.on_unknown = on_long, on_unknown
        self._lock = threading.Lock()
        self._gallery: Gallery | None = None
        self._captions: CaptionIndex | None = None
        self._pre = None   # the preprocessing session, made on first use (bundles with a backbone)

    @property
    def bundle_id(self) -> str:
        return self.bundle.identity

    # ---- encoding --------------------------------------------------------------------------
    def encode_images(self, features) -> Gallery:
        """(n, R, F) float features -> Gallery tagged with this bundle."""
        feats = check_features(features, feature_size=self.feature_size)
        locs, globs = [], []
        for i in range(0, len(feats), ENCODE_BATCH):
            l, g = self.runner.encode_images(feats[i:i + ENCODE_BATCH])
            locs.append(l)
            globs.append(g)
        return Gallery(np.concatenate(locs), np.concatenate(globs), self.bundle_id)

    # ---- pixels in (bundles with a backbone; docs/images.md) ------------------------------------
    def _preprocessor(self):
        if not self.bundle.takes_pixels:
            raise BundleError(f"bundle {self.bundle.path} takes region features, not pixels (it has no "
                              f"backbone); export a checkpoint trained on kidrr features output")
        with self._lock:
            if self._pre is None:
                from kidrr.images.preprocess import Preprocessor
                self._pre = Preprocessor(self.bundle.graph_path("preprocess"), threads=self.runner.threads)
            return self._pre

    def _encode_batches(self, sources, names, strict, batch_size, progress, report, timings=None):
        import time
        from kidrr.images.batch import decode_batch, unique_names
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        pre = self._preprocessor()
        max_pixels = int(self.bundle.image.get("max_pixels") or 0) or None
        keep = unique_names(names, report)
        if strict and len(report):
            name, reason, message = report.skipped[0]
            raise InputError(f"{name}: [{reason}] {message}")
        sources, names = [sources[i] for i in keep], [names[i] for i in keep]
        locs, globs, kept = [], [], []
        with tqdm(total=len(names), desc="encoding images", unit="img", disable=not progress, leave=False) as bar:
            for i in range(0, len(names), batch_size):
                kw = {} if max_pixels is None else {"max_pixels": max_pixels}
                t0 = time.perf_counter()
                batch, ok = decode_batch(sources[i:i + batch_size], names[i:i + batch_size], pre, report,
                                         strict=strict, **kw)
                if batch is not None:
                    t1 = time.perf_counter()
                    features = self.runner.extract_features(batch)
                    t2 = time.perf_counter()
                    l, g = self.runner.encode_images(features)
                    if timings is not None:    # seconds per stage, summed (kidrr bench's breakdown)
                        for stage, dt in (("decode", t1 - t0), ("backbone", t2 - t1),
                                          ("graphs", time.perf_counter() - t2)):
                            timings[stage] = timings.get(stage, 0.0) + dt
                    locs.append(l)
                    globs.append(g)
                    kept.extend(ok)
                bar.update(len(names[i:i + batch_size]))
        if not kept:
            raise InputError(f"none of the {len(names)} image(s) could be encoded: "
                             + "; ".join(m for _, _, m in report.skipped[:3]))
        return Gallery(np.concatenate(locs), np.concatenate(globs), self.bundle_id, names=tuple(kept))

    def encode_image_files(self, paths, names=None, strict: bool = False, batch_size: int = 32,
                           progress: bool = False, report=None, timings: dict | None = None) -> Gallery:
        """Image files -> Gallery whose ids are the names (default: the paths as given).

        A file that cannot be used is left out (no row) and listed in report (a
        kidrr.images.batch.SkipReport, if given); strict=True raises at the first one instead.
        """
        from kidrr.images.batch import SkipReport
        paths = [str(p) for p in paths]
        names = list(names) if names is not None else paths
        if len(names) != len(paths):
            raise InputError(f"{len(paths)} paths but {len(names)} names")
        if not paths:
            raise InputError("no image files given")
        return self._encode_batches(paths, names, strict, batch_size, progress,
                                    report if report is not None else SkipReport(), timings)

    def encode_pixels(self, arrays, names=None, strict: bool = True, batch_size: int = 32, report=None) -> Gallery:
        """RGB8 arrays (H, W, 3) uint8, any sizes -> Gallery (ids: names, default '0', '1', ...).

        strict by default: an unusable array is the caller's bug, not a bad file in a folder."""
        from kidrr.images.batch import SkipReport
        arrays = list(arrays)
        if not arrays:
            raise InputError("no images given")
        names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(arrays))]
        if len(names) != len(arrays):
            raise InputError(f"{len(arrays)} arrays but {len(names)} names")
        arrays = [np.asarray(a) for a in arrays]
        return self._encode_batches(arrays, names, strict, batch_size, False,
                                    report if report is not None else SkipReport())

    def encode_texts(self, captions, on_long: str | None = None, on_unknown: str | None = None) -> CaptionIndex:
        """list[str] -> CaptionIndex (sorted by length inside; scores come back in your order)."""
        ids, lengths = tokenize_captions(self.bundle.vocab, captions, self.bundle.max_caption_len,
                                         on_long or self.on_long, on_unknown or self.on_unknown)
        order = np.argsort(lengths, kind="stable")  # similar lengths per batch: less padding to encode
        words, globs = [], []
        for i in range(0, len(ids), ENCODE_BATCH):
            rows = order[i:i + ENCODE_BATCH]
            lmax = int(lengths[rows].max())
            l, g = self.runner.encode_texts(ids[rows, :lmax], lengths[rows])
            words.append(l[np.arange(lmax)[None, :] < lengths[rows][:, None]])   # drop the padding
            globs.append(g)
        return CaptionIndex.from_sorted(np.concatenate(words), np.concatenate(globs), lengths[order], order,
                                        self.bundle_id)

    def load_gallery(self, path: str) -> Gallery:
        """A v1 .npz gallery (format-2 folders: kidrr.gallery.open_gallery, then pass it to search)."""
        return Gallery.load(path, bundle_id=self.bundle_id, dim=self.planner.dim)

    # ---- scoring ---------------------------------------------------------------------------
    def _own(self, item, what: str, kind: type = Gallery):
        """item, checked: its type (kind), its bundle, its vector size, not empty. Scoring needs an
        in-memory Gallery; search takes any GallerySource (a Gallery or a gallery on disk)."""
        if not isinstance(item, kind):
            raise InputError(f"expected a {kind.__name__} as the {what}, got {type(item).__name__}; make one with "
                             f"{'encode_texts' if kind is CaptionIndex else 'encode_images'}()")
        if item.bundle_id != self.bundle_id:
            raise BundleError(f"this {what} was encoded by another bundle ({item.bundle_id[:12]}...), not "
                              f"this one ({self.bundle_id[:12]}...); re-encode it with this retriever")
        dim = item.globals.shape[1] if hasattr(item, "globals") else getattr(item, "dim", None)
        if dim is not None and dim != self.planner.dim:
            raise InputError(f"this {what} holds {dim}-d vectors but the model's embedding is {self.planner.dim}-d")
        if len(item) == 0:
            raise InputError(f"the {what} is empty; encode at least one item")
        return item

    def _captions_arg(self, captions) -> CaptionIndex:
        if isinstance(captions, CaptionIndex):
            return self._own(captions, "caption index", CaptionIndex)
        return self.encode_texts(captions)

    def _plan_for(self, gallery: Gallery, captions: CaptionIndex, force: bool = False):
        regions = gallery.locals.shape[1]

        def plan_for(length, n, m):
            def measure(shape):
                a, b = shape
                total = len(captions)  # the longest captions: a safe upper bound on cost
                cap = captions.padded_locals(max(0, total - b), total)
                return timer(lambda: self.runner.score(gallery.locals[:a], gallery.globals[:a], cap,
                                                       captions.globals[-b:], captions.lengths[-b:]))
            return self.planner.plan(regions, length, len(gallery), len(captions), measure, force=force)
        return plan_for

    def calibrate(self, gallery: Gallery, captions) -> object:
        """Time a few tile shapes on this data now (score() does it by itself only for large jobs)."""
        gallery = self._own(gallery, "gallery")
        captions = self._captions_arg(captions)
        plan_for = self._plan_for(gallery, captions, force=True)
        return plan_for(int(captions.lengths[-1]), len(gallery), len(captions))

    def score(self, gallery: Gallery, captions, progress: bool = False) -> np.ndarray:
        """(n images, m captions) float32 scores; captions: list[str] or a CaptionIndex."""
        gallery = self._own(gallery, "gallery")
        captions = self._captions_arg(captions)
        with tqdm(total=len(gallery) * len(captions), desc="scoring pairs", unit="pair", unit_scale=True,
                  disable=not progress, leave=False) as bar:
            return score_all(self.runner, gallery.locals, gallery.globals, captions,
                             self._plan_for(gallery, captions), progress=bar if progress else None)

    # ---- attached indexes ------------------------------------------------------------------
    def use_gallery(self, gallery: GallerySource) -> None:
        with self._lock:
            self._gallery = self._own(gallery, "gallery", GallerySource)

    def use_captions(self, captions) -> None:
        index = self._captions_arg(captions)
        with self._lock:
            self._captions = index

    def _attached(self, given, attr: str, what: str):
        if given is not None:
            return self._own(given, what, CaptionIndex if attr == "_captions" else GallerySource)
        with self._lock:
            found = getattr(self, attr)
        if found is None:
            raise InputError(f"no {what} to search: pass one, or attach one with use_{attr[1:]}()")
        return found

    # ---- search ----------------------------------------------------------------------------
    def search_text(self, query, k: int, gallery: GallerySource | None = None, shortlist: int | None = None,
                    where=None, dedup: float | None = None):
        """Images for a caption: [(image label, score)] best first (labels: positions in a Gallery, ids in
        a format-2 gallery). A list of captions (or a CaptionIndex) gives one list per query.
        shortlist=k': two-stage (first stage on the globals, then rerank k' read from the gallery).
        where: a metadata filter (docs/gallery.md; format-2 galleries), applied inside the first stage,
        so k results come back whenever k items match. dedup: a globals cosine threshold; an item that
        close to a better-ranked result is left out (near-duplicates collapse to their best item)."""
        gallery = self._attached(gallery, "_gallery", "gallery")
        k = check_k(k, len(gallery), "gallery")
        kp = check_shortlist(shortlist, k, len(gallery))
        where = compile_where(gallery, where)
        dedup = check_dedup(dedup)
        single = isinstance(query, str)
        queries = self._captions_arg([query] if single else query)
        keep = k if dedup is None else dedup_pool(k, kp)     # ranked items a query's answer is cut from
        results = [None] * len(queries)
        if kp is None and isinstance(gallery, Gallery):
            scores = self.score(gallery, queries)           # (n, q) in query order
            for q in range(len(queries)):
                results[q] = top_k(scores[:, q], min(keep, len(gallery)))
        elif kp is None:
            results = self._search_streamed(gallery, queries, min(keep, len(gallery)), where)
        else:
            rows = gallery.shortlist(queries.globals, kp, where=where) if where is not None \
                else gallery.shortlist(queries.globals, kp)  # per query (sorted order): k' rows
            for r in range(len(queries)):
                idx = np.sort(rows[r])
                if not len(idx):                            # the filter keeps no item
                    results[int(queries.order[r])] = []
                    continue
                locs, globs = gallery.gather(idx)           # only the shortlisted rows are read
                s = self.runner.score(locs, globs, queries.padded_locals(r, r + 1),
                                      queries.globals[r:r + 1], queries.lengths[r:r + 1])
                results[int(queries.order[r])] = top_k(s[:, 0], min(keep, len(idx)), ids=idx)
        out = [self._finish(gallery, hits, k, dedup) for hits in results]
        return out[0] if single else out

    @staticmethod
    def _finish(gallery: GallerySource, hits: list, k: int, dedup: float | None) -> list:
        """[(row, score)] best first -> the first k [(label, score)], near-duplicates collapsed if asked."""
        if dedup is not None and len(hits) > 1:
            rows = np.array([r for r, _ in hits], dtype=np.int64)
            hits = [hits[i] for i in collapse(gallery.gather(rows)[1], dedup, k)]
        hits = hits[:k]
        labels = gallery.labels(np.array([r for r, _ in hits], dtype=np.int64)) if hits else []
        return [(lab, float(sc)) for lab, (_, sc) in zip(labels, hits)]

    def _search_streamed(self, gallery: GallerySource, queries: CaptionIndex, k: int, where=None) -> list:
        """Exhaustive search a tile of items at a time, keeping each query's best k (ties: smaller row):
        [(row, score)] per query."""
        best_s = np.empty((len(queries), 0), dtype=np.float32)
        best_r = np.empty((len(queries), 0), dtype=np.int64)
        tiles = gallery.tiles(STREAM_TILE_ROWS) if where is None else gallery.tiles(STREAM_TILE_ROWS, where=where)
        for rows, locs, globs in tiles:
            scores = self.score(Gallery(locs, globs, gallery.bundle_id), queries).T    # (q, tile) query order
            s = np.concatenate([best_s, scores], axis=1)
            r = np.concatenate([best_r, np.broadcast_to(rows, scores.shape)], axis=1)
            keep = np.stack([np.lexsort((r[q], -s[q]))[:k] for q in range(len(s))])
            best_s, best_r = np.take_along_axis(s, keep, axis=1), np.take_along_axis(r, keep, axis=1)
        return [list(zip(best_r[q].tolist(), best_s[q].astype(float).tolist())) for q in range(len(best_s))]

    # ---- query by example ------------------------------------------------------------------
    def search_similar(self, query, k: int, gallery: GallerySource | None = None, where=None,
                       dedup: float | None = None, exclude=None):
        """Images like given images, ranked by the globals' dot product (their cosine: globals are
        l2-normalised). This is the first stage alone (exact or ANN, as for text): similarity.onnx
        scores an image against a caption, so there is no image-image rerank.
        query: a Gallery of encoded query images (encode_image_files / encode_pixels / encode_images),
        or globals (D,) or (q, D). Returns [(label, score)] best first; one list per query, a single
        list for one (D,) vector. exclude: labels to leave out (search_like_id leaves out the item)."""
        gallery = self._attached(gallery, "_gallery", "gallery")
        k = check_k(k, len(gallery), "gallery")
        where = compile_where(gallery, where)
        dedup = check_dedup(dedup)
        if isinstance(query, Gallery):
            single, globs = False, self._own(query, "query gallery", Gallery).globals
        else:
            globs = np.asarray(query)
            single = globs.ndim == 1
            globs = globs[None] if single else globs
            if globs.ndim != 2 or globs.shape[1] != self.planner.dim or not np.issubdtype(globs.dtype, np.floating):
                raise InputError(f"query globals must be float (D,) or (q, D) with D={self.planner.dim}, got "
                                 f"{globs.dtype} {globs.shape}")
            if not np.isfinite(globs).all():
                raise InputError("query globals hold NaN or inf")
        excluded = set(exclude or ())
        size = (k if dedup is None else dedup_pool(k, None)) + len(excluded)
        args = {} if where is None else {"where": where}
        out = []
        for rows, sims in gallery.nearest(globs, min(size, len(gallery)), **args):
            hits = list(zip(rows.tolist(), sims.tolist()))
            if excluded:
                hits = [h for h, lab in zip(hits, gallery.labels(rows)) if lab not in excluded]
            out.append(self._finish(gallery, hits, k, dedup))
        return out[0] if single else out

    def search_like_id(self, item_id, k: int, gallery: GallerySource | None = None, where=None,
                       dedup: float | None = None):
        """Images like an item already in the gallery: its stored global (never re-encoded) against the
        others; the item itself is left out. UnknownItem if the gallery has no such live item."""
        gallery = self._attached(gallery, "_gallery", "gallery")
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
            raise InputError(f"an item id is a string, got {type(item_id).__name__}")
        row = gallery.find([item_id]).get(item_id)
        if row is None:
            raise UnknownItem(f"no item {str(item_id)[:200]!r} in this gallery (removed, or never added); "
                              f"see its ids with `kidrr gallery info --ids` or search by text first")
        query = gallery.gather(np.array([row], dtype=np.int64))[1][0]
        return self.search_similar(query, k, gallery, where=where, dedup=dedup, exclude=[item_id])

    def search_image(self, features, k: int, captions: CaptionIndex | None = None,
                     shortlist: int | None = None):
        """Captions for an image: features (R, F) -> [(caption index, score)]; (q, R, F) or an encoded
        Gallery of queries -> one list each. shortlist=k': two-stage."""
        index = self._attached(captions, "_captions", "caption index")
        k = check_k(k, len(index), "caption index")
        kp = check_shortlist(shortlist, k, len(index))
        if isinstance(features, Gallery):
            single, queries = False, self._own(features, "query gallery", Gallery)
        elif isinstance(features, GallerySource):     # a gallery on disk as queries: read it whole
            parts = list(self._own(features, "query gallery", GallerySource).tiles(STREAM_TILE_ROWS))
            single = False
            queries = Gallery(np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
                              features.bundle_id)
        else:
            arr = np.asarray(features)
            single = arr.ndim == 2
            queries = self.encode_images(arr[None] if single else arr)
        if kp is None:
            scores = self.score(queries, index)             # (q, m) in caption order
            results = [top_k(row, k) for row in scores]
        else:
            rows = shortlist_rows(queries.globals, index.globals, kp)
            results = []
            for q in range(len(queries)):
                sub = index.take(rows[q])
                s = self.runner.score(queries.locals[q:q + 1], queries.globals[q:q + 1], sub.padded_locals(),
                                      sub.globals, sub.lengths)
                results.append(top_k(s[0], k, ids=sub.order))
        return results[0] if single else results

    def close(self) -> None:
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_bundle(path: str, backend: str = "ort", threads: int = 0, **options) -> Retriever:
    """Load and verify a bundle and start a backend on it; see Retriever for the options."""
    return Retriever(path, backend=backend, threads=threads, **options)
