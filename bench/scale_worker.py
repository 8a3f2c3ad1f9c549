"""One gallery served in a fresh process: open time, anonymous RSS, text-query latency and top-10 overlap.

Run by kidrr-bench scale: python -m kidrr.bench.scale_worker SPEC.json RESULT.json
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from kidrr.fileio import write_atomic

TOP = 10
EXHAUSTIVE_QUERIES = 20


def rss_anon_mb() -> float:
    """Anonymous resident memory (heap, not file-backed maps), from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pct(times, q):
    return float(np.percentile(np.asarray(times) * 1000, q))


def serve(spec: dict) -> dict:
    from kidrr.gallery import open_gallery
    from kidrr.runtime import open_bundle
    rss = {"before_bundle": rss_anon_mb()}
    rt = open_bundle(spec["bundle"], threads=spec["threads"])
    opens = []
    for _ in range(5):
        t = time.perf_counter()
        g = open_gallery(spec["gallery"], bundle_id=rt.bundle_id, dim=rt.planner.dim)
        opens.append(time.perf_counter() - t)
    rss["after_open"] = rss_anon_mb()
    caps, batch = spec["captions"], spec["batch"]
    qglob = rt.encode_texts(caps, on_long="truncate")
    configs, exact_top = {}, {}
    methods = ["exact"] + (["ann"] if any(s.ann_info for s in g.segments) else [])
    for kp in spec["shortlists"]:
        for method in methods:
            g.first_stage = method
            rt.search_text(caps[0], TOP, gallery=g, shortlist=kp)         # warm-up (reads the ANN index once)
            single, tops = [], []
            for c in caps:
                t = time.perf_counter()
                r = rt.search_text(c, TOP, gallery=g, shortlist=kp)
                single.append(time.perf_counter() - t)
                tops.append([i for i, _ in r])
            batched = []
            for i in range(0, len(caps) - batch + 1, batch):
                t = time.perf_counter()
                rt.search_text(caps[i:i + batch], TOP, gallery=g, shortlist=kp)
                batched.append((time.perf_counter() - t) / batch)
            # Where one query's time goes: the same steps search_text takes, timed one by one.
            parts = {"encode": [], "first_stage": [], "gather": [], "rerank": []}
            for c in caps:
                t0 = time.perf_counter()
                enc = rt.encode_texts([c], on_long="truncate")
                t1 = time.perf_counter()
                rows = g.shortlist(enc.globals, kp)[0]
                t2 = time.perf_counter()
                locs, globs = g.gather(rows)
                t3 = time.perf_counter()
                rt.runner.score(locs, globs, enc.padded_locals(), enc.globals, enc.lengths)
                t4 = time.perf_counter()
                for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    parts[key].append(dt)
            cfg = {"single_p50_ms": _pct(single, 50), "single_p99_ms": _pct(single, 99),
                   "batched_p50_ms_per_query": _pct(batched, 50) if batched else None,
                   "batched_p99_ms_per_query": _pct(batched, 99) if batched else None,
                   "first_stage_p50_ms": _pct(parts["first_stage"], 50), "first_stage": g.describe_first_stage(),
                   "breakdown_p50_ms": {k: _pct(v, 50) for k, v in parts.items()}}
            if method == "exact":
                exact_top[kp] = tops
            else:
                cfg["overlap_exact"] = float(np.mean([len(set(a) & set(b)) / TOP
                                                      for a, b in zip(tops, exact_top[kp])]))
            cfg["tops"] = tops
            configs[f"{method}@{kp}"] = cfg
            rss[f"after_{method}@{kp}"] = rss_anon_mb()
    out = {"status": "ok", "items": len(g), "open_ms": float(np.median(opens) * 1000), "rss_anon_mb": max(rss.values()),
           "rss_anon_samples_mb": rss, "configs": configs}
    if spec.get("exhaustive"):
        n = min(EXHAUSTIVE_QUERIES, len(caps))
        t = time.perf_counter()
        full = rt.search_text(caps[:n], TOP, gallery=g)                  # every item scored, streamed
        out["exhaustive_s_per_query"] = (time.perf_counter() - t) / n
        truth = [[i for i, _ in r] for r in full]
        for cfg in configs.values():
            cfg["recall_vs_exhaustive"] = float(np.mean([len(set(a) & set(b)) / TOP
                                                         for a, b in zip(cfg["tops"][:n], truth)]))
    for cfg in configs.values():
        cfg.pop("tops")
    rt.close()
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        spec = json.load(fh)
    write_atomic(argv[1], json.dumps(serve(spec)).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
