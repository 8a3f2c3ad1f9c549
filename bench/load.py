"""Load test of kidrr serve on loopback: throughput and latency against concurrency, and a replica kill.

    python bench/load.py                 # 10k synthetic items, k'=100, local + ray 1 shard + ray 2 shards
    python bench/load.py --items 100000 --configs ray2 --concurrency 8

Bounded: every level stops after --requests requests or --seconds seconds, whichever comes first,
and the kill run after --kill-seconds; every server it starts is stopped before it exits. Every
answer is checked against the result computed in this process (the same gallery and bundle):
exact ids in order, scores within 1e-4. For S shards in two-stage mode that result is a rerank of
the union of each shard's own k' shortlist (numpy argsort here + Retriever.score), which for S = 1
is the runtime's own two-stage search. Writes load.json, load.md and load.png to --out.
"""
from __future__ import annotations

import os

if __name__ == "__main__":
    # Before numpy loads: the in-process reference timing runs with one BLAS thread, as kidrr serve
    # does (kidrr.serve.cli.one_blas_thread); the services it starts inherit it.
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import asyncio  # noqa: E402
import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import click
import numpy as np
from tqdm import tqdm

from kidrr.errors import InputError
from kidrr.fileio import write_atomic, write_figure

SCORE_TOL = 1e-4
CONFIGS = {"local": ("local", 1), "ray1": ("ray", 1), "ray2": ("ray", 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- data: gallery, queries and the in-process answers ------------------------------------------
def build_gallery(rt, items: int, regions: int, work: str):
    """(gallery path, ids path, query captions): synthetic scenes encoded once and cached in work."""
    from kidrr.synthetic import SyntheticConfig, make_synthetic
    split = make_synthetic("test", SyntheticConfig(test_images=items, regions=regions,
                                                   feature_size=rt.feature_size, seed=11))
    path = os.path.join(work, f"gallery-{items}-{regions}-{rt.bundle_id[:12]}.npz")
    ids_path = os.path.join(work, f"ids-{items}.txt")
    if not os.path.exists(path):
        from kidrr.runtime import Gallery
        parts = []
        for i in tqdm(range(0, items, 1000), desc="encoding gallery", unit="k items"):
            parts.append(rt.encode_images(split.images[i:i + 1000]))
        Gallery(np.concatenate([p.locals for p in parts]), np.concatenate([p.globals for p in parts]),
                rt.bundle_id).save(path)
    write_atomic(ids_path, "".join(f"syn-{i:06d}\n" for i in range(items)).encode())
    return path, ids_path, list(dict.fromkeys(split.captions))


def usable_queries(rt, captions: list, count: int) -> list:
    """The first `count` captions this bundle accepts (its vocabulary and max_caption_len): the service
    would refuse the others with a 422, which is not what a load test measures."""
    from kidrr.errors import InputError as Refused
    from kidrr.runtime.captions import tokenize_captions
    pool = []
    for caption in captions:
        try:
            tokenize_captions(rt.bundle.vocab, [caption], rt.bundle.max_caption_len)
        except Refused:
            continue
        pool.append(caption)
        if len(pool) == count:
            return pool
    if not pool:
        raise InputError("none of the synthetic captions suits this bundle (vocabulary / max_caption_len)")
    return pool


def expected_answer(rt, gallery, query: str, k: int, shortlist: int, ranges: list) -> list:
    """[(position, score)]: rerank of the union of every shard's own k' shortlist, ranked as top_k."""
    qglob = np.asarray(rt.encode_texts([query]).globals[0])
    union = []
    for start, stop in ranges:
        sims = gallery.globals[start:stop] @ qglob
        union.extend(start + np.argsort(-sims, kind="stable")[:shortlist])
    union = np.array(sorted(union))
    from kidrr.runtime import Gallery
    sub = Gallery(np.array(gallery.locals[union]), np.array(gallery.globals[union]), gallery.bundle_id)
    scores = rt.score(sub, [query])[:, 0]
    order = np.lexsort((union, -scores))[:k]
    return [(int(union[i]), float(scores[i])) for i in order]


def judge(results: list, want: list) -> str:
    """'right', 'tie' (same scores, tied items in another order) or 'wrong'."""
    got = [(r["position"], r["score"]) for r in results]
    if len(got) == len(want) and [p for p, _ in got] == [p for p, _ in want] and \
            np.allclose([s for _, s in got], [s for _, s in want], atol=SCORE_TOL):
        return "right"
    if len(got) == len(want) and np.allclose([s for _, s in got], [s for _, s in want], atol=1e-6):
        return "tie"
    return "wrong"


# ---- the load generator --------------------------------------------------------------------------
async def drive(url, queries, expected, concurrency, max_requests, max_seconds, k, shortlist, clock0=None):
    """Closed loop: `concurrency` workers, each sending its next request when the last one returns."""
    import httpx
    records = []
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, trust_env=False) as client:
        start = time.perf_counter()
        clock0 = start if clock0 is None else clock0
        deadline = start + max_seconds

        async def worker():
            while True:
                i = next(counter)
                if i >= max_requests or time.perf_counter() > deadline:
                    return
                q = i % len(queries)
                sent = time.perf_counter()
                try:
                    r = await client.post("/v1/search/images", json={"query": queries[q], "k": k, "shortlist": shortlist})
                    status = r.status_code
                    verdict = judge(r.json()["results"], expected[q]) if status == 200 else None
                except httpx.HTTPError as exc:
                    status, verdict = type(exc).__name__, None
                records.append({"t": sent - clock0, "latency": time.perf_counter() - sent, "status": status,
                                "verdict": verdict})
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return records, elapsed


def summarise(records: list, elapsed: float, concurrency: int) -> dict:
    ok = [r["latency"] for r in records if r["status"] == 200]
    errors: dict = {}
    for r in records:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    p50, p90, p99 = (np.percentile(ok, [50, 90, 99]) * 1e3).tolist() if ok else (None,) * 3
    verdicts = [r["verdict"] for r in records if r["verdict"]]
    return {"concurrency": concurrency, "requests": len(records), "answered": len(ok),
            "seconds": elapsed, "throughput_per_s": len(ok) / elapsed if elapsed else 0.0,
            "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "errors": errors,
            "wrong": verdicts.count("wrong"), "tie_order": verdicts.count("tie"), "load_avg": os.getloadavg()[0]}


def wait_ready(url: str, seconds: float, proc=None) -> None:
    import httpx
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/v1/ready", timeout=5, trust_env=False).json().get("ready"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} was not ready within {seconds} s")


# ---- the services --------------------------------------------------------------------------------
class LocalService:
    def __init__(self, bundle, gallery, ids, threads, workers, settings, log_path):
        self.port = free_port()
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        self.log = open(log_path, "w")      # a file, not a pipe nobody reads (a full pipe would stall it)
        self.proc = subprocess.Popen([sys.executable, "-m", "kidrr.serve.cli", "--bundle", bundle, "--gallery",
                                      gallery, "--ids", ids, "--port", str(self.port), "--threads", str(threads),
                                      "--workers", str(workers), "--max-queue", str(settings.max_queue),
                                      "--max-batch", str(settings.max_batch)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url, 120, self.proc)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class RayServices:
    """One local Ray for every ray configuration; each deploy replaces the previous application."""

    def __init__(self):
        from kidrr.serve import ray_engine
        self.ray_engine = ray_engine
        self.started = ray_engine.start_ray(None, num_cpus=2)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def deploy(self, bundle, gallery, ids, shards, replicas, settings):
        from kidrr.runtime import Retriever
        from kidrr.serve.catalog import open_catalog
        with Retriever(bundle, threads=1) as front:
            catalog, _ = open_catalog(front, [gallery], shards, ids)
        app = self.ray_engine.build_application(bundle, catalog, settings, replicas=replicas, threads=1)
        self.ray_engine.deploy(app, "127.0.0.1", self.port)
        wait_ready(self.url, 180)

    def stop(self):
        self.ray_engine.stop_ray(self.started)


def kill_run(services, queries, expected, seconds, kill_at, k, shortlist, replicas) -> dict:
    """Concurrency 8 for `seconds`; one replica of shard0 killed at `kill_at` s; when is it whole again?"""
    engine = services.ray_engine
    before = engine.replica_actor_names("shard0")
    events = {}
    stop = threading.Event()
    clock0 = time.perf_counter()

    def killer():
        time.sleep(kill_at)
        victim = before[0]
        engine.kill_replica(victim)
        events["kill"] = time.perf_counter() - clock0
        while not stop.is_set():
            names = engine.replica_actor_names("shard0")
            if victim not in names and len(names) >= replicas:
                events["replaced"] = time.perf_counter() - clock0
                return
            time.sleep(0.25)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    records, elapsed = asyncio.run(drive(services.url, queries, expected, 8, 10**9, seconds, k, shortlist, clock0))
    stop.set()
    thread.join(5)
    kill_t = events.get("kill")
    failed = [r for r in records if r["status"] != 200]
    after = [r for r in records if kill_t is not None and r["t"] >= kill_t]
    last_fail = max((r["t"] + r["latency"] for r in failed), default=None)
    whole_again = None
    if kill_t is not None and "replaced" in events:
        whole_again = max(events["replaced"], last_fail or 0.0) - kill_t
    return {"replicas_per_shard": replicas, "seconds": elapsed, "kill_at_s": kill_t,
            "replacement_alive_after_s": None if kill_t is None or "replaced" not in events
            else events["replaced"] - kill_t,
            "requests": len(records), "requests_after_kill": len(after), "failed": len(failed),
            "failed_by_status": summarise(records, elapsed, 8)["errors"],
            "whole_again_after_s": whole_again,
            "wrong": sum(r["verdict"] == "wrong" for r in records),
            "tie_order": sum(r["verdict"] == "tie" for r in records),
            "timeline": [[round(r["t"], 4), round(r["latency"], 4), r["status"]] for r in records]}


# ---- report ----------------------------------------------------------------------------------------
def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3 if report.get("kill") else 2, figsize=(15 if report.get("kill") else 10, 4))
    for name, rows in report["sweeps"].items():
        rows = [r for r in rows if r["p50_ms"] is not None]
        c = [r["concurrency"] for r in rows]
        line, = axes[0].plot(c, [r["p50_ms"] for r in rows], marker="o", label=f"{name} p50")
        axes[0].plot(c, [r["p99_ms"] for r in rows], marker="x", ls="--", color=line.get_color(), label=f"{name} p99")
        axes[1].plot(c, [r["throughput_per_s"] for r in rows], marker="o", label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)",
                title=f"latency vs load ({report['items']} items, k'={report['shortlist']})")
    axes[1].set(xscale="log", xlabel="concurrent clients", ylabel="answered queries / s", title="throughput")
    for ax in axes[:2]:
        ax.set_xticks(report["concurrency"], [str(c) for c in report["concurrency"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    kill = report.get("kill")
    if kill:
        t = np.array([r[0] for r in kill["timeline"]])
        lat = np.array([r[1] for r in kill["timeline"]]) * 1e3
        bad = np.array([r[2] != 200 for r in kill["timeline"]])
        axes[2].scatter(t[~bad], lat[~bad], s=4, label="answered")
        axes[2].scatter(t[bad], lat[bad], s=12, marker="x", color="red", label=f"failed ({int(bad.sum())})")
        if kill["kill_at_s"] is not None:
            axes[2].axvline(kill["kill_at_s"], color="k", ls=":", label="replica killed")
        if kill["whole_again_after_s"] is not None:
            axes[2].axvline(kill["kill_at_s"] + kill["whole_again_after_s"], color="g", ls="--", label="whole again")
        axes[2].set(yscale="log", xlabel="seconds", ylabel="latency (ms)",
                    title=f"ray 2 shards x {kill['replicas_per_shard']} replicas, one killed (concurrency 8)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = [f"Load test: {report['items']} synthetic items (R={report['regions']}), k={report['k']}, "
             f"k'={report['shortlist']}, host {report['host']}; load average at start {report['load_avg_start']:.1f}",
             "", f"In-process call (Retriever.search_text, {report['in_process']['threads']} threads): "
             f"p50 {report['in_process']['p50_ms']:.1f} ms, p99 {report['in_process']['p99_ms']:.1f} ms", "",
             "| config | clients | answered/s | p50 ms | p90 ms | p99 ms | errors by status | wrong | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.1f}"   # noqa: E731
    for name, rows in report["sweeps"].items():
        for r in rows:
            errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
            lines.append(f"| {name} | {r['concurrency']} | {r['throughput_per_s']:.1f} | {fmt(r['p50_ms'])} | "
                         f"{fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {errs} | {r['wrong']} | {r['load_avg']:.1f} |")
    for name, o in report.get("overhead", {}).items():
        lines.append(f"\nService overhead at concurrency 1 ({name}): p50 {o['service_p50_ms']:.1f} ms vs in-process "
                     f"{o['in_process_p50_ms']:.1f} ms: +{o['p50_difference_ms']:.1f} ms")
    local8 = next((r for r in report["sweeps"].get("local", []) if r["concurrency"] == 8), None)
    if local8 and local8["p99_ms"] is not None:
        ok = local8["throughput_per_s"] >= 50 and local8["p99_ms"] <= 200 and not local8["errors"]
        lines.append(f"\nTarget (local, concurrency 8: >= 50 queries/s, p99 <= 200 ms, no errors): "
                     f"{'met' if ok else 'NOT met'} ({local8['throughput_per_s']:.1f}/s, p99 {local8['p99_ms']:.0f} ms)")
    kill = report.get("kill")
    if kill:
        lines.append(f"\nReplica kill (ray, 2 shards x {kill['replicas_per_shard']} replicas, concurrency 8, "
                     f"{kill['seconds']:.0f} s): {kill['requests']} requests, {kill['failed']} failed "
                     f"{kill['failed_by_status'] or ''}, replacement alive after "
                     f"{fmt(kill['replacement_alive_after_s'])} s, whole again after {fmt(kill['whole_again_after_s'])} s, "
                     f"wrong answers {kill['wrong']}")
    return "\n".join(lines) + "\n"


def _ints(text):
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise InputError(f"expected integers >= 1, got {text!r}")
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", default=None, help="bundle folder (default: the shipped model, exported to the cache)")
@click.option("--items", type=click.IntRange(100, 1_000_000), default=10_000, show_default=True)
@click.option("--regions", type=click.IntRange(3), default=16, show_default=True)
@click.option("--queries", type=click.IntRange(1), default=200, show_default=True, help="distinct query captions")
@click.option("--k", type=click.IntRange(1), default=10, show_default=True)
@click.option("--shortlist", type=click.IntRange(1), default=100, show_default=True, help="k'")
@click.option("--configs", default="local,ray1,ray2", show_default=True, help=f"of {','.join(CONFIGS)}")
@click.option("--concurrency", default="1,8,32", show_default=True)
@click.option("--requests", type=click.IntRange(10), default=600, show_default=True, help="per level, at most")
@click.option("--seconds", type=click.FloatRange(1), default=20.0, show_default=True, help="per level, at most")
@click.option("--kill/--no-kill", default=True, show_default=True, help="the replica-kill run (needs ray)")
@click.option("--kill-seconds", type=click.FloatRange(5), default=40.0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="onnxruntime threads: local engine and in-process reference timing")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="local engine batch workers")
@click.option("--max-batch", type=click.IntRange(1, 256), default=4, show_default=True, help="queries per batch")
@click.option("--work", default=None, help="cache folder for the gallery (default: $KIDRR_CACHE/load)")
@click.option("--out", default="kidrr-load-out", show_default=True)
def main(bundle, items, regions, queries, k, shortlist, configs, concurrency, requests, seconds, kill, kill_seconds,
         threads, workers, max_batch, work, out):
    """Load-test kidrr serve on 127.0.0.1 (bounded; stops by itself). See docs/serve.md."""
    from kidrr.runtime import Retriever
    from kidrr.serve.settings import Settings
    from kidrr.serve.shards import split_rows

    from kidrr.bench import sources
    from kidrr.bench.cli import _host
    levels = _ints(concurrency)
    names = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise click.BadParameter(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    if bundle is None:
        ck_dir, ck_sha = sources.resolve_checkpoint(None)
        bundle = sources.export_cached(ck_dir, ck_sha, "fp32", log=lambda m: click.echo(m, err=True))
    bundle = os.path.abspath(bundle)
    work = os.path.abspath(work or os.path.join(sources.cache_root(), "load"))
    os.makedirs(work, exist_ok=True)
    report = {"items": items, "regions": regions, "k": k, "shortlist": shortlist, "concurrency": levels,
              "host": _host(), "load_avg_start": os.getloadavg()[0], "sweeps": {}, "overhead": {},
              "limits": {"requests_per_level": requests, "seconds_per_level": seconds},
              "local": {"threads": threads, "workers": workers}, "max_batch": max_batch}
    with Retriever(bundle, threads=threads) as rt:
        gallery_path, ids_path, captions = build_gallery(rt, items, regions, work)
        pool = usable_queries(rt, captions, queries)
        gallery = rt.load_gallery(gallery_path)
        expected = {}
        for shards in sorted({CONFIGS[c][1] for c in names} | ({2} if kill else set())):
            ranges = split_rows(items, shards)
            expected[shards] = [expected_answer(rt, gallery, q, k, shortlist, ranges)
                                for q in tqdm(pool, desc=f"in-process answers ({shards} shard(s))")]
        times = []
        for q in pool[:100]:
            t0 = time.perf_counter()
            rt.search_text(q, k, gallery=gallery, shortlist=shortlist)
            times.append(time.perf_counter() - t0)
        report["in_process"] = {"threads": threads, "calls": len(times),
                                "p50_ms": float(np.percentile(times, 50) * 1e3),
                                "p99_ms": float(np.percentile(times, 99) * 1e3)}
        del gallery
    settings = Settings(max_queue=64, max_batch=max_batch)
    ray_services = None
    try:
        for name in names:
            engine, shards = CONFIGS[name]
            if engine == "local":
                service = LocalService(bundle, gallery_path, ids_path, threads, workers, settings,
                                       os.path.join(work, "local-service.log"))
                url = service.url
            else:
                ray_services = ray_services or RayServices()
                ray_services.deploy(bundle, gallery_path, ids_path, shards, 1, settings)
                url = ray_services.url
            try:
                asyncio.run(drive(url, pool, expected[shards], 2, 20, 30, k, shortlist))   # warm-up, not reported
                rows = []
                for c in tqdm(levels, desc=f"{name} sweep"):
                    records, elapsed = asyncio.run(drive(url, pool, expected[shards], c, requests, seconds, k, shortlist))
                    rows.append(summarise(records, elapsed, c))
                report["sweeps"][name] = rows
                # Overhead: only where the service does the in-process call's work (one shard, not split).
                if shards == 1 and rows[0]["concurrency"] == 1 and rows[0]["p50_ms"] is not None:
                    report["overhead"][name] = {"service_p50_ms": rows[0]["p50_ms"],
                                                "in_process_p50_ms": report["in_process"]["p50_ms"],
                                                "p50_difference_ms": rows[0]["p50_ms"] - report["in_process"]["p50_ms"]}
            finally:
                if engine == "local":
                    service.stop()
        if kill:
            ray_services = ray_services or RayServices()
            ray_services.deploy(bundle, gallery_path, ids_path, 2, 2, settings)
            asyncio.run(drive(ray_services.url, pool, expected[2], 2, 20, 30, k, shortlist))
            report["kill"] = kill_run(ray_services, pool, expected[2], kill_seconds, min(10.0, kill_seconds / 4), k,
                                      shortlist, 2)
    finally:
        if ray_services is not None:
            ray_services.stop()
    report["load_avg_end"] = os.getloadavg()[0]
    os.makedirs(out, exist_ok=True)
    write_atomic(os.path.join(out, "load.json"), json.dumps(report, indent=1).encode())
    write_atomic(os.path.join(out, "load.md"), markdown(report).encode())
    plot(report, os.path.join(out, "load.png"))
    click.echo(markdown(report))
    click.echo(f"wrote {out}/load.json, load.md, load.png")


if __name__ == "__main__":
    main()
