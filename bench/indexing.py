"""`kidrr bench indexing`: kidrr index throughput, local engine vs Ray Data on one node vs two nodes.

Side by side in one run, on the same generated photos and bundle: the local engine (one process,
`threads` ONNX Runtime threads), Ray 1 node x `threads` CPUs, and Ray `threads` nodes x 1 CPU
(ray.cluster_utils.Cluster on this machine). Each engine writes a fresh gallery. Photos/s is over the
job's own wall time (listing to last commit; Ray's start-up is reported separately, it is paid once
per job). The time per photo is split into decode, backbone, graphs and write as the encoders measured
it (CPU-seconds per photo, summed over workers). The machine's load average is recorded: on a shared
machine the ratios matter, not the absolute numbers.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np


def _photos(folder: str, n: int, size: int = 320) -> None:
    from PIL import Image, ImageDraw
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.new("RGB", (size, size * 3 // 4), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = int(rng.integers(0, size)), int(rng.integers(0, size * 3 // 4))
            draw.ellipse([x, y, x + int(rng.integers(10, size // 2)), y + int(rng.integers(10, size // 2))],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        img.save(os.path.join(folder, f"p{i:05d}.jpg"), quality=88)


def run_indexing(photos: int, bundle: str, threads: int, segment_photos: int, work: str | None, out: str,
                 log=print) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from kidrr.photos.index import index_folder
    from kidrr.photos.ray_index import index_with_ray
    root = work or tempfile.mkdtemp(prefix="kidrr-bench-indexing-")
    images = os.path.join(root, "photos")
    try:
        _photos(images, photos)
        rows = {}
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        index_folder(bundle, images, os.path.join(root, "local.gallery"), threads=threads, progress=False)
        wall = time.perf_counter() - t0
        rows["local"] = {"config": f"local, {threads} threads", "job_s": wall, "startup_s": 0.0}
        log(f"local: {photos / wall:.1f} photos/s")
        for label, nodes in (("ray_1node", 1), ("ray_nodes", threads)):
            t0 = time.perf_counter()
            if nodes == 1:
                ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
                cluster = None
            else:
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
                for _ in range(nodes - 1):
                    cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            startup = time.perf_counter() - t0
            try:
                rec = index_with_ray(bundle, images, os.path.join(root, f"{label}.gallery"), workers=threads,
                                     cpus_per_worker=1, segment_photos=segment_photos, progress=False)
            finally:
                ray.shutdown()
                if cluster is not None:
                    cluster.shutdown()
            rows[label] = {"config": f"ray, {nodes} node(s) x {threads // nodes} CPU(s), {threads} workers",
                           "job_s": rec["seconds"], "startup_s": startup,
                           "per_photo_s": rec["seconds_per_photo"], "photos_per_node": rec["photos_per_node"]}
            log(f"{label}: {photos / rec['seconds']:.1f} photos/s")
        for r in rows.values():
            r["photos_per_s"] = photos / r["job_s"]
            r["vs_local"] = rows["local"]["job_s"] / r["job_s"]
        run = {"photos": photos, "threads": threads, "segment_photos": segment_photos, "bundle": bundle,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count(),
               "rows": rows}
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "indexing.json"), "w") as fh:
            json.dump(run, fh, indent=1)
        with open(os.path.join(out, "indexing.md"), "w") as fh:
            fh.write(markdown(run))
        return run
    finally:
        if work is None:
            shutil.rmtree(root, ignore_errors=True)


def markdown(run: dict) -> str:
    lines = [f"{run['photos']} photos, {run['cpus']} cores, load average {run['loadavg_before'][0]:.1f} before / "
             f"{run['loadavg_after'][0]:.1f} after", "",
             "| engine | photos/s | vs local | Ray start-up s | decode ms | backbone ms | graphs ms | write ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in run["rows"].values():
        per = r.get("per_photo_s") or {}
        ms = [f"{per[s] * 1e3:.1f}" if s in per else "-" for s in ("decode", "backbone", "graphs", "write")]
        lines.append(f"| {r['config']} | {r['photos_per_s']:.1f} | {r['vs_local']:.2f} | {r['startup_s']:.1f} | "
                     + " | ".join(ms) + " |")
    return "\n".join(lines) + "\n"
