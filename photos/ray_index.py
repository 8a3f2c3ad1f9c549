"""`kidrr index --engine ray`: the same index as the local engine, encoded by a Ray Data job.

Pipeline: the driver lists the photos exactly as the local engine does -> a Ray dataset of their
names -> `map_batches` on a pool of SegmentEncoder actors (each opens the bundle once, ONNX Runtime
threads = its CPUs; one batch = one segment: decode, preprocess, backbone, image graphs through the
runtime's own encode_image_files, then write_segment into the gallery's staging area) -> a small
summary row per segment streams back to the driver, which holds the gallery's writer lock for the
whole job and adopts finished segments every `commit_every` segments or `commit_seconds` seconds
(kidrr.gallery.staging). A driver killed mid-job loses at most the uncommitted window; the same
command run again adopts what the dead job staged (checked) and encodes only what is missing.

Why not a Ray Data Datasink: its results reach the driver only at on_write_complete (no commits while
the job runs), and it would ship every photo's locals through the object store to write tasks; the
encoder writing its own segment keeps the vectors on the node that made them.

Workers write where the driver reads: the gallery folder must be on storage every node sees (a shared
filesystem). A probe task on every node checks this before any work (docs/indexing_at_scale.md).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
import uuid

from kidrr.errors import DataError, InputError

DEFAULT_SEGMENT_PHOTOS = 1024
PROBE_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10


def require_ray():
    """ray with Ray Data, or an InputError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (pulls pandas / pyarrow: the `ray[data]` extra)
    except ImportError as exc:
        raise InputError(f"--engine ray needs Ray Data ({exc}); install it with: pip install 'kidrr[ray]' "
                         f"(or pip install 'ray[data]')") from exc
    return ray


def check_address(address: str) -> None:
    """A clear error within seconds for a head node that does not answer (ray.init alone can wait minutes)."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise InputError("--address takes HEAD:PORT of the cluster's GCS (e.g. 10.0.0.5:6379), not a ray:// "
                         "client address")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, the head node's GCS)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"cannot reach the Ray head node at {address} ({exc.strerror or exc}) within "
                         f"{CONNECT_TIMEOUT_S} s; start it with `ray start --head` or check the address") from None


def connect(ray, address: str | None, cpus: int) -> bool:
    """Join the cluster at `address`, or start a local Ray with `cpus` CPUs; True when we started it
    (and so shut it down at the end). An already connected process (tests, notebooks) is reused."""
    if ray.is_initialized():
        return False
    if address:
        check_address(address)
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return True


def probe_shared_storage(ray, gallery: str, staged: str) -> list:
    """Every alive node with CPUs reads a token the driver wrote in the staging folder and writes one back;
    returns the node ids. InputError, before any work, naming the nodes that cannot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    token = uuid.uuid4().hex[:16]
    mine = os.path.join(staged, f"probe-{token}")
    with open(mine, "w") as fh:
        fh.write(token)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]

    @ray.remote(num_cpus=0, max_retries=0)
    def probe(path, token, reply):
        try:
            with open(path) as fh:
                seen = fh.read()
            if seen != token:
                return f"reads other contents at {path}"
            with open(reply, "w") as fh:
                fh.write(token)
            return None
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
    refs = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        mine, token, os.path.join(staged, f"probe-{token}-{node[:16]}")) for node in nodes}
    try:
        answers = dict(zip(refs, ray.get(list(refs.values()), timeout=PROBE_TIMEOUT_S)))
    except Exception as exc:     # a node that never answers is a node we cannot use
        raise InputError(f"the shared-storage probe did not finish on every node within {PROBE_TIMEOUT_S} s "
                         f"({type(exc).__name__}); no work was started") from exc
    try:
        for node, why in list(answers.items()):
            if why is None and not os.path.isfile(os.path.join(staged, f"probe-{token}-{node[:16]}")):
                answers[node] = "wrote its reply where the driver cannot see it"
        return check_probe(answers, gallery)
    finally:
        for name in [f"probe-{token}"] + [f"probe-{token}-{n[:16]}" for n in nodes]:
            try:
                os.unlink(os.path.join(staged, name))
            except FileNotFoundError:
                pass


def check_probe(answers: dict, gallery: str) -> list:
    """answers: node id -> None (it sees and writes the gallery folder) or why not."""
    bad = {n: why for n, why in answers.items() if why}
    if bad:
        listed = "; ".join(f"node {n[:12]}: {why}" for n, why in sorted(bad.items()))
        raise InputError(f"{len(bad)} of {len(answers)} Ray node(s) cannot write gallery {gallery} ({listed}). "
                         f"Workers write segments into the gallery folder: put it on a filesystem every node "
                         f"mounts at the same path (NFS, CephFS, Lustre...); no work was started")
    return sorted(answers)


class SegmentEncoder:
    """One Ray actor: the bundle opened once; each call encodes one batch of photo names into one staged segment."""

    def __init__(self, bundle: str, images: str, gallery: str, threads: int, batch_size: int, exif: bool,
                 thumbnails: bool = True):
        import ray
        from kidrr.gallery.layout import read_manifest
        from kidrr.runtime import open_bundle
        self.rt = open_bundle(bundle, threads=threads)
        self.images, self.gallery, self.batch_size, self.exif = images, gallery, batch_size, exif
        self.thumbnails = thumbnails
        self.manifest = read_manifest(gallery)[0]      # regions, dim, dtypes, ANN settings: fixed for a gallery
        self.node, self.pid = ray.get_runtime_context().get_node_id(), os.getpid()

    def __call__(self, batch: dict) -> dict:
        from kidrr.gallery.staging import content_key, stage_segment
        from kidrr.images.batch import SkipReport
        from .index import _metadata, _thumbnails
        names = [str(n) for n in batch["name"]]
        # metadata travels with the rows (checked by the driver): a sidecar's or a --list's columns
        sidecar = {n: json.loads(str(m)) for n, m in zip(names, batch["meta"]) if m} or None
        key = content_key(self.manifest.bundle_id, names)
        report, timings, rows, written = SkipReport(), {}, 0, False
        staged = os.path.join(self.gallery, "staged", key, "staged.json")
        node, pid = self.node, self.pid
        if os.path.isfile(staged):      # a retried block whose segment a killed worker had already staged
            with open(staged, "rb") as fh:
                record = json.loads(fh.read(1 << 24))
            rows, node, pid = int(record["segment"]["rows"]), str(record["node"]), int(record["pid"])
        else:
            try:
                g = self.rt.encode_image_files([os.path.join(self.images, n) for n in names], names=names,
                                               batch_size=self.batch_size, report=report, timings=timings)
            except InputError:
                g = None                          # every photo of this batch was skipped (each is in report)
            if g is not None:
                kept = list(g.names)
                metas = _metadata(self.images, kept, sidecar, self.exif)
                thumbs = _thumbnails(self.images, kept) if self.thumbnails else None
                t0 = time.perf_counter()
                written = stage_segment(self.gallery, key, self.manifest, len(kept),
                                        [(g.globals, g.locals, kept, metas, thumbs)],
                                        {"node": self.node, "pid": self.pid, "photos": len(names)})
                timings["write"] = time.perf_counter() - t0
                rows = len(kept)
        return {"key": [key], "rows": [rows], "written": [written], "node": [node], "pid": [pid],
                "photos": [len(names)], "skipped": [json.dumps(report.to_json())],
                **{f"{s}_s": [float(timings.get(s, 0.0))] for s in ("decode", "backbone", "graphs", "write")}}


STOP_WAIT_S = 30


def _drop_staging_when_workers_stop(gallery: str) -> None:
    """After a failed job, actors Ray Data has not yet killed may still finish a block and stage it. Once
    `staged/` is gone no worker can make it again (a segment folder is made with mkdir, not makedirs), so
    remove it until it stays gone for a second (at most STOP_WAIT_S)."""
    from kidrr.gallery.staging import drop_staging, staged_folder
    deadline, gone_since = time.monotonic() + STOP_WAIT_S, None
    while time.monotonic() < deadline:
        drop_staging(gallery)
        if os.path.isdir(staged_folder(gallery)):
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= 1.0:
            return
        time.sleep(0.2)


def _disk_full(exc: BaseException) -> bool:
    """Whether an error is ENOSPC: here, or in a worker (a Ray task error carries the worker's traceback as
    text; the exception chain itself does not survive the trip)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(exc):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return False


class Committer:
    """The driver's side: adopts staged segments every `every` segments or `seconds` seconds."""

    def __init__(self, writer, every: int, seconds: float, log):
        self.writer, self.every, self.seconds, self.log = writer, every, seconds, log
        self.pending, self.done, self.last = [], set(), time.monotonic()
        self.commits, self.adopted_rows, self.doubles, self.broken = 0, 0, 0, []

    def offer(self, key: str) -> None:
        if key not in self.done and key not in self.pending:
            self.pending.append(key)
        if len(self.pending) >= self.every or time.monotonic() - self.last >= self.seconds:
            self.commit()

    def commit(self, keys=None) -> None:
        from kidrr.gallery.staging import adopt_staged
        keys = list(self.pending if keys is None else keys)
        self.last = time.monotonic()
        if not keys:
            return
        out = adopt_staged(self.writer, keys, self.log)
        self.pending = [k for k in self.pending if k not in keys]
        self.done.update(keys)
        self.adopted_rows += sum(r for _, _, r in out["adopted"])
        self.doubles += len(out["doubles"])
        self.broken += out["broken"]
        self.commits += bool(out["adopted"])


def index_with_ray(bundle: str, images: str, out: str, *, address: str | None = None, workers: int = 2,
                   cpus_per_worker: int = 1, segment_photos: int = DEFAULT_SEGMENT_PHOTOS, batch_size: int = 32,
                   append: bool = False, metadata: str | None = None, exif: bool = True, commit_every: int = 8,
                   commit_seconds: float = 10.0, progress: bool = True, list_file: str | None = None,
                   encoder=None, thumbnails: bool = True) -> dict:
    """Index the photos under `images` (or named by `list_file`, kidrr.photos.input_list) into the format-2
    gallery `out` with a Ray Data job; returns the index record (the local engine's, plus per-node
    counts, commits and stage timings). `encoder`: the actor class (default SegmentEncoder)."""
    from kidrr.gallery import GalleryWriter, create_gallery, open_gallery
    from kidrr.gallery.layout import MANIFEST
    from kidrr.gallery.staging import (drop_staging, make_staged_folder, remove_orphans, staged_folder,
                                       staged_keys)
    from kidrr.images.batch import SkipReport
    from kidrr.runtime import open_bundle
    for name, value, low in (("--workers", workers, 1), ("--cpus-per-worker", cpus_per_worker, 1),
                             ("--segment-photos", segment_photos, 1), ("--batch-size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if out.endswith(".npz"):
        raise InputError("--engine ray writes format-2 gallery folders, not .npz files; choose a folder for --out")
    ray = require_ray()
    from .index import list_inputs
    report = SkipReport()
    images, files, ignored, sidecar = list_inputs(images, list_file, metadata, report)
    with open_bundle(bundle, threads=1) as rt:
        if not rt.bundle.takes_pixels:
            raise InputError(f"bundle {bundle} takes region features, not images (it has no backbone); use a "
                             f"bundle exported from a checkpoint trained on kidrr features output")
        bundle_id, regions, dim = rt.bundle_id, int(rt.bundle.image["regions"]), int(rt.bundle.model["embed_size"])
        backbone = rt.bundle.image["backbone"]
    resuming = os.path.isfile(os.path.join(out, MANIFEST)) and os.path.isdir(staged_folder(out))
    created = False
    if os.path.isfile(os.path.join(out, MANIFEST)):
        if not (append or resuming):
            raise InputError(f"{out} exists; choose another --out, or pass --append to add the photos not yet in it")
        open_gallery(out, bundle_id=bundle_id)     # a gallery of another bundle is refused here
    else:
        create_gallery(out, bundle_id, regions=regions, dim=dim)
        created = True
    log = (lambda m: print(m, file=__import__("sys").stderr)) if progress else (lambda m: None)
    writer = GalleryWriter(out)          # the lock, for the whole job: a second job is refused, not interleaved
    started = False
    failed = True
    try:
        staged = make_staged_folder(out)
        started = connect(ray, address, workers * cpus_per_worker)
        nodes = probe_shared_storage(ray, out, staged)
        committer = Committer(writer, commit_every, commit_seconds, log)
        remove_orphans(out)               # we hold the lock: no worker of another job writes here
        leftover = staged_keys(out)
        if leftover:                      # what a dead job staged and never committed
            committer.commit(leftover)
            log(f"resumed: adopted {committer.adopted_rows} photo(s) a previous job had staged")
        resumed_rows = committer.adopted_rows
        present = open_gallery(out).find(files) if writer.manifest.segments else {}
        todo = [f for f in files if f not in present]
        per_node, per_worker, timings, written = {}, {}, {}, 0
        t_start = time.perf_counter()
        if todo:
            from ray.data import ActorPoolStrategy, DataContext
            ctx = DataContext.get_current()
            ctx.enable_progress_bars = progress
            ctx.execution_options.preserve_order = False
            ds = ray.data.from_items([{"name": n, "meta": json.dumps(sidecar[n]) if sidecar and n in sidecar else ""}
                                      for n in todo],
                                     override_num_blocks=max(1, -(-len(todo) // segment_photos)))
            ds = ds.map_batches(encoder or SegmentEncoder, batch_size=segment_photos, compute=ActorPoolStrategy(size=workers),
                                num_cpus=cpus_per_worker, batch_format="numpy",
                                fn_constructor_kwargs=dict(bundle=os.path.abspath(bundle),
                                                           images=os.path.abspath(images),
                                                           gallery=os.path.abspath(out), threads=cpus_per_worker,
                                                           batch_size=batch_size, exif=exif, thumbnails=thumbnails))
            for row in ds.iter_rows():
                for item in json.loads(row["skipped"]):
                    report.add(item["file"], item["reason"], item["message"])
                if row["rows"]:
                    node = str(row["node"])
                    per_node[node] = per_node.get(node, 0) + int(row["rows"])
                    worker = f"{node[:12]}:{int(row['pid'])}"
                    per_worker[worker] = per_worker.get(worker, 0) + int(row["rows"])
                    for s in ("decode", "backbone", "graphs", "write"):
                        timings[s] = timings.get(s, 0.0) + float(row[f"{s}_s"])
                    written += bool(row["written"])
                    committer.offer(str(row["key"]))
        committer.commit()    # only this job's keys: anything else still staged is dropped below
        wall = time.perf_counter() - t_start
        failed = False
    except Exception as exc:
        if _disk_full(exc):
            raise DataError(f"a worker ran out of disk space writing a segment into {out} (No space left on "
                            f"device); the gallery is as it was at its last commit ({len(writer.manifest.segments)} "
                            f"segment(s)) and the staging area is removed. Free space there, then run the same "
                            f"command again with --append: committed photos are skipped") from exc
        raise
    finally:
        if failed:
            _drop_staging_when_workers_stop(out)
        if failed and created and not writer.manifest.segments:
            drop_staging(out)
            writer.close()
            from .index import _remove_empty_gallery
            _remove_empty_gallery(out)
        else:
            drop_staging(out)           # done, or failed: the gallery stays as it was at the last commit
            writer.close()
        if started:
            ray.shutdown()
    added = committer.adopted_rows - resumed_rows
    total = len(open_gallery(out))
    if total == 0:
        from .index import _remove_empty_gallery
        _remove_empty_gallery(out)
        raise InputError(f"none of the {len(files)} image file(s) in {images} could be indexed; "
                         + "; ".join(m for _, _, m in report.skipped[:3]))
    photos = max(1, sum(per_node.values()))
    return {"bundle": os.path.abspath(bundle), "bundle_id": bundle_id, "images": os.path.abspath(images),
            **({"list": os.path.abspath(list_file)} if list_file else {}),
            "backbone": backbone, "indexed": added + resumed_rows, "already_indexed": len(files) - len(todo) - resumed_rows,
            "files_found": len(files), "other_files_ignored": ignored, "skipped": report.to_json(),
            "engine": "ray", "nodes": len(nodes), "photos_per_node": per_node, "photos_per_worker": per_worker,
            "commits": committer.commits, "resumed_from_staging": resumed_rows,
            "doubles_removed": committer.doubles, "broken_staged_removed": [k for k, _ in committer.broken],
            "seconds": round(wall, 3),
            "seconds_per_photo": {s: round(t / photos, 6) for s, t in timings.items()}}
