"""GPU check: the published dims on a Flickr30K-sized problem, every GPU path installed, one JSON file.

    python bench/gpu_check.py --out gpu_check.json          (or python -m kidrr.bench.gpu_check)

Random weights at D=1024, S=256, R=36, F=2048 (speed and parity only: recall of random weights is
at chance); 1,000 images x 5,000 captions (lengths 8..22 tokens, Flickr30K-like), exhaustive scoring
and two-stage search. Paths, each timed the same way (encode images, encode captions, score all
pairs; token ids in, so tokenisation is not included; host<->device copies are included for the
runtime paths, not for torch, whose tensors stay on the GPU):
  torch-cuda fp32, fp16 autocast, bf16 autocast   the PyTorch model itself
  ort-cuda, ort-trt                                the runtime (kidrr.runtime) with onnxruntime-gpu EPs
  trt                                              the runtime's native TensorRT backend
Absent paths are recorded as skipped with the reason. Each exhaustive run is first timed on one
tile; if the whole job would overrun the time budget, a prefix of the images is scored instead
and the JSON says so. Without a CUDA GPU it exits 2 with a one-line reason and writes nothing.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import click
import numpy as np

# Before torch loads libgomp: its spin-wait collapses on shared cores (see cli.py); no effect on CUDA kernels.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PUBLISHED = dict(embed_size=1024, sim_size=256, feature_size=2048)
REGIONS = 36
SMALL = dict(embed_size=32, sim_size=16, feature_size=24)   # --dims small: exercises the code on any host
VOCAB = 1000


class NoGpu(Exception):
    pass


def require_gpu(allow_cpu: bool):
    """(torch, device); NoGpu with a one-line reason when there is no usable CUDA GPU."""
    try:
        import torch
    except ImportError as exc:
        raise NoGpu(f"torch is not installed ({exc}); install a CUDA build of torch on the GPU host") from None
    if torch.cuda.is_available():
        return torch, torch.device("cuda")
    if allow_cpu:
        return torch, torch.device("cpu")
    build = torch.version.cuda
    why = "this torch is a CPU-only build" if build is None else f"torch (CUDA {build}) sees no CUDA device"
    raise NoGpu(f"no NVIDIA GPU usable: torch.cuda.is_available() is False ({why}, torch {torch.__version__})")


class Clock:
    """The time budget: every stage asks what is left before it starts."""

    def __init__(self, budget_s: float):
        self.start, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def make_problem(images: int, captions: int, dims: dict, seed: int):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(images, REGIONS, dims["feature_size"])).astype(np.float32)
    lengths = rng.integers(8, 23, size=captions).astype(np.int64)   # tokens incl. <start>/<end>
    ids = np.zeros((captions, int(lengths.max())), dtype=np.int64)
    for j, n in enumerate(lengths):
        ids[j, 0], ids[j, n - 1] = 1, 2                                # <start>, <end>
        ids[j, 1:n - 1] = rng.integers(4, VOCAB, size=n - 2)
    return feats, ids, lengths


def make_model(torch, dims: dict, seed: int):
    from kidrr.config import ModelConfig
    from kidrr.model import KIDRR
    torch.manual_seed(seed)
    return KIDRR(ModelConfig(vocab_size=VOCAB, **dims)).eval()


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _tiles(n, m, tile):
    return [(i, j) for i in range(0, n, tile[0]) for j in range(0, m, tile[1])]


def torch_path(torch, model, device, feats, ids, lengths, dtype, tile, clock, budget_share) -> tuple[dict, np.ndarray]:
    """Encode and score everything on the device (autocast for fp16/bf16); scores come back once."""
    amp = dtype is not None
    ctx = (lambda: torch.autocast(device_type=device.type, dtype=dtype)) if amp else contextlib.nullcontext
    order = np.argsort(lengths, kind="stable")
    with torch.inference_mode(), ctx():
        _sync(torch, device)
        t0 = time.perf_counter()
        f = torch.from_numpy(feats).to(device)
        il, ig = zip(*(model.encode_images(f[i:i + 256]) for i in range(0, len(f), 256)))
        il, ig = torch.cat(il), torch.cat(ig)
        _sync(torch, device)
        t_img = time.perf_counter() - t0
        t0 = time.perf_counter()
        sorted_ids = torch.from_numpy(ids[order]).to(device)
        sorted_len = torch.from_numpy(lengths[order]).to(device)
        cl = torch.zeros(len(ids), ids.shape[1], il.shape[2], device=device, dtype=il.dtype)
        cg = torch.empty(len(ids), il.shape[2], device=device, dtype=ig.dtype)
        for j in range(0, len(ids), 256):
            width = int(lengths[order][j:j + 256].max())
            loc, glob = model.encode_texts(sorted_ids[j:j + 256, :width], sorted_len[j:j + 256])
            cl[j:j + 256, :width] = loc.to(cl.dtype)
            cg[j:j + 256] = glob.to(cg.dtype)
        _sync(torch, device)
        t_cap = time.perf_counter() - t0
        lens_sorted = lengths[order]

        def tile_scores(i, j):
            a, b = slice(i, i + tile[0]), slice(j, j + tile[1])
            width = int(lens_sorted[b].max())
            return model.score(il[a], ig[a], cl[b, :width], cg[b], sorted_len[b])

        n, m = len(feats), len(ids)
        tile_scores(0, m - tile[1]); _sync(torch, device)        # warm-up on the longest captions
        t0 = time.perf_counter(); tile_scores(0, m - tile[1]); _sync(torch, device)
        per_tile = time.perf_counter() - t0
        n_run = _affordable_images(n, m, tile, per_tile, clock.left() * budget_share)
        out = torch.empty(n_run, m, device=device)
        t0 = time.perf_counter()
        for i, j in _tiles(n_run, m, tile):
            s = tile_scores(i, j)
            out[i:i + s.shape[0], j:j + s.shape[1]] = s.float()
        _sync(torch, device)
        t_score = time.perf_counter() - t0
    scores = np.empty((n_run, m), dtype=np.float32)
    scores[:, order] = out.cpu().numpy()
    finite = bool(np.isfinite(scores).all())
    return ({"image_encode_s": t_img, "caption_encode_s": t_cap, "score_s": t_score, "images_scored": n_run,
             "pairs": n_run * m, "pairs_per_s": n_run * m / t_score, "tile": list(tile),
             "all_finite": finite, "note": None if n_run == n else
             f"time budget: scored the first {n_run} of {n} images (one tile took {per_tile:.3f}s)"},
            scores)


def _affordable_images(n, m, tile, per_tile, seconds) -> int:
    tiles_per_row = -(-m // tile[1])
    rows = max(1, int(seconds / max(per_tile * tiles_per_row, 1e-9)))
    return min(n, rows * tile[0])


def two_stage_torch(torch, model, device, feats_enc, caps_enc, shortlist: int, clock, budget_share) -> dict:
    """Text->image and image->text: globals' dot product on the device, rerank k' with the full scorer."""
    il, ig, cl, cg, lens = feats_enc + caps_enc
    with torch.inference_mode():
        _sync(torch, device)
        t0 = time.perf_counter()
        top_i = torch.topk(cg @ ig.T, shortlist, dim=1).indices          # (m, k')
        done_t2i = 0
        deadline = time.perf_counter() + clock.left() * budget_share / 2
        for q in range(len(cg)):
            idx = top_i[q]
            model.score(il[idx], ig[idx], cl[q:q + 1, :int(lens[q])], cg[q:q + 1], lens[q:q + 1])
            done_t2i += 1
            if time.perf_counter() > deadline:
                break
        _sync(torch, device)
        t2i = time.perf_counter() - t0
        t0 = time.perf_counter()
        top_c = torch.topk(ig @ cg.T, shortlist, dim=1).indices          # (n, k')
        done_i2t = 0
        deadline = time.perf_counter() + clock.left() * budget_share / 2
        for q in range(len(ig)):
            idx = top_c[q]
            width = int(lens[idx].max())
            model.score(il[q:q + 1], ig[q:q + 1], cl[idx, :width], cg[idx], lens[idx])
            done_i2t += 1
            if time.perf_counter() > deadline:
                break
        _sync(torch, device)
        i2t = time.perf_counter() - t0
    return {"shortlist": shortlist, "t2i_queries": done_t2i, "t2i_s": t2i, "t2i_ms_per_query": 1e3 * t2i / done_t2i,
            "i2t_queries": done_i2t, "i2t_s": i2t, "i2t_ms_per_query": 1e3 * i2t / done_i2t,
            "complete": done_t2i == len(cg) and done_i2t == len(ig)}


def _encoded_on_device(torch, model, device, feats, ids, lengths):
    with torch.inference_mode():
        il, ig = zip(*(model.encode_images(torch.from_numpy(feats[i:i + 256]).to(device))
                       for i in range(0, len(feats), 256)))
        locs, globs = [], []
        for j in range(0, len(ids), 256):
            width = int(lengths[j:j + 256].max())
            l, g = model.encode_texts(torch.from_numpy(ids[j:j + 256, :width]).to(device),
                                      torch.from_numpy(lengths[j:j + 256]).to(device))
            locs.append(torch.nn.functional.pad(l, (0, 0, 0, ids.shape[1] - width)))
            globs.append(g)
    return (torch.cat(il), torch.cat(ig)), (torch.cat(locs), torch.cat(globs), torch.from_numpy(lengths).to(device))


def parity(scores: np.ndarray, reference: np.ndarray) -> dict:
    n = min(len(scores), len(reference))
    d = np.abs(scores[:n].astype(np.float64) - reference[:n])
    top1 = float(np.mean(np.argmax(scores[:n], axis=0) == np.argmax(reference[:n], axis=0)))
    return {"images_compared": n, "max_abs_delta": float(d.max()), "mean_abs_delta": float(d.mean()),
            "t2i_top1_agreement": top1}


def export_random_bundle(model, work: str) -> str:
    from kidrr.checkpoint import save_checkpoint
    from kidrr.export.bundle import export_bundle
    from kidrr.tokenizer import SPECIALS, Vocabulary
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(VOCAB - len(SPECIALS))])
    ckpt = os.path.join(work, "ckpt")
    save_checkpoint(ckpt, copy.deepcopy(model).cpu(), vocab)   # the GPU model stays where it is
    out = os.path.join(work, "bundle")
    export_bundle(ckpt, out, precision="fp32", verify=False, progress=False, log=lambda msg: None)
    return out


def runtime_path(bundle: str, backend: str, providers, feats, ids, lengths, clock, budget_share) -> tuple[dict, np.ndarray]:
    """The runtime's own tiling and runner (host arrays in and out, copies included)."""
    from kidrr.runtime import open_bundle
    from kidrr.runtime.gallery import CaptionIndex
    options = {"providers": providers} if providers else {}
    t0 = time.perf_counter()
    rt = open_bundle(bundle, backend=backend, memory_budget_mb=2048, **options)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gallery = rt.encode_images(feats)
    t_img = time.perf_counter() - t0
    t0 = time.perf_counter()
    locs = np.zeros((len(ids), ids.shape[1], gallery.locals.shape[2]), dtype=np.float32)
    globs = np.empty((len(ids), gallery.locals.shape[2]), dtype=np.float32)
    for j in range(0, len(ids), 256):
        width = int(lengths[j:j + 256].max())
        l, g = rt.runner.encode_texts(ids[j:j + 256, :width], lengths[j:j + 256])
        locs[j:j + 256, :width], globs[j:j + 256] = l, g
    captions = CaptionIndex.from_encoded(locs, globs, lengths, rt.bundle_id)
    t_cap = time.perf_counter() - t0
    plan = rt.calibrate(gallery, captions)
    per_tile = plan.pairs / plan.pairs_per_s if plan.pairs_per_s else 1.0
    n_run = _affordable_images(len(feats), len(ids), (plan.images, plan.captions), per_tile,
                               clock.left() * budget_share)
    from kidrr.runtime.gallery import Gallery
    sub = Gallery(gallery.locals[:n_run], gallery.globals[:n_run], gallery.bundle_id)
    t0 = time.perf_counter()
    scores = rt.score(sub, captions)
    t_score = time.perf_counter() - t0
    info = {"runner": rt.runner.describe(), "load_s": load_s, "image_encode_s": t_img, "caption_encode_s": t_cap,
            "score_s": t_score, "images_scored": n_run, "pairs": scores.size, "pairs_per_s": scores.size / t_score,
            "tile": [plan.images, plan.captions], "all_finite": bool(np.isfinite(scores).all()),
            "note": None if n_run == len(feats) else f"time budget: scored the first {n_run} of {len(feats)} images"}
    rt.close()
    return info, scores


def run_check(images, captions, dims_name, shortlists, tile, budget_s, seed, allow_cpu) -> dict:
    torch, device = require_gpu(allow_cpu)
    clock = Clock(budget_s)
    dims = PUBLISHED if dims_name == "published" else SMALL
    report = {"format": "kidrr-gpu-check/1", "device": _device_info(torch, device),
              "problem": {"images": images, "captions": captions, "regions": REGIONS, **dims,
                          "caption_tokens": "8..22 incl. <start>/<end>", "weights": f"random (seed {seed})"},
              "includes": "token ids in (no tokenisation); encode images + encode captions + score every pair; "
                          "torch paths keep tensors on the GPU, runtime paths copy host<->device per call",
              "paths": {}, "two_stage": [], "budget_s": budget_s}
    feats, ids, lengths = make_problem(images, captions, dims, seed)
    model = make_model(torch, dims, seed).to(device)
    reference = None
    for name, dtype, share in (("torch-cuda fp32", None, 0.25), ("torch-cuda fp16", torch.float16, 0.2),
                               ("torch-cuda bf16", torch.bfloat16, 0.2)):
        report["paths"][name] = _guard(lambda: torch_path(torch, model, device, feats, ids, lengths, dtype,
                                                          tile, clock, share))
        scores = report["paths"][name].pop("_scores", None)
        if reference is None:
            reference = scores
        elif scores is not None and reference is not None:
            report["paths"][name]["parity_vs_fp32"] = parity(scores, reference)
    if reference is not None:
        enc = _encoded_on_device(torch, model, device, feats, ids, lengths)
        for kp in shortlists:
            if clock.left() < 0.1 * clock.budget:
                report["two_stage"].append({"shortlist": kp, "status": "skipped", "reason": "time budget spent"})
                continue
            report["two_stage"].append(_guard(lambda: (two_stage_torch(torch, model, device, enc[0], enc[1], kp,
                                                                       clock, 0.15), None)))
    _runtime_paths(torch, model, device, report, feats, ids, lengths, clock, reference)
    report["wall_s"] = time.perf_counter() - clock.start
    return report


def _runtime_paths(torch, model, device, report, feats, ids, lengths, clock, reference) -> None:
    import importlib.util

    from kidrr.optional import tensorrt_missing
    ort_providers = []
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime
        ort_providers = onnxruntime.get_available_providers()
    plans = [("ort-cuda", "ort", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
             ("ort-trt", "ort", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
             ("trt", "trt", None)]
    if device.type == "cpu":  # --allow-cpu: exercise the runtime path on the CPU EP too
        plans.insert(0, ("ort-cpu (code-path test)", "ort", ["CPUExecutionProvider"]))
    runnable = []
    for name, backend, providers in plans:
        if providers and providers[0] not in ort_providers:
            report["paths"][name] = {"status": "skipped", "reason": f"onnxruntime here has no {providers[0]} "
                                     f"(available: {ort_providers or 'onnxruntime not installed'}); pip install onnxruntime-gpu"}
        elif backend == "trt" and tensorrt_missing():
            report["paths"][name] = {"status": "skipped", "reason": tensorrt_missing()}
        else:
            runnable.append((name, backend, providers))
    if not runnable:
        return
    work = tempfile.mkdtemp(prefix="kidrr-gpu-check-")
    try:
        bundle = export_random_bundle(model, work)
        for name, backend, providers in runnable:
            if clock.left() < 0.15 * clock.budget:
                report["paths"][name] = {"status": "skipped", "reason": "time budget spent"}
                continue
            if backend == "trt":
                prep = _guard(lambda: (_build_trt(bundle), None))
                if prep["status"] != "ok":
                    report["paths"][name] = prep
                    continue
            result = _guard(lambda: runtime_path(bundle, backend, providers, feats, ids, lengths, clock, 0.5))
            scores = result.pop("_scores", None)
            if scores is not None and reference is not None:
                result["parity_vs_torch_fp32"] = parity(scores, reference)
            report["paths"][name] = result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_trt(bundle: str) -> dict:
    """Build the engine set with kidrr export's builder (one engines/<key>/ folder, three plans)."""
    from kidrr.export.trt_engines import build_engines
    plans = build_engines(bundle, precision=None, log=lambda msg: None)
    return {"engines": sorted(plans), "engine_set": os.path.basename(os.path.dirname(next(iter(plans.values()))))}


def _guard(fn) -> dict:
    """Run one stage; a failure is recorded with its reason and the check goes on."""
    try:
        info, scores = fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON, the other paths still run
        traceback.print_exc(file=sys.stderr)
        return {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:400]}"}
    out = {"status": "ok", **info}
    if scores is not None:
        out["_scores"] = scores
    return out


def _device_info(torch, device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info["note"] = "--allow-cpu: a code-path check on the CPU, not a GPU measurement"
    return info


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="gpu_check.json", show_default=True, help="the JSON file to write")
@click.option("--images", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--captions", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--dims", type=click.Choice(["published", "small"]), default="published", show_default=True,
              help="published: D=1024 S=256 R=36 F=2048; small: tiny, to test the script itself")
@click.option("--shortlists", default="20,100", show_default=True, help="two-stage k' values")
@click.option("--tile", default="128,64", show_default=True, help="torch score tile: images,captions")
@click.option("--budget", type=click.FloatRange(min=10), default=240.0, show_default=True,
              help="seconds the whole check may take (the job is cut to fit, and says so)")
@click.option("--seed", type=int, default=0)
@click.option("--allow-cpu", is_flag=True, help="testing only: run on the CPU when there is no GPU")
def main(out, images, captions, dims, shortlists, tile, budget, seed, allow_cpu):
    """Run the GPU paths at the published dims on 1,000 x 5,000 and write one JSON file."""
    try:
        kps = [int(x) for x in shortlists.split(",") if x.strip()]
        tiles = tuple(int(x) for x in tile.split(","))
        if len(tiles) != 2 or min(tiles) < 1 or not kps or min(kps) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter("--shortlists takes integers >= 1 ('20,100'); --tile two ('128,64')") from None
    kps = [k for k in kps if k <= min(images, captions)]
    from kidrr.errors import InputError
    from kidrr.fileio import check_report_path
    try:
        check_report_path(out, "--out", "kidrr-gpu-check/1")   # before the run, not after it
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    try:
        report = run_check(images, captions, dims, kps, tiles, budget, seed, allow_cpu)
    except NoGpu as exc:
        click.echo(f"gpu_check: {exc}", err=True)
        sys.exit(2)
    from kidrr.fileio import write_atomic
    write_atomic(os.path.abspath(out), json.dumps(report, indent=1).encode())
    failed = [n for n, p in report["paths"].items() if p.get("status") == "failed"]
    click.echo(f"gpu_check: wrote {out} in {report['wall_s']:.1f}s"
               + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
