"""Engines answer the API's calls; the FastAPI app (api.py) only validates, routes and reports.

`Engine` holds what every engine does in the front process: checking and encoding captions,
image queries against the caption index, scoring given pairs, encoding. Text search is where the
engines differ: `LocalEngine` batches concurrent queries (MicroBatcher) and searches its shards in
this process; the Ray engine (ray_engine.py) encodes once at its ingress and fans out to shard
deployments. Both return shard labels (a v1 gallery's positions, a format-2 gallery's ids); the app
turns positions into ids.
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import threading
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kidrr.data import check_features
from kidrr.errors import InputError, UnknownItem
from kidrr.runtime.captions import tokenize_captions
from kidrr.runtime.search import check_dedup, check_k, check_shortlist

from .batching import MicroBatcher
from .errors import NotAvailable, Overloaded, TooLarge
from .items import gallery_fields, gallery_has_thumbnails, lookup_item
from .shards import ShardSearcher, merge_top_k, queries_from_index


class Engine:
    name = "abstract"
    supports_similar = True     # search by example (/v1/search/similar*); the page offers it when true

    def __init__(self, retriever, catalog, settings):
        self.retriever = retriever
        self.catalog = catalog
        self.settings = settings
        # Score / encode / image queries run here; a small pool so they cannot starve the batches.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kidrr-work")
        self._admitted = 0                 # heavy calls running or waiting for the pool
        self._admit_lock = threading.Lock()
        self.caption_index = None
        if catalog.captions:
            self.caption_index = retriever.encode_texts(catalog.captions)

    @property
    def bundle_id(self) -> str:
        return self.retriever.bundle_id

    @property
    def gallery_size(self) -> int:
        return self.catalog.size

    def info(self) -> dict:
        return {"engine": self.name, "bundle": self.bundle_id, "gallery_items": self.gallery_size,
                "gallery_format": "kidrr-gallery/2 folders" if self.catalog.ids is None else "kidrr-gallery/1 file",
                "captions": len(self.catalog.captions or []), "feature_size": self.retriever.feature_size,
                "max_caption_len": self.retriever.bundle.max_caption_len,
                "fields": gallery_fields(self.catalog), "thumbnails": gallery_has_thumbnails(self.catalog),
                "similar": self.supports_similar,
                "similar_image": self.supports_similar and self.retriever.bundle.takes_pixels,
                "captions_image": bool(self.catalog.captions) and self.retriever.bundle.takes_pixels}

    def item_label(self, item: str):
        """The shard label of a service id: a v1 gallery's position (None if unknown), else the id."""
        if self.catalog.ids is None:
            return item
        if getattr(self, "_position_of", None) is None:
            self._position_of = {str(x): i for i, x in enumerate(self.catalog.ids)}
        return self._position_of.get(item)

    async def find_item(self, item: str, thumbnail: bool = False) -> dict | None:
        """The item's metadata / thumbnail from the shard that holds it (serve/items.py), or None."""
        raise NotImplementedError

    # ---- checks that must fail per request, before a query joins a batch ----------------------
    def check_text_query(self, query: str, k: int, shortlist: int | None):
        tokenize_captions(self.retriever.bundle.vocab, [query], self.retriever.bundle.max_caption_len)
        k = check_k(k, self.gallery_size, "gallery")
        return k, check_shortlist(shortlist, k, self.gallery_size)

    def check_image(self, features) -> np.ndarray:
        limit = self.settings.limits.max_regions
        for i, regions in enumerate(_region_counts(features)):
            if regions > limit:          # counted on the parsed lists, before any array is made
                raise InputError(f"image {i} has {regions} regions, more than the {limit} allowed on this service")
        try:
            arr = np.asarray(features, dtype=np.float32)
        except (ValueError, TypeError) as exc:   # ragged rows
            raise InputError(f"image features must be a regular array (regions x features): {exc}") from exc
        return check_features(arr[None] if arr.ndim == 2 else arr, feature_size=self.retriever.feature_size)

    async def _work(self, fn, *args):
        """Run fn on the work pool if there is room: at most settings.max_heavy calls are admitted
        (running or queued), the next is Overloaded (503, Retry-After) at once. A call whose request
        timed out or went away before a thread took it is dropped, not run for nobody."""
        with self._admit_lock:
            if self._admitted >= self.settings.max_heavy:
                raise Overloaded(f"the service is busy ({self._admitted} score / encode / image requests in "
                                 f"progress); retry shortly")
            self._admitted += 1
        abandoned = threading.Event()

        def release(_future):
            with self._admit_lock:
                self._admitted -= 1

        def run():
            if abandoned.is_set():
                raise asyncio.CancelledError()
            return fn(*args)
        future = self._pool.submit(run)
        future.add_done_callback(release)     # on completion, failure or cancellation: the slot is free again
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            abandoned.set()                   # the timeout or a disconnect cancelled us
            future.cancel()
            raise

    def check_where(self, where):
        """(canonical JSON text or None, how shards treat a field they lack). With several shards a field
        only some of them hold matches nothing in the others; the local engine first checks that some
        shard knows each field (an unknown field is a 422 either way)."""
        if where is None:
            return None, "error"
        from kidrr.gallery.filters import MAX_FILTER_BYTES
        text = json.dumps(where, sort_keys=True, separators=(",", ":"))
        if len(text) > MAX_FILTER_BYTES:
            raise InputError(f"the filter is {len(text)} bytes, at most {MAX_FILTER_BYTES}")
        return text, "error" if len(self.catalog.shards) == 1 else "none"

    # ---- what both engines answer in the front process ---------------------------------------
    async def search_image(self, features, k: int, shortlist: int | None) -> list:
        if self.caption_index is None:
            raise NotAvailable("this service has no caption index; start it with --captions FILE")
        feats = self.check_image(features)
        k = check_k(k, len(self.caption_index), "caption index")
        kp = check_shortlist(shortlist, k, len(self.caption_index))
        return await self._work(lambda: self.retriever.search_image(feats[0], k, captions=self.caption_index,
                                                                     shortlist=kp))

    async def search_image_file(self, data: bytes, k: int, shortlist: int | None) -> list:
        """Captions for an uploaded image file (JPEG, PNG...): decoded with the images package's limits,
        encoded by the bundle's preprocessing and backbone graphs (bundles exported with them only)."""
        if not self.retriever.bundle.takes_pixels:
            raise NotAvailable("this bundle has no image graphs (preprocess + backbone), so it takes region "
                               "features only: POST them to /v1/search/captions, or serve a bundle exported "
                               "from a checkpoint trained on kidrr features")
        if self.caption_index is None:
            raise NotAvailable("this service has no caption index; start it with --captions FILE")
        k = check_k(k, len(self.caption_index), "caption index")
        kp = check_shortlist(shortlist, k, len(self.caption_index))

        query = await self.encode_upload(data)
        return await self._work(lambda: self.retriever.search_image(query, k, captions=self.caption_index,
                                                                    shortlist=kp)[0])

    async def encode_upload(self, data: bytes):
        """An uploaded image file -> its encoded Gallery of one (bundles with image graphs only)."""
        if not self.retriever.bundle.takes_pixels:
            raise NotAvailable("this bundle has no image graphs (preprocess + backbone), so it cannot encode "
                               "uploaded photos; serve a bundle exported with them")
        limits = self.settings.limits
        if len(data) > limits.max_upload_bytes:
            raise TooLarge(f"the uploaded image is {len(data):,} bytes, over the {limits.max_upload_bytes:,}-byte limit "
                           f"of this service")

        def run():
            from kidrr.images.decode import decode_image      # Pillow, only for these endpoints
            try:      # the pixel limit is checked from the header, before any pixel is decoded
                pixels = decode_image(bytes(data), max_pixels=limits.max_upload_pixels, name="the uploaded image")
                query = self.retriever.encode_pixels([pixels])
                del pixels
            finally:
                release_free_memory()         # the decoder's buffers go back to the system, not to the heap
            return query
        return await self._work(run)

    async def score(self, features, captions: list) -> np.ndarray:
        feats = self.check_image(features)
        return await self._work(lambda: self.retriever.score(self.retriever.encode_images(feats), captions))

    async def encode(self, captions: list | None, features) -> dict:
        def run():
            out = {}
            if captions:
                index = self.retriever.encode_texts(captions)
                out["caption_globals"] = np.asarray(index.globals)[np.argsort(index.order)]
            if features is not None:
                out["image_globals"] = self.retriever.encode_images(self.check_image(features)).globals
            return out
        return await self._work(run)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._pool.shutdown(wait=True)

    async def ready(self) -> tuple:
        return True, "ready"


def _region_counts(features) -> list:
    """Regions per image of features given as one (R, F) matrix or a list of them (parsed JSON)."""
    if not isinstance(features, list) or not features:
        return []
    first = features[0]
    if isinstance(first, list) and first and isinstance(first[0], list):
        return [len(image) if isinstance(image, list) else 0 for image in features]
    return [len(features)]


def release_free_memory() -> None:
    """glibc keeps freed heap memory (an image's decode buffers) for reuse; hand it back (malloc_trim)."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim = None


class LocalEngine(Engine):
    """One process: the thread-safe Retriever, its shards searched in turn (one by default), batched queries."""

    name = "local"

    def __init__(self, retriever, catalog, sources: list, settings):
        super().__init__(retriever, catalog, settings)
        self.shards = [ShardSearcher(retriever, source, spec.start, spec, settings.reload_check_s)
                       for spec, source in zip(catalog.shards, sources)]
        self.batcher = MicroBatcher(self._search_batch, max_batch=settings.max_batch,
                                    max_wait_s=settings.batch_wait_ms / 1000, max_queue=settings.max_queue,
                                    workers=settings.workers, name="text-search")

    @property
    def gallery_size(self) -> int:
        return sum(len(s) for s in self.shards)       # format-2 shards follow their galleries

    def info(self) -> dict:
        return dict(super().info(), shards=len(self.shards), replicas=1)

    async def ready(self) -> tuple:
        loop = asyncio.get_running_loop()
        for shard in self.shards:      # opening a new generation reads files: not on the event loop
            await loop.run_in_executor(None, shard.refresh)
        stale = [s.stale for s in self.shards if s.stale]
        if stale:
            return False, stale[0]
        return True, "ready"

    def _search_batch(self, items: list) -> list:
        """[(query, k, k', where, dedup, unknown)] -> [[(position, score)]]: one encoder call for the
        batch, then each shard."""
        index = self.retriever.encode_texts([item[0] for item in items])
        queries = queries_from_index(index, [item[1] for item in items], [item[2] for item in items])
        queries = [replace(q, where=item[3], dedup=item[4], unknown=item[5]) for q, item in zip(queries, items)]
        per_shard = [shard.search(queries) for shard in self.shards]
        return [merge_top_k([hits[i] for hits in per_shard], items[i][1]) for i in range(len(items))]

    def _known_fields(self, where: str | None) -> None:
        """InputError when no shard holds a field the filter names (a shard alone would say so)."""
        if where is None or len(self.shards) == 1:
            return
        fields: dict = {}
        for shard in self.shards:
            fields.update(getattr(shard.source, "fields", {}))
        from kidrr.gallery.filters import check_filter
        check_filter(fields, where)

    async def search_text(self, query: str, k: int, shortlist: int | None, where=None,
                          dedup: float | None = None) -> list:
        k, kp = self.check_text_query(query, k, shortlist)
        text, unknown = self.check_where(where)
        self._known_fields(text)
        return await self.batcher.submit((query, k, kp, text, check_dedup(dedup), unknown))

    async def search_like_id(self, item, k: int, where=None, dedup: float | None = None) -> list:
        """Items like a stored item (its global, from the shard that holds it), the item left out."""
        k = check_k(k, self.gallery_size, "gallery")
        text, unknown = self.check_where(where)
        self._known_fields(text)
        dedup = check_dedup(dedup)
        label = item
        if self.catalog.ids is not None:      # a v1 gallery: the service's ids name positions
            label = self._positions().get(item)

        def run():
            found = None if label is None else next(
                (g for g in (s.global_of(label) for s in self.shards) if g is not None), None)
            if found is None:
                raise UnknownItem(f"no item {str(item)[:200]!r} in this gallery (removed, or never added)")
            return self._similar(found, k, text, dedup, unknown, exclude=label)
        return await self._work(run)

    async def search_like_file(self, data: bytes, k: int, where=None, dedup: float | None = None) -> list:
        """Items like an uploaded photo (decoded and encoded as /v1/search/captions/image does)."""
        k = check_k(k, self.gallery_size, "gallery")
        text, unknown = self.check_where(where)
        self._known_fields(text)
        dedup = check_dedup(dedup)
        query = await self.encode_upload(data)
        return await self._work(lambda: self._similar(query.globals[0], k, text, dedup, unknown))

    async def find_item(self, item: str, thumbnail: bool = False) -> dict | None:
        label = self.item_label(item)
        if label is None:
            return None

        def run():
            return next((f for f in (lookup_item(s, label, thumbnail) for s in self.shards) if f is not None), None)
        return await asyncio.get_running_loop().run_in_executor(None, run)

    def _similar(self, global_, k, where, dedup, unknown, exclude=None) -> list:
        per_shard = [s.similar(global_, k, where, dedup, unknown, exclude) for s in self.shards]
        return merge_top_k(per_shard, k)

    def _positions(self) -> dict:
        if getattr(self, "_position_of", None) is None:
            self._position_of = {x: i for i, x in enumerate(self.catalog.ids)}
        return self._position_of

    async def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        await super().stop()
