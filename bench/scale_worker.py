"""One gallery served in a fresh process: open time, anonymous RSS, text-query latency and top-10 overlap.

Run by kidrr bench scale: python -m kidrr.bench.scale_worker SPEC.json RESULT.json
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
    if spec.get("search_features"):
        out["search"] = search_features(rt, g, caps, spec["search_features"])
    rt.close()
    return out


def _overlap(got: list, want: list) -> float:
    """Shared share of two top lists (of 10, or of every match when fewer match)."""
    return len(set(got) & set(want)) / max(len(got), len(want), 1)


def _top_rows(sims: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """The `size` best rows by sims, best first, ties by the smaller row."""
    return rows[np.lexsort((rows, -sims))[:size]]


def _filtered_reference(rt, g, globs, keep_rows, enc, kp):
    """Brute force, without the gallery's filter or first-stage code: the globals' dot product over
    every matching row (numpy), the best k', reranked as two-stage search does; top-10 ids."""
    from kidrr.runtime.search import top_k
    rows = _top_rows(globs[keep_rows] @ enc.globals[0], keep_rows, kp)
    rows = np.sort(rows)
    locs, gl = g.gather(rows)
    s = rt.runner.score(locs, gl, enc.padded_locals(), enc.globals, enc.lengths)
    return g.labels(np.array([r for r, _ in top_k(s[:, 0], TOP, ids=rows)], dtype=np.int64))


def search_features(rt, g, caps, spec) -> dict:
    """Filtered text search (p50/p99, top-10 against a brute-force filtered reference), query by a
    stored item (p50/p99, top-10 against the exact nearest globals) and, if asked, duplicate groups.
    The gallery is one segment whose row r is item r (kidrr bench scale builds it so), so the
    matching rows come from bench.scale.bucket_of, not from the gallery's metadata columns."""
    from kidrr.bench.scale import bucket_of
    if len(g.segments) != 1 or len(g.segments[0].dead):
        raise RuntimeError("search features are measured on a one-segment gallery without removals")
    g.first_stage = "ann" if g.segments[0].ann_info else "exact"
    globs = np.asarray(g.segments[0].globals, dtype=np.float32)      # read once, for the references
    buckets = bucket_of(np.arange(len(g)))
    kp = min(spec["shortlist"], len(g))
    out = {"first_stage": g.describe_first_stage(), "shortlist": kp, "rows": {}}
    encoded = [rt.encode_texts([c], on_long="truncate") for c in caps]
    for name, where, kept in spec["filters"]:
        keep_rows = np.flatnonzero(np.isin(buckets, kept))
        rt.search_text(caps[0], TOP, gallery=g, shortlist=kp, where=where)           # warm-up
        times, overlaps = [], []
        for c, enc in zip(caps, encoded):
            t = time.perf_counter()
            got = rt.search_text(c, TOP, gallery=g, shortlist=kp, where=where)    # the filter compiled per query
            times.append(time.perf_counter() - t)
            want = _filtered_reference(rt, g, globs, keep_rows, enc, kp)
            overlaps.append(_overlap([i for i, _ in got], want))
        out["rows"][name] = {"matches": int(len(keep_rows)), "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99),
                             "overlap_mean": float(np.mean(overlaps)),
                             "equal_fraction": float(np.mean(np.asarray(overlaps) >= 0.95))}
    rng = np.random.default_rng(spec.get("seed", 0))
    items = rng.choice(len(g), min(len(caps), len(g)), replace=False)
    ids = g.labels(items)
    rt.search_like_id(ids[0], TOP, gallery=g)                                        # warm-up
    times, overlaps = [], []
    for row, item in zip(items.tolist(), ids):
        t = time.perf_counter()
        got = rt.search_like_id(item, TOP, gallery=g)
        times.append(time.perf_counter() - t)
        sims = globs @ globs[row]
        sims[row] = -np.inf                                                          # the item itself is left out
        want = g.labels(np.sort(_top_rows(sims, np.arange(len(g)), TOP)))
        overlaps.append(_overlap([i for i, _ in got], want))
    out["rows"]["query by id"] = {"matches": None, "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99),
                                  "overlap_mean": float(np.mean(overlaps)),
                                  "equal_fraction": float(np.mean(np.asarray(overlaps) >= 0.95))}
    if spec.get("duplicates"):
        from kidrr.gallery.duplicates import find_duplicates
        t = time.perf_counter()
        groups = find_duplicates(g)
        out["duplicates"] = {"items": len(g), "seconds": time.perf_counter() - t, "groups": len(groups),
                             "items_in_groups": int(sum(len(x) for x in groups))}
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        spec = json.load(fh)
    write_atomic(argv[1], json.dumps(serve(spec)).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
