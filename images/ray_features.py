"""`kidrr features --engine ray`: the backbone run over blocks of photos by a pool of Ray actors.

The driver (kidrr.images.features.extract_features) plans the job, owns the output files and the
progress record exactly as with the local `ort` engine; only the decode + preprocess + backbone step
moves into `map_batches` actors (each opens the preprocessing and backbone ONNX graphs once, ONNX
Runtime threads = its CPUs). Blocks start at multiples of the batch size and are cut into the same
batches the local engine runs, so the features are the local engine's. Results stream back in plan
order (Ray Data's preserve_order), so the driver writes rows and its resumable progress record as it
does locally: an interrupted ray job resumes with either engine, and vice versa.

Actors read the photos and the traced backbone graph from the paths the driver sees: every node must
see them at the same path (shared storage; the backbone cache is $KIDRR_CACHE). A probe task on each
node checks this before any work.
"""
from __future__ import annotations

import os

import numpy as np

from kidrr.errors import DataError

PROBE_TIMEOUT_S = 60


class FeatureEncoder:
    """One Ray actor: the graphs opened once; each call turns a block of photos into float16 features."""

    def __init__(self, backbone: str, backbone_onnx: str, threads: int, batch_size: int, max_pixels: int):
        import onnxruntime as ort
        import ray
        from .preprocess import Preprocessor, preprocessing_graph
        from .spec import backbone_spec
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        self.session = ort.InferenceSession(backbone_onnx, opts, providers=["CPUExecutionProvider"])
        self.pre = Preprocessor(preprocessing_graph(backbone), threads=threads)
        self.spec = backbone_spec(backbone)
        self.batch_size, self.max_pixels = batch_size, max_pixels
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, block: dict) -> dict:
        from kidrr.backbone import ONNX_INPUT
        from .batch import SkipReport, decode_batch
        names, paths = [str(n) for n in block["name"]], [str(p) for p in block["path"]]
        n = len(names)
        feats = np.zeros((n, self.spec.regions, self.spec.feature_size), np.float16)
        kept = np.zeros(n, bool)
        reason, message = [""] * n, [""] * n
        for start in range(0, n, self.batch_size):
            report = SkipReport()
            end = min(n, start + self.batch_size)
            batch, ok = decode_batch(paths[start:end], names[start:end], self.pre, report,
                                     max_pixels=self.max_pixels)
            where = {name: start + i for i, name in enumerate(names[start:end])}
            if batch is not None:
                rows = [where[k] for k in ok]
                feats[rows] = self.session.run(None, {ONNX_INPUT: batch})[0].astype(np.float16)
                kept[rows] = True
            for name, why, text in report.skipped:
                reason[where[name]], message[where[name]] = why, text
        return {"name": names, "kept": kept, "feats": feats, "reason": reason, "message": message,
                "node": [self.node] * n}


def probe_readable(ray, paths: list) -> list:
    """Every alive node with CPUs checks it can read `paths` (the backbone graph, a photo) at the driver's
    paths; returns the node ids, or DataError naming the nodes that cannot, before any work."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]

    @ray.remote(num_cpus=0, max_retries=0)
    def probe(paths):
        for path in paths:
            try:
                with open(path, "rb") as fh:
                    fh.read(1)
            except OSError as exc:
                return f"cannot read {path} ({exc.strerror or exc})"
        return None
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(paths)
            for n in nodes]
    try:
        answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:     # a node that never answers is a node we cannot use
        raise DataError(f"the storage probe did not finish on every Ray node within {PROBE_TIMEOUT_S} s "
                        f"({type(exc).__name__}); no work was started") from exc
    bad = {node: why for node, why in zip(nodes, answers) if why}
    if bad:
        listed = "; ".join(f"node {n[:12]}: {why}" for n, why in sorted(bad.items()))
        raise DataError(f"{len(bad)} of {len(nodes)} Ray node(s) cannot read the job's inputs ({listed}). Actors "
                        f"read the photos and the backbone graph at the driver's paths: put the photos and "
                        f"$KIDRR_CACHE on a filesystem every node mounts at the same path; no work was started")
    return nodes


def ray_feature_blocks(plan: list, backbone: str, *, batch_size: int, max_pixels: int, address: str | None,
                       workers: int, cpus_per_worker: int, block_photos: int, progress: bool, per_node: dict):
    """Yields, in plan order, (photos done, names kept, (k, R, F) float16 features or None, skipped
    [(name, reason, message)]) per block of `plan` ([(name, path, captions)]). Counts the kept photos
    of each node into per_node. Starts a local Ray (or joins `address`) and stops what it started."""
    from kidrr.backbone import cached_backbone_onnx
    from kidrr.photos.ray_index import connect, require_ray
    for name, value in (("--workers", workers), ("--cpus-per-worker", cpus_per_worker),
                        ("--block-photos", block_photos)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be an integer >= 1, got {value!r}")
    ray = require_ray()
    onnx_path = os.path.abspath(cached_backbone_onnx(backbone))   # traced here once, read by every actor
    block = max(1, block_photos // batch_size) * batch_size        # whole batches: the local engine's batches
    started = connect(ray, address, workers * cpus_per_worker)
    try:
        probe_readable(ray, [onnx_path, os.path.abspath(plan[0][1])])
        from ray.data import ActorPoolStrategy, DataContext
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.execution_options.preserve_order = True      # rows come back in plan order: a prefix is done
        ds = ray.data.from_items([{"name": name, "path": os.path.abspath(path)} for name, path, _ in plan],
                                 override_num_blocks=max(1, -(-len(plan) // block)))
        ds = ds.map_batches(FeatureEncoder, batch_size=block, compute=ActorPoolStrategy(size=workers),
                            num_cpus=cpus_per_worker, batch_format="numpy",
                            fn_constructor_kwargs=dict(backbone=backbone, backbone_onnx=onnx_path,
                                                       threads=cpus_per_worker, batch_size=batch_size,
                                                       max_pixels=max_pixels))
        for out in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1):
            kept = np.asarray(out["kept"], bool)
            names = [str(n) for n in out["name"]]
            for node, ok in zip(out["node"], kept):
                if ok:
                    per_node[str(node)] = per_node.get(str(node), 0) + 1
            skipped = [(names[i], str(out["reason"][i]), str(out["message"][i])) for i in np.flatnonzero(~kept)]
            feats = np.asarray(out["feats"])[kept] if kept.any() else None
            yield len(names), [names[i] for i in np.flatnonzero(kept)], feats, skipped
    finally:
        if started:
            ray.shutdown()
