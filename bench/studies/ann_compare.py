"""IVF-Flat against HNSW-Flat on one gallery's globals, side by side: build time, search latency,
recall@k' against the exact first stage, index size. The measurement behind the default ANN method.

    python -m kidrr.bench.studies.ann_compare GALLERY [--queries 50] [--shortlist 100] [--threads 1] [--json FILE]

Queries are gallery items plus a little noise (their neighbours exist); every index is written,
then read back memory-mapped as a search would read it, in a temporary folder.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import click
import numpy as np

from kidrr.fileio import write_atomic


def compare(folder: str, queries: int, shortlist: int, threads: int, seed: int = 0) -> dict:
    import faiss
    from kidrr.gallery import first_stage, open_gallery
    faiss.omp_set_num_threads(threads)
    gal = open_gallery(folder)
    globs = np.ascontiguousarray(gal.segments[0].globals)        # the first segment: its own index
    rng = np.random.default_rng(seed)
    q = globs[rng.choice(len(globs), queries, replace=False)]
    q = q + 0.05 * rng.standard_normal(q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(q @ globs.T), axis=1)[:, :shortlist]
    out = {"items": len(globs), "queries": queries, "shortlist": shortlist, "threads": threads,
           "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="kidrr-ann-") as work:
        for method in ("ivf", "hnsw"):
            t = time.perf_counter()
            index, params = first_stage.build_index(globs, method, seed=seed)
            build = time.perf_counter() - t
            path = os.path.join(work, f"{method}.faiss")
            faiss.write_index(index, path)
            del index
            index = first_stage.read_index(path)
            first_stage.search_index(index, method, params, q[:1], shortlist)      # warm-up
            times, found = [], []
            for i in range(queries):
                t = time.perf_counter()
                _, rows = first_stage.search_index(index, method, params, q[i:i + 1], shortlist)
                times.append(time.perf_counter() - t)
                found.append(rows[0])
            out[method] = {"build_s": build, "search_p50_ms": float(np.median(times) * 1000),
                           "search_p99_ms": float(np.percentile(times, 99) * 1000),
                           f"recall@{shortlist}": float(np.mean([len(set(a) & set(b)) / shortlist
                                                                 for a, b in zip(found, truth)])),
                           "file_mb": os.path.getsize(path) / 2**20, "params": params}
    out["load_after"] = os.getloadavg()
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("gallery", type=click.Path(file_okay=False))
@click.option("--queries", type=int, default=50, show_default=True)
@click.option("--shortlist", type=int, default=100, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--json", "json_path", default=None)
def main(gallery, queries, shortlist, threads, json_path):
    """IVF against HNSW on GALLERY's first segment."""
    out = compare(gallery, queries, shortlist, threads)
    blob = json.dumps(out, indent=1)
    if json_path:
        write_atomic(json_path, blob.encode())
    click.echo(blob)


if __name__ == "__main__":
    main()
