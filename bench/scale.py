"""kidrr bench scale: format-2 galleries of 10k / 100k (/ 1M) synthetic items, built, opened and searched.

Items are drawn around the shipped model's own encodings of the synthetic test set, so caption
queries have real neighbours: each item mixes the globals of two test images (weights 0.6-1 and
the rest) plus noise, and its R=49 locals are regions of those two images plus noise, all unit
norm like the encoder's. Serving (open, latency, anonymous RSS) runs in a fresh process per
gallery (scale_worker.py) so the parent's generation buffers are not counted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from kidrr.errors import InputError
from kidrr.fileio import check_report_path, write_atomic

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
REGIONS = 49
BATCH = 5_000
ADD_ROWS = 10_000
HNSW_MAX = 100_000      # HNSW builds are minutes per 100k on two cores: measured up to here
DUPLICATES_AT = 100_000  # duplicate groups are timed over this gallery size (the target)


def base_vectors(bundle: str, threads: int, data: str | None = None, split_name: str = "test"):
    """The model's locals/globals of a split's images, and its captions: the synthetic test set, or
    `data`'s features (a model trained on kidrr features output, e.g. the shipped photo model on
    f8k-photos dev)."""
    from kidrr.runtime import open_bundle
    from kidrr.synthetic import make_synthetic
    if data:
        from kidrr.evaluate import resolve_split
        split = resolve_split(data, split_name)
    else:
        split = make_synthetic("test")
    with open_bundle(bundle, threads=threads) as rt:
        g = rt.encode_images(split.images)
    return np.asarray(g.locals), np.asarray(g.globals), split


def _unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


NOISE_BANK = 1024
_banks: dict = {}


def _noise_bank(seed: int, regions: int, dim: int, noise: float) -> np.ndarray:
    """Noise for the locals, drawn once: fresh normals for 12.5k floats per item made generation the
    slowest part of a 1M build on two shared cores."""
    key = (seed, regions, dim, noise)
    if key not in _banks:
        rng = np.random.default_rng([seed, 1 << 40])
        _banks[key] = rng.standard_normal((NOISE_BANK, regions, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
    return _banks[key]


def synthetic_items(base_locals, base_globals, start: int, rows: int, seed: int, noise: float = 0.35, out=None):
    """(globals, locals, ids) of items start..start+rows, a pure function of (seed, start).

    Globals: unit norm. Locals: a base region plus a signed noise-bank entry, scaled by
    1/sqrt(1 + noise^2) so their norms stay within a few percent of 1 (the encoder's are 1).
    """
    rng = np.random.default_rng([seed, start])
    nb, r0, d = base_locals.shape
    a, b = rng.integers(0, nb, rows), rng.integers(0, nb, rows)
    w = rng.uniform(0.6, 1.0, (rows, 1)).astype(np.float32)
    globs = _unit(w * base_globals[a] + (1 - w) * base_globals[b]
                  + rng.standard_normal((rows, d), dtype=np.float32) * (noise / np.sqrt(d)))
    pick = rng.integers(0, r0, (rows, REGIONS))
    src = np.where(rng.random((rows, REGIONS)) < w, a[:, None], b[:, None])
    bank = _noise_bank(seed, REGIONS, d, noise)
    which = rng.integers(0, NOISE_BANK, rows)
    sign = np.where(rng.random(rows) < 0.5, -1.0, 1.0).astype(np.float32)
    locs = out if out is not None and out.shape == (rows, REGIONS, d) else np.empty((rows, REGIONS, d), np.float32)
    flat = base_locals.reshape(-1, d)
    scale = np.float32(1 / np.sqrt(1 + noise ** 2))
    for i in range(0, rows, 64):       # 64 items at a time: small temporaries, reused (see segment_io)
        j = slice(i, min(rows, i + 64))
        part = flat[(src[j] * r0 + pick[j]).ravel()].reshape(-1, REGIONS, d)
        part += bank[which[j]] * sign[j, None, None]
        np.multiply(part, scale, out=locs[j])
    ids = [f"item-{start + i:07d}" for i in range(rows)]
    return globs.astype(np.float32), locs, ids


BUCKETS = 1_000     # every item carries {"bucket": 0..999}: filters of known selectivity
# The filters the search-feature rows time: (name, filter, the buckets it keeps).
FILTERS = (("filter 1%", {"bucket": {"lt": 10}}, list(range(10))),
           ("filter 0.1%", {"bucket": 7}, [7]))


def bucket_of(rows) -> np.ndarray:
    """The metadata bucket of items `rows` (their numbers): a fixed scramble, so a bucket's items
    are spread over the whole gallery and its IVF lists, not one contiguous run."""
    r = np.asarray(rows, dtype=np.uint64)
    return ((r * np.uint64(2654435761) + np.uint64(12345)) % np.uint64(1 << 32) % np.uint64(BUCKETS)).astype(np.int64)


def build(folder, bundle_id, base, rows, method, seed, progress, locals_dtype="fp16"):
    """Create + add `rows` items as one segment; (total seconds, seconds spent generating)."""
    from kidrr.gallery import GalleryWriter, create_gallery
    create_gallery(folder, bundle_id, REGIONS, base[1].shape[1], locals_dtype, method, ann_min_rows=5_000)
    spent = [0.0]

    def batches():
        buf = np.empty((BATCH, REGIONS, base[1].shape[1]), np.float32)   # reused: the writer copies each batch out
        for start in range(0, rows, BATCH):
            t = time.perf_counter()
            item = synthetic_items(*base[:2], start, min(BATCH, rows - start), seed, out=buf)
            meta = [{"bucket": int(b)} for b in bucket_of(range(start, start + len(item[2])))]
            spent[0] += time.perf_counter() - t
            yield (*item, meta)
    t = time.perf_counter()
    with GalleryWriter(folder, progress=progress) as w:
        w.add_batches(batches(), rows=rows)
    return time.perf_counter() - t, spent[0]


def bytes_needed(sizes, dim: int, locals_dtype: str, keep: bool) -> int:
    """Disk the run's galleries take (all of them with --keep, else the largest), from the format:
    locals, their int8 scales, globals, ids, and the IVF-Flat index (a copy of the globals), plus
    the 10k items each gallery gets added."""
    from kidrr.gallery.layout import LOCALS_DTYPES
    per_item = (REGIONS * dim * np.dtype(LOCALS_DTYPES[locals_dtype]).itemsize
                + (REGIONS * 4 if locals_dtype == "int8" else 0) + 2 * (dim * 4 + 8) + 12 + 8 + 16
                + 8)     # the bucket: one float64 metadata value
    items = [n + ADD_ROWS for n in sizes]
    return per_item * (sum(items) if keep else max(items))


def check_disk(folder: str, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise InputError(f"the galleries need about {need / 2**30:.1f} GiB but {folder} has {free / 2**30:.1f} GiB "
                         f"free; give --work on a larger disk, a smaller --max-images, or drop --keep")


FORMAT = "kidrr-bench-scale/1"
REPORTS = ("scale.json", "scale.md", "scale_latency.png", "scale_search.png")


def work_folders(sizes, methods, precision_folds: int) -> list:
    """The folder names a run makes in --work (and deletes unless --keep)."""
    names = [f"test-{d}" for d in ("fp32", "fp16", "int8")] if precision_folds else []
    return names + [f"g{n}-{m}" for n in sizes for m in methods if not (m == "hnsw" and n > HNSW_MAX)]


def check_replaceable_gallery(folder: str) -> None:
    """InputError unless folder is absent or a kidrr gallery holding only a gallery's own files (a
    previous run's, kept with --keep): a run replaces only what it made."""
    from kidrr.errors import DataError
    from kidrr.gallery.layout import LOCK, MANIFEST, SEGMENT_NAME, STAGING_PREFIX, read_manifest
    if not os.path.lexists(folder):
        return
    why = None
    if os.path.islink(folder) or not os.path.isdir(folder):
        why = "is not a folder"
    else:
        try:
            read_manifest(folder)
        except DataError:
            why = "is not a kidrr gallery"
    if why is None:
        inner = re.compile(r"^(globals|locals|scales|id_offsets|id_hashes)\.npy$|^ids\.utf8$|^tombstones-[0-9]+\.npy$"
                           r"|^ann-(ivf|hnsw)\.faiss$|^\.tmp-")
        foreign = []
        for e in os.listdir(folder):
            path = os.path.join(folder, e)
            if e in (MANIFEST, LOCK) or e.startswith(STAGING_PREFIX):
                continue
            if SEGMENT_NAME.match(e) and os.path.isdir(path) and not os.path.islink(path):
                foreign += [f"{e}/{x}" for x in os.listdir(path) if not inner.match(x)]
            else:
                foreign.append(e)
        if foreign:
            why = f"holds files a gallery does not ({', '.join(sorted(foreign)[:5])})"
    if why:
        raise InputError(f"--work: {folder} {why}; kidrr bench scale replaces only galleries it made, so nothing "
                         f"was deleted. Move it away or choose another --work")


def check_scale_outputs(work: str | None, out: str, json_path: str | None, folders) -> None:
    """Before the run: every folder it would replace in --work, the reports in --out and --json are
    kidrr bench scale's own (or absent), and --out is writable."""
    from kidrr.fileio import check_report_path, check_writable_folder, report_format
    if work:
        if os.path.exists(work) and not os.path.isdir(work):
            raise InputError(f"--work {work} is not a folder")
        for name in folders:
            check_replaceable_gallery(os.path.join(work, name))
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} is not a folder")
    if any(os.path.lexists(os.path.join(out, r)) for r in REPORTS) \
            and report_format(os.path.join(out, "scale.json")) != FORMAT:
        raise InputError(f"--out {out} holds scale reports that no kidrr bench scale run wrote (its scale.json is not "
                         f"a {FORMAT} report); they were not overwritten. Choose another --out")
    check_writable_folder(os.path.abspath(out), "--out")
    if json_path:
        check_report_path(json_path, "--json", FORMAT)


def disk_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(folder) for f in fs)


def serve(spec: dict, work: str) -> dict:
    # The worker's spec and result live in a folder of their own, gone afterwards (nothing left in --work).
    with tempfile.TemporaryDirectory(prefix=".kidrr-scale-serve-", dir=work) as tmp:
        spec_path, out_path = os.path.join(tmp, "serve.spec.json"), os.path.join(tmp, "serve.result.json")
        write_atomic(spec_path, json.dumps(spec).encode())
        threads = str(spec["threads"])
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        proc = subprocess.run([sys.executable, "-m", "kidrr.bench.scale_worker", spec_path, out_path], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not os.path.exists(out_path):
            return {"status": "failed", "reason": (proc.stderr.strip().splitlines() or ["no message"])[-1]}
        with open(out_path) as fh:
            return json.load(fh)


def precision_check(bundle: str, base, split, folds: int, threads: int, work: str) -> dict:
    """rSum of exhaustive scoring with fp32 / fp16 / int8 format-2 galleries of the test set (5fold folds)."""
    from kidrr.gallery import GalleryWriter, create_gallery, open_gallery
    from kidrr.metrics import average, folds as fold_ranges, recall
    from kidrr.runtime import Gallery, open_bundle
    out = {}
    with open_bundle(bundle, threads=threads) as rt:
        ranges = fold_ranges(len(split.images), "5fold")[:folds]
        fold_caps = [rt.encode_texts(split.captions[5 * a:5 * b], on_long="truncate") for a, b in ranges]
        for dtype in ("fp32", "fp16", "int8"):
            folder = os.path.join(work, f"test-{dtype}")
            if os.path.lexists(folder):
                check_replaceable_gallery(folder)
                shutil.rmtree(folder)
            create_gallery(folder, rt.bundle_id, base[0].shape[1], base[0].shape[2], dtype, "ivf")
            with GalleryWriter(folder) as w:
                w.add(base[1], base[0], [str(i) for i in range(len(base[1]))])
            g = open_gallery(folder, bundle_id=rt.bundle_id)
            locs, globs = g.gather(np.arange(len(g)))       # what the rerank reads from this gallery
            per_fold = []
            for (a, b), caps in zip(ranges, fold_caps):
                scores = rt.score(Gallery(locs[a:b], globs[a:b], rt.bundle_id), caps, progress=True)
                per_fold.append(recall(scores, split.caption_image[5 * a:5 * b] - a))
            out[dtype] = average(per_fold)["rsum"]
            shutil.rmtree(folder)
    return {"folds": len(ranges), "images_per_fold": ranges[0][1] - ranges[0][0], "rsum": out,
            "delta_fp16": out["fp16"] - out["fp32"], "delta_int8": out["int8"] - out["fp32"]}


def run_scale(max_images: int, shortlists, queries: int, threads: int, work: str | None, out: str,
              json_path: str | None, methods, precision_folds: int, keep: bool, seed: int = 0,
              progress: bool = True, locals_dtype: str = "fp16", checkpoint: str | None = None,
              data: str | None = None, split_name: str = "test") -> dict:
    from . import sources
    if max_images < 1_000:
        raise InputError(f"--max-images must be >= 1000, got {max_images}")
    sizes = [n for n in DEFAULT_SIZES if n <= max_images] or [max_images]
    check_scale_outputs(work, out, json_path, work_folders(sizes, methods, precision_folds))   # before any work
    started = time.perf_counter()
    bundles, _, _ = sources.resolve_bundles(checkpoint, None, ["fp32"])
    bundle = bundles["fp32"]
    from kidrr.runtime.bundle import load_bundle
    loaded = load_bundle(bundle, verify=False)
    bundle_id = loaded.identity
    base = base_vectors(bundle, threads, data, split_name)
    if base[0].shape[1] != REGIONS:
        raise InputError(f"the scale benchmark's items have {REGIONS} regions; this model's images have "
                         f"{base[0].shape[1]}")
    split = base[2]
    rng = np.random.default_rng(seed)
    query_caps = [split.captions[i] for i in rng.choice(len(split.captions), queries, replace=False)]
    os.makedirs(out, exist_ok=True)
    root = work or tempfile.mkdtemp(prefix="kidrr-scale-")
    os.makedirs(root, exist_ok=True)
    run = {"format": FORMAT, "regions": REGIONS, "dim": int(base[1].shape[1]), "locals_dtype": locals_dtype,
           "queries": queries, "shortlists": list(shortlists), "threads": threads, "sizes": {},
           "load_before": os.getloadavg()}
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if progress else (lambda m: None)
    try:
        check_disk(root, bytes_needed(sizes, run["dim"], locals_dtype, keep))   # now, not 20 minutes into a 1M build
        if precision_folds:
            say("precision: fp32 / fp16 / int8 locals on the synthetic test set")
            run["precision"] = precision_check(bundle, base, split, precision_folds, threads, root)
            say(f"  {run['precision']}")
        for n in sizes:
            for method in methods:
                if method == "hnsw" and n > HNSW_MAX:
                    continue
                folder = os.path.join(root, f"g{n}-{method}")
                if os.path.lexists(folder):
                    check_replaceable_gallery(folder)     # again, right before deleting
                    shutil.rmtree(folder)
                say(f"size {n:,}, {method}: building")
                total_s, gen_s = build(folder, bundle_id, base, n, method, seed, progress, locals_dtype)
                size = disk_bytes(folder)
                say(f"  built in {total_s - gen_s:.1f} s (+{gen_s:.1f} s generating), {size / 2**30:.2f} GiB; serving")
                res = serve({"bundle": bundle, "gallery": folder, "captions": query_caps, "shortlists": list(shortlists),
                             "threads": threads, "exhaustive": n <= 10_000, "batch": 16,
                             "search_features": {"shortlist": min(max(shortlists), 100), "filters": FILTERS, "seed": seed,
                                                 "duplicates": n == DUPLICATES_AT}}, root)
                extra = synthetic_items(*base[:2], n, ADD_ROWS, seed)
                from kidrr.gallery import GalleryWriter
                t = time.perf_counter()
                with GalleryWriter(folder) as w:
                    w.add(*extra)
                add_s = time.perf_counter() - t
                res.update({"build_s": total_s - gen_s, "generate_s": gen_s, "disk_bytes": size,
                            "add_10k_s": add_s, "load": os.getloadavg()})
                run["sizes"].setdefault(str(n), {})[method] = res
                say(f"  {json.dumps(_short(res))}")
                if not keep:
                    shutil.rmtree(folder)
    finally:
        if not keep and not work:
            shutil.rmtree(root, ignore_errors=True)
    run["wall_s"] = time.perf_counter() - started
    run["load_after"] = os.getloadavg()
    from .scale_report import markdown, plot, plot_search
    run["plot"] = plot(run, os.path.join(out, "scale_latency.png"))
    run["plot_search"] = plot_search(run, os.path.join(out, "scale_search.png"))
    blob = json.dumps(run, indent=1).encode()
    write_atomic(os.path.join(out, "scale.json"), blob)
    write_atomic(os.path.join(out, "scale.md"), markdown(run).encode())
    if json_path:
        check_report_path(json_path, "--json", FORMAT)    # again, right before the overwrite
        write_atomic(os.path.abspath(json_path), blob)
    return run


def _short(res: dict) -> dict:
    keys = ("status", "open_ms", "rss_anon_mb", "build_s", "add_10k_s")
    out = {k: res[k] for k in keys if k in res}
    for name, v in res.get("configs", {}).items():
        out[name] = (round(v["single_p50_ms"], 1), round(v["single_p99_ms"], 1), v.get("overlap_exact"))
    return out
