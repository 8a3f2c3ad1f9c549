"""onnxruntime's worker threads spinning between runs (its default) against sleeping (kidrr's),
side by side: single text-query latency on a gallery, bulk scoring, and a two-stage sweep (a loop
of small runs of one graph).

    python -m kidrr.bench.studies.spin_compare [--gallery FOLDER] [--queries 60] [--rounds 3] [--json FILE]

Each round runs one fresh process per setting, in turn (a spinning runner's threads would
disturb the other's measurement inside one process). The query part searches FOLDER (a format-2
gallery of the shipped bundle, e.g. one `kidrr bench scale --keep` built) with the ANN first
stage at k'=100, or, without --gallery, the synthetic test set in memory; the bulk part scores
the synthetic test set's first 5fold fold (200 images x 1,000 captions) exhaustively, and the sweep
searches that fold's 1,000 captions two-stage (k'=10: 1,000 runs of 10 pairs, nothing between them).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import click
import numpy as np

from kidrr.fileio import write_atomic

SETTINGS = (("spin", True), ("sleep", False))


def measure(bundle: str, gallery: str | None, spin: bool, queries: int, threads: int) -> dict:
    """One process, one setting: per-query latencies (ms) and the bulk scoring time (s)."""
    from kidrr.runtime import open_bundle
    from kidrr.synthetic import make_synthetic
    split = make_synthetic("test")
    with open_bundle(bundle, threads=threads, spin=spin) as rt:
        if gallery:
            from kidrr.gallery import open_gallery
            target = open_gallery(gallery, bundle_id=rt.bundle_id, dim=rt.planner.dim)
            target.first_stage = "ann" if any(s.ann_info for s in target.segments) else "exact"
        else:
            target = rt.encode_images(split.images)
        caps = [split.captions[i] for i in np.random.default_rng(0).choice(len(split.captions), queries, False)]
        rt.search_text(caps[0], 10, gallery=target, shortlist=100)
        times = []
        for c in caps:
            t = time.perf_counter()
            rt.search_text(c, 10, gallery=target, shortlist=100)
            times.append(time.perf_counter() - t)
        fold = rt.encode_images(split.images[:200])
        captions = rt.encode_texts(split.captions[:1000], on_long="truncate")
        t = time.perf_counter()
        rt.score(fold, captions)
        bulk = time.perf_counter() - t
        t = time.perf_counter()
        rt.search_text(captions, 10, gallery=fold, shortlist=10)
        sweep = time.perf_counter() - t
    return {"query_ms": [x * 1000 for x in times], "bulk_s": bulk, "sweep_s": sweep}


def compare(gallery: str | None, queries: int, rounds: int, threads: int) -> dict:
    from . import sources
    bundles, _, _ = sources.resolve_bundles(None, None, ["fp32"])
    got = {name: {"query_ms": [], "bulk_s": [], "sweep_s": []} for name, _ in SETTINGS}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kidrr-spin-") as work:
        for r in range(rounds):
            for name, spin in SETTINGS:
                spec = os.path.join(work, "spec.json")
                result = os.path.join(work, f"{name}-{r}.json")
                write_atomic(spec, json.dumps({"bundle": bundles["fp32"], "gallery": gallery, "spin": spin,
                                               "queries": queries, "threads": threads}).encode())
                subprocess.run([sys.executable, "-m", "kidrr.bench.studies.spin_compare", "--worker", spec, result],
                               check=True)
                with open(result) as fh:
                    one = json.load(fh)
                got[name]["query_ms"] += one["query_ms"]
                got[name]["bulk_s"].append(one["bulk_s"])
                got[name]["sweep_s"].append(one["sweep_s"])
    out = {"gallery": gallery or "synthetic test set (1,000 images, in memory)", "queries_per_round": queries,
           "rounds": rounds, "threads": threads, "load_before": load_before, "load_after": os.getloadavg()}
    for name, v in got.items():
        out[name] = {"query_p50_ms": float(np.median(v["query_ms"])), "query_p99_ms": float(np.percentile(v["query_ms"], 99)),
                     "bulk_median_s": float(np.median(v["bulk_s"])), "sweep_median_s": float(np.median(v["sweep_s"]))}
    out["query_p50_spin_over_sleep"] = out["spin"]["query_p50_ms"] / out["sleep"]["query_p50_ms"]
    out["query_p99_spin_over_sleep"] = out["spin"]["query_p99_ms"] / out["sleep"]["query_p99_ms"]
    out["bulk_spin_over_sleep"] = out["spin"]["bulk_median_s"] / out["sleep"]["bulk_median_s"]
    out["sweep_spin_over_sleep"] = out["spin"]["sweep_median_s"] / out["sleep"]["sweep_median_s"]
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gallery", default=None, type=click.Path(file_okay=False), help="format-2 gallery of the shipped bundle")
@click.option("--queries", type=int, default=60, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--json", "json_path", default=None)
@click.option("--worker", nargs=2, default=None, hidden=True)
def main(gallery, queries, rounds, threads, json_path, worker):
    """Text-query latency, bulk scoring and a two-stage sweep with onnxruntime's threads spinning or sleeping."""
    if worker:
        with open(worker[0]) as fh:
            spec = json.load(fh)
        res = measure(spec["bundle"], spec["gallery"], spec["spin"], spec["queries"], spec["threads"])
        write_atomic(worker[1], json.dumps(res).encode())
        return
    out = json.dumps(compare(gallery, queries, rounds, threads), indent=1)
    if json_path:
        write_atomic(json_path, out.encode())
    click.echo(out)


if __name__ == "__main__":
    main()
