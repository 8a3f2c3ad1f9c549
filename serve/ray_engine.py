"""The ray engine: the same FastAPI app as a Ray Serve ingress, over S shard deployments.

The ingress encodes each query once (Ray Serve's @serve.batch gathers concurrent queries into one
encoder call), sends the encoded query to every shard deployment, and merges their top-k lists.
Each shard deployment owns rows [start, stop) of the gallery, does its own shortlist and rerank
(@serve.batch again: an exact search scores the whole batch in one pass), and runs N replicas for
throughput. Ray Serve supplies the replicas, scheduling, restarts after a crash, the bounded
queues (max_ongoing_requests / max_queued_requests -> 503) and graceful shutdown.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import numpy as np
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from kidrr.errors import UnknownItem
from kidrr.runtime import Retriever
from kidrr.runtime.search import check_dedup, check_k

from .api import create_app
from .errors import Overloaded, ShardUnavailable
from .engine import Engine
from .items import lookup_item
from .shards import ShardSearcher, merge_top_k, queries_from_index

log = logging.getLogger("kidrr.serve")
APP_NAME = "kidrr"
RETRIES = 3                  # a search is read-only: retrying on another replica is safe
RETRY_PAUSE_S = 0.2
GRACEFUL_S = 10.0            # replicas finish in-flight requests for up to this long when stopped


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=GRACEFUL_S)
class Shard:
    """One part of the collection (a ShardSpec: rows of a .npz gallery, or a format-2 folder)."""

    def __init__(self, bundle: str, spec, threads: int, max_batch: int, batch_wait_s: float, check_s: float = 1.0):
        self.retriever = Retriever(bundle, threads=threads)
        # A format-2 shard follows its gallery's new generations (ShardSearcher.refresh), as locally.
        self.searcher = ShardSearcher(self.retriever, spec.open(self.retriever), spec.start, spec, check_s)
        self.spec = spec
        self.search.set_max_batch_size(max_batch)  # type: ignore[attr-defined]
        self.search.set_batch_wait_timeout_s(batch_wait_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def search(self, queries: list) -> list:
        return await asyncio.get_running_loop().run_in_executor(None, self.searcher.search, queries)

    def item(self, label, thumbnail: bool) -> dict | None:
        return lookup_item(self.searcher, label, thumbnail)      # None: not held by this shard

    async def global_of(self, label):
        """The stored global of the item labelled `label`, or None when this shard does not hold it."""
        return await asyncio.get_running_loop().run_in_executor(None, self.searcher.global_of, label)

    async def similar(self, global_, k: int, where, dedup, unknown: str, exclude=None) -> list:
        """[(label, score)] of this shard's items most like a global (search by example)."""
        return await asyncio.get_running_loop().run_in_executor(
            None, self.searcher.similar, global_, k, where, dedup, unknown, exclude)

    def fields(self) -> dict:
        """This shard's metadata fields (field -> type) now; {} for a v1 gallery."""
        self.searcher.refresh()
        return dict(getattr(self.searcher.source, "fields", {}))

    def ping(self) -> int:
        self.searcher.refresh()
        if self.searcher.stale:
            raise RuntimeError(self.searcher.stale)
        return len(self.searcher)


class RayEngine(Engine):
    name = "ray"

    def __init__(self, retriever, catalog, settings, shards: list, encode, replicas):
        super().__init__(retriever, catalog, settings)
        self.shards, self.encode_queries, self.replicas = shards, encode, replicas
        self._position_of = {x: i for i, x in enumerate(catalog.ids)} if catalog.ids is not None else None

    def info(self) -> dict:
        return dict(super().info(), shards=len(self.shards), replicas=self.replicas)

    async def search_like_id(self, item, k: int, where=None, dedup=None) -> list:
        """Items like a stored item: the shard that holds it gives its stored global (never re-encoded),
        every shard searches with it (the item left out), the lists are merged as for text."""
        k = check_k(k, self.gallery_size, "gallery")
        text, unknown = self.check_where(where)
        dedup = check_dedup(dedup)
        await self._known_fields(text)
        label = item
        if self.catalog.ids is not None:      # a v1 gallery: the service's ids name positions
            label = self._position_of.get(item)
        found = None
        if label is not None:
            globals_ = await asyncio.gather(*(self._call(shard, "global_of", label) for shard in self.shards))
            found = next((g for g in globals_ if g is not None), None)
        if found is None:
            raise UnknownItem(f"no item {str(item)[:200]!r} in this gallery (removed, or never added)")
        return await self._similar(found, k, text, dedup, unknown, exclude=label)

    async def search_like_file(self, data: bytes, k: int, where=None, dedup=None) -> list:
        """Items like an uploaded photo: encoded once here at the ingress, its global sent to every shard."""
        k = check_k(k, self.gallery_size, "gallery")
        text, unknown = self.check_where(where)
        dedup = check_dedup(dedup)
        await self._known_fields(text)
        query = await self.encode_upload(data)
        return await self._similar(np.asarray(query.globals[0]), k, text, dedup, unknown)

    async def _known_fields(self, where: str | None) -> None:
        """InputError when no shard holds a field the filter names, as on the local engine (one shard
        alone says so when it compiles the filter)."""
        if where is None or len(self.shards) == 1:
            return
        fields: dict = {}
        for part in await asyncio.gather(*(self._call(shard, "fields") for shard in self.shards)):
            fields.update(part)
        from kidrr.gallery.filters import check_filter
        check_filter(fields, where)

    async def _similar(self, global_, k, where, dedup, unknown, exclude=None) -> list:
        per_shard = await asyncio.gather(*(self._call(shard, "similar", global_, k, where, dedup, unknown, exclude)
                                           for shard in self.shards))
        return merge_top_k(per_shard, k)

    async def _ask(self, shard, query):
        return await self._call(shard, "search", query)

    async def _call(self, shard, method: str, *args):
        """One call of a shard deployment's method, retried on another replica when one dies."""
        for attempt in range(RETRIES):
            try:
                return await getattr(shard, method).remote(*args)
            except BackPressureError as exc:
                raise Overloaded(f"a shard's queue is full; retry shortly ({exc})") from exc
            except (RayActorError, ActorUnavailableError) as exc:
                log.warning("shard replica unavailable (attempt %d): %s", attempt + 1, type(exc).__name__)
                if attempt + 1 == RETRIES:
                    raise ShardUnavailable("a shard replica died and no other could answer; retry shortly") from exc
                await asyncio.sleep(RETRY_PAUSE_S)

    async def search_text(self, query: str, k: int, shortlist: int | None, where=None, dedup=None) -> list:
        k, kp = self.check_text_query(query, k, shortlist)
        text, unknown = self.check_where(where)
        await self._known_fields(text)
        encoded = await self.encode_queries((query, k, kp))
        encoded = replace(encoded, where=text, dedup=check_dedup(dedup), unknown=unknown)
        per_shard = await asyncio.gather(*(self._ask(shard, encoded) for shard in self.shards))
        return merge_top_k(per_shard, k)

    async def find_item(self, item: str, thumbnail: bool = False) -> dict | None:
        """Every shard is asked (at most one holds a live id); the one that holds it answers."""
        label = self.item_label(item)
        if label is None:
            return None
        try:
            answers = await asyncio.gather(*(s.item.remote(label, thumbnail) for s in self.shards))
        except (RayActorError, ActorUnavailableError) as exc:
            raise ShardUnavailable("a shard replica is unavailable; retry shortly") from exc
        return next((a for a in answers if a is not None), None)

    async def ready(self) -> tuple:
        try:
            sizes = await asyncio.wait_for(asyncio.gather(*(s.ping.remote() for s in self.shards)), 5.0)
        except Exception as exc:   # any shard that cannot answer a ping makes the service not ready
            return False, f"a shard does not answer ({type(exc).__name__}: {str(exc).splitlines()[-1][:300] if str(exc) else ''})"
        return True, f"{len(sizes)} shard(s) answering, {sum(sizes)} items"


@serve.deployment(ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=GRACEFUL_S)
@serve.ingress()
class Ingress:
    """The HTTP front: encodes queries once, fans out to the shards, merges."""

    def __init__(self, bundle: str, catalog, settings, threads: int, shards: list, replicas: int):
        retriever = Retriever(bundle, threads=threads)
        self.retriever, self.settings = retriever, settings
        self.encode_queries.set_max_batch_size(settings.max_batch)  # type: ignore[attr-defined]
        self.encode_queries.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)  # type: ignore[attr-defined]
        self.engine = RayEngine(retriever, catalog, settings, shards, self.encode_queries, replicas)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode_queries(self, items: list) -> list:
        def run():
            index = self.retriever.encode_texts([q for q, _, _ in items])
            return queries_from_index(index, [k for _, k, _ in items], [kp for _, _, kp in items])
        return await asyncio.get_running_loop().run_in_executor(None, run)

    def __serve_build_asgi_app__(self):
        return create_app(self.engine, self.settings)


def build_application(bundle: str, catalog, settings, replicas: int = 1, threads: int = 1):
    """The Serve application: one shard deployment per catalog shard, N replicas each, behind one ingress.
    The catalog (ids, captions, shard specs: paths, never arrays) travels with the ingress's arguments."""
    per_replica = max(32, 2 * settings.max_batch)   # room for full batches while the previous ones run
    shard = Shard.options  # type: ignore[attr-defined]  # the decorator returns a Deployment
    shard_apps = [shard(name=f"shard{i}", num_replicas=replicas, max_ongoing_requests=per_replica)
                  .bind(bundle, spec, threads, settings.max_batch, settings.batch_wait_ms / 1000,
                        settings.reload_check_s)
                  for i, spec in enumerate(catalog.shards)]
    return Ingress.options(  # type: ignore[attr-defined]
        max_ongoing_requests=per_replica, max_queued_requests=settings.max_queue).bind(
        bundle, catalog, settings, threads, shard_apps, replicas)


def start_ray(address: str | None, num_cpus: int | None):
    """Join a cluster (address) or start a local Ray; returns True when we started it (and must stop it)."""
    import ray
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    # A local Ray stays on the loopback interface: nothing of it is reachable from outside.
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    return True


def replica_actor_names(deployment: str) -> list:
    """Names of the live replica actors of one deployment of the app (for the replica-kill test)."""
    import ray
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in names
                  if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#{deployment}#"))


def kill_replica(name: str) -> None:
    """Kill one replica actor as a crash would; Serve notices and starts a replacement."""
    import ray
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def deploy(app, host: str, port: int):
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name=APP_NAME, route_prefix="/")


def stop_ray(started_here: bool) -> None:
    import ray
    try:
        serve.delete(APP_NAME)     # replicas drain their in-flight requests (graceful_shutdown_timeout_s)
        if started_here:
            serve.shutdown()
    finally:
        if started_here:
            ray.shutdown()
