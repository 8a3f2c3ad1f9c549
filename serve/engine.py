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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kidrr.data import check_features
from kidrr.errors import InputError
from kidrr.runtime.captions import tokenize_captions
from kidrr.runtime.search import check_k, check_shortlist

from .batching import MicroBatcher
from .errors import NotAvailable
from .shards import ShardSearcher, merge_top_k, queries_from_index


class Engine:
    name = "abstract"

    def __init__(self, retriever, catalog, settings):
        self.retriever = retriever
        self.catalog = catalog
        self.gallery_size = catalog.size
        self.settings = settings
        # Score / encode / image queries run here; a small pool so they cannot starve the batches.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kidrr-work")
        self.caption_index = None
        if catalog.captions:
            self.caption_index = retriever.encode_texts(catalog.captions)

    @property
    def bundle_id(self) -> str:
        return self.retriever.bundle_id

    def info(self) -> dict:
        return {"engine": self.name, "bundle": self.bundle_id, "gallery_items": self.gallery_size,
                "gallery_format": "kidrr-gallery/2 folders" if self.catalog.ids is None else "kidrr-gallery/1 file",
                "captions": len(self.catalog.captions or []), "feature_size": self.retriever.feature_size,
                "max_caption_len": self.retriever.bundle.max_caption_len}

    # ---- checks that must fail per request, before a query joins a batch ----------------------
    def check_text_query(self, query: str, k: int, shortlist: int | None):
        tokenize_captions(self.retriever.bundle.vocab, [query], self.retriever.bundle.max_caption_len)
        k = check_k(k, self.gallery_size, "gallery")
        return k, check_shortlist(shortlist, k, self.gallery_size)

    def check_image(self, features) -> np.ndarray:
        try:
            arr = np.asarray(features, dtype=np.float32)
        except (ValueError, TypeError) as exc:   # ragged rows
            raise InputError(f"image features must be a regular array (regions x features): {exc}") from exc
        return check_features(arr[None] if arr.ndim == 2 else arr, feature_size=self.retriever.feature_size)

    async def _work(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

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
                               "from a checkpoint trained on kidrr-features")
        if self.caption_index is None:
            raise NotAvailable("this service has no caption index; start it with --captions FILE")
        k = check_k(k, len(self.caption_index), "caption index")
        kp = check_shortlist(shortlist, k, len(self.caption_index))

        def run():
            from kidrr.images.decode import decode_image      # Pillow, only for this endpoint
            query = self.retriever.encode_pixels([decode_image(bytes(data), name="the uploaded image")])
            return self.retriever.search_image(query, k, captions=self.caption_index, shortlist=kp)[0]
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


class LocalEngine(Engine):
    """One process: the thread-safe Retriever, its shards searched in turn (one by default), batched queries."""

    name = "local"

    def __init__(self, retriever, catalog, sources: list, settings):
        super().__init__(retriever, catalog, settings)
        self.shards = [ShardSearcher(retriever, source, spec.start) for spec, source in zip(catalog.shards, sources)]
        self.batcher = MicroBatcher(self._search_batch, max_batch=settings.max_batch,
                                    max_wait_s=settings.batch_wait_ms / 1000, max_queue=settings.max_queue,
                                    workers=settings.workers, name="text-search")

    def info(self) -> dict:
        return dict(super().info(), shards=len(self.shards), replicas=1)

    def _search_batch(self, items: list) -> list:
        """[(query, k, k')] -> [[(position, score)]]: one encoder call for the batch, then each shard."""
        index = self.retriever.encode_texts([q for q, _, _ in items])
        queries = queries_from_index(index, [k for _, k, _ in items], [kp for _, _, kp in items])
        per_shard = [shard.search(queries) for shard in self.shards]
        return [merge_top_k([hits[i] for hits in per_shard], items[i][1]) for i in range(len(items))]

    async def search_text(self, query: str, k: int, shortlist: int | None) -> list:
        k, kp = self.check_text_query(query, k, shortlist)
        return await self.batcher.submit((query, k, kp))

    async def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        await super().stop()
