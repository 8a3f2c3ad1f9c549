"""Speed benchmark: the runtime against the published evaluation loop and the GEMM ceiling.

    python bench/speed.py [--work DIR] [--checkpoint CKPT] [--threads 2] [--json out.json]

Every measurement runs in its own child process (torch and onnxruntime in one process disturb
each other's threading), all in one run, with the same thread count; the parent only collects
JSON lines and prints the table. Medians of repeated timings. Parts:
  gemm      fp32 GEMM GFLOP/s (torch and numpy): this machine's matrix-multiply ceiling
  loop      the published evaluation pattern in PyTorch: one caption x a shard of 100 images per call
  tiled     kidrr.model.score_tiled (the PyTorch model's own tiles), for reference
  ort       the runtime's exhaustive scoring, fp32 and int8 bundles, at the published dims
  eval      synthetic test set (1,000 images x 5,000 captions): exhaustive fp32 / int8 recall,
            two-stage speed-up and rSum delta for several k'
Bundles (random weights at the published dims; the trained checkpoint for the synthetic set) are
exported once into --work and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

PUBLISHED = dict(D=1024, S=256, R=36, F=2048, L=15)   # L: tokens incl. <start>/<end>
SHARD = 100                                           # images per call in the published loop
WORDS = "a man woman dog cat red blue green small big left right of on the above below".split()


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fixed_length_captions(count: int, tokens: int, seed: int = 0) -> list:
    """Captions of exactly `tokens` ids with <start>/<end> from words every vocabulary here has."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, tokens - 2)) for _ in range(count)]


def emit(obj: dict) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- setup (torch process) ------------------------------------------------------------------
def part_prepare(args) -> None:
    import torch
    from kidrr.checkpoint import save_checkpoint, shipped_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.export.bundle import export_bundle
    from kidrr.model import KIDRR
    from kidrr.synthetic import make_synthetic
    from kidrr.tokenizer import Vocabulary
    quiet = dict(force=True, verify=False, progress=False, log=lambda msg: None)
    pub = os.path.join(args.work, "published")
    if not os.path.exists(os.path.join(pub, "ckpt", "model.safetensors")):
        torch.manual_seed(0)
        vocab = Vocabulary.build(make_synthetic("dev").captions)
        model = KIDRR(ModelConfig(vocab_size=len(vocab), feature_size=PUBLISHED["F"])).eval()
        save_checkpoint(os.path.join(pub, "ckpt"), model, vocab)
    ckpt = args.checkpoint
    if ckpt is None:
        shipped = shipped_checkpoint()
        ckpt = shipped if os.path.exists(os.path.join(shipped, "model.safetensors")) else _quick_train(args.work)
    with open(os.path.join(args.work, "synthetic_checkpoint.txt"), "w") as fh:
        fh.write(ckpt)
    for folder, source in ((pub, os.path.join(pub, "ckpt")), (os.path.join(args.work, "synthetic"), ckpt)):
        for precision in ("fp32", "int8"):
            out = os.path.join(folder, precision)
            stamp = os.path.join(out, "manifest.json")
            if not os.path.exists(stamp) or _source_changed(stamp, source):
                export_bundle(source, out, precision=precision, **quiet)
    emit({"part": "prepare", "synthetic_checkpoint": ckpt})


def _source_changed(manifest_path: str, checkpoint: str) -> bool:
    from kidrr.identity import checkpoint_id
    with open(manifest_path) as fh:
        return json.load(fh)["source_checkpoint_sha256"] != checkpoint_id(checkpoint)


def _quick_train(work: str) -> str:
    """No checkpoint given and none shipped: one short warm-up epoch on the synthetic set."""
    from kidrr.train import run
    out = os.path.join(work, "quick-train")
    if not os.path.exists(os.path.join(out, "best", "model.safetensors")):
        print("no trained checkpoint: training a quick one (1 short epoch) for the recall parts", file=sys.stderr)
        # Small batches: a few minutes on a shared 2-core machine; enough for the globals and the
        # scorer to rank well above chance, which is what the recall deltas need.
        run("synthetic", out, "small", train_set=("batch_size=32",), epochs=1, max_batches=30, dev_images=100)
    return os.path.join(out, "best")


# ---- (a) GEMM ceiling -----------------------------------------------------------------------
def part_gemm(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    secs = median_time(lambda: a @ b, 7)
    emit({"part": "gemm_torch", "gflops": 2 * size ** 3 / secs / 1e9})
    an, bn = a.numpy(), b.numpy()
    secs = median_time(lambda: an @ bn, 7)
    emit({"part": "gemm_numpy", "gflops": 2 * size ** 3 / secs / 1e9})


# ---- (b) the published loop, and the model's own tiles (torch) -------------------------------
def _published_model_inputs(n_images: int, n_captions: int):
    import torch
    from kidrr.config import ModelConfig
    from kidrr.model import KIDRR, l2norm
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = KIDRR(ModelConfig(vocab_size=100, feature_size=PUBLISHED["F"])).eval()
    d, r, length = PUBLISHED["D"], PUBLISHED["R"], PUBLISHED["L"]
    imgs = (l2norm(torch.randn(n_images, r, d)), l2norm(torch.randn(n_images, d)))
    caps = (l2norm(torch.randn(n_captions, length, d)), l2norm(torch.randn(n_captions, d)),
            torch.full((n_captions,), length, dtype=torch.int64))
    return model, imgs, caps


def part_loop(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    captions = 6
    model, (il, ig), (cl, cg, cn) = _published_model_inputs(SHARD, captions)

    def loop():  # one caption against a shard of images per call, as the published code does
        for j in range(captions):
            model.score(il, ig, cl[j:j + 1], cg[j:j + 1], cn[j:j + 1])
    secs = median_time(loop, args.repeat)
    emit({"part": "loop", "pairs_per_s": SHARD * captions / secs, "flop_per_pair": reference_flop_per_pair()})


def part_tiled(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    model, imgs, caps = _published_model_inputs(64, 16)
    secs = median_time(lambda: model.score_tiled(imgs, caps, 32, 8), args.repeat)
    emit({"part": "tiled", "pairs_per_s": 64 * 16 / secs, "flop_per_pair": reference_flop_per_pair()})


def reference_flop_per_pair(D=PUBLISHED["D"], S=PUBLISHED["S"], R=PUBLISHED["R"], L=PUBLISHED["L"], U=3) -> float:
    """Matrix-product FLOPs of one pair in kidrr.model (unfolded q/k/update, every relation node)."""
    n = L + 3
    attention = 2 * (2 * R * L * D) + 2 * (2 * R * D) + 2 * (2 * L * D)   # words, caption global, image global
    projections = 2 * n * D * S                                          # gg, tv, vt and L word nodes: D -> S
    relation = U * (3 * 2 * n * S * S + 2 * 2 * n * n * S)               # q, k, update; logits and adj @ s
    return float(attention + projections + relation + 2 * S)


# ---- (c, d) the runtime at the published dims (onnxruntime) ---------------------------------
def count_matmul_flops(onnx_path: str, feeds: dict) -> float:
    """FLOPs of every MatMul / Gemm / MatMulInteger the graph runs for these inputs (functions inlined).

    Each product's operands are made graph outputs and the graph is run once, so the shapes are
    the real ones, whatever the exporter's formulation.
    """
    import onnx
    import onnx.inliner
    import onnxruntime as ort
    model = onnx.inliner.inline_local_functions(onnx.load(onnx_path))
    ops = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "MatMulInteger", "FusedMatMul")]
    names = sorted({x for n in ops for x in n.input[:2]})
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in inits and name not in outputs and name not in feeds:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    fetch = [n for n in names if n not in inits and n not in feeds]
    shapes = dict(zip(fetch, (v.shape for v in sess.run(fetch, feeds))))
    shapes.update(inits)
    shapes.update({k: v.shape for k, v in feeds.items()})
    total = 0.0
    for n in ops:
        a, b = shapes[n.input[0]], shapes[n.input[1]]
        if n.op_type == "Gemm":
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            m_dim, k_dim = (a[1], a[0]) if trans_a else (a[0], a[1])
            n_dim = b[0] if any(at.name == "transB" and at.i for at in n.attribute) else b[1]
            total += 2.0 * m_dim * k_dim * n_dim
            continue
        a = (1,) + tuple(a) if len(a) == 1 else tuple(a)
        b = tuple(b) + (1,) if len(b) == 1 else tuple(b)
        batch = np.broadcast_shapes(a[:-2], b[:-2])
        total += 2.0 * float(np.prod(batch)) * a[-2] * a[-1] * b[-1]
    return total


def part_ort(args) -> None:
    from kidrr.runtime import open_bundle
    precision = args.precision
    bundle = os.path.join(args.work, "published", precision)
    n_img, n_cap = 128, 64
    rt = open_bundle(bundle, backend="ort", threads=args.threads)
    feats = np.random.default_rng(0).normal(size=(n_img, PUBLISHED["R"], PUBLISHED["F"])).astype(np.float32)
    gallery = rt.encode_images(feats)
    captions = rt.encode_texts(fixed_length_captions(n_cap, PUBLISHED["L"]))
    assert int(captions.lengths.max()) == PUBLISHED["L"]
    plan = rt.calibrate(gallery, captions)
    secs = median_time(lambda: rt.score(gallery, captions), args.repeat)
    a, b = plan.images, plan.captions
    lens = captions.lengths[:b]
    flops = count_matmul_flops(rt.bundle.graph_path("similarity"), {
        "img_locals": np.ascontiguousarray(gallery.locals[:a]), "img_global": np.ascontiguousarray(gallery.globals[:a]),
        "cap_locals": captions.padded_locals(0, b),
        "cap_global": np.ascontiguousarray(captions.globals[:b]), "cap_lengths": np.ascontiguousarray(lens)})
    emit({"part": f"ort_{precision}", "pairs_per_s": n_img * n_cap / secs, "tile": [a, b],
          "flop_per_pair": flops / (a * b), "peak_rss_mb": peak_rss_mb()})


# ---- (d, e) synthetic test set: recall of fp32 / int8, two-stage ----------------------------
def part_eval(args) -> None:
    from kidrr import metrics
    from kidrr.runtime import open_bundle
    from kidrr.synthetic import make_synthetic
    split = make_synthetic("test")
    bundle = os.path.join(args.work, "synthetic", args.precision)
    rt = open_bundle(bundle, backend="ort", threads=args.threads, on_long="truncate")
    rss0 = peak_rss_mb()
    gallery = rt.encode_images(split.images)
    captions = rt.encode_texts(split.captions)
    rt.calibrate(gallery, captions)
    start = time.perf_counter()
    scores = rt.score(gallery, captions, progress=args.progress)
    exhaustive = time.perf_counter() - start
    full = metrics.recall(scores, split.caption_image)
    out = {"part": f"eval_{args.precision}", "images": len(gallery), "captions": len(captions),
           "exhaustive_s": exhaustive, "pairs_per_s": scores.size / exhaustive, "rsum": full["rsum"],
           "recall": full, "globals_rsum": metrics.recall(gallery.globals @ _caption_globals(captions).T,
                                                           split.caption_image)["rsum"],
           "gallery_mb": gallery.nbytes / 2**20, "caption_index_mb": captions.nbytes / 2**20,
           "scores_mb": scores.nbytes / 2**20, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0,
           "dims": {"R": int(gallery.locals.shape[1]), "D": int(gallery.locals.shape[2]),
                    "L_max": int(captions.lengths.max()), "L_mean": float(captions.lengths.mean())}}
    if args.precision == "fp32":
        out["two_stage"] = [_two_stage(rt, gallery, captions, split, kp, exhaustive, full["rsum"])
                            for kp in args.shortlists]
    emit(out)


def _caption_globals(captions):
    """Caption globals in the caption's original order (the index keeps them sorted by length)."""
    out = np.empty_like(captions.globals)
    out[captions.order] = captions.globals
    return out


def _two_stage(rt, gallery, captions, split, kp, exhaustive_s, full_rsum) -> dict:
    """Both directions two-stage: t2i (each caption: k' images by globals, reranked) and i2t."""
    from kidrr import metrics
    n, m = len(gallery), len(captions)
    floor = np.float32(-1e30)   # unranked items: below every real score (recall counts ties against us)
    start = time.perf_counter()
    t2i_hits = rt.search_text(captions, kp, gallery=gallery, shortlist=kp)
    t2i_s = time.perf_counter() - start
    start = time.perf_counter()
    i2t_hits = rt.search_image(gallery, kp, captions=captions, shortlist=kp)
    i2t_s = time.perf_counter() - start
    t2i = np.full((n, m), floor, np.float32)
    for j, hits in enumerate(t2i_hits):
        for i, s in hits:
            t2i[i, j] = s
    i2t = np.full((n, m), floor, np.float32)
    for i, hits in enumerate(i2t_hits):
        for j, s in hits:
            i2t[i, j] = s
    r_t2i, r_i2t = metrics.recall(t2i, split.caption_image), metrics.recall(i2t, split.caption_image)
    rsum = sum(r_i2t[f"i2t_r{k}"] + r_t2i[f"t2i_r{k}"] for k in (1, 5, 10))
    return {"shortlist": kp, "t2i_s": t2i_s, "i2t_s": i2t_s, "speedup": exhaustive_s / (t2i_s + i2t_s),
            "rsum": rsum, "delta_rsum": rsum - full_rsum}


# ---- orchestration ---------------------------------------------------------------------------
PARTS = {"prepare": part_prepare, "gemm": part_gemm, "loop": part_loop, "tiled": part_tiled, "ort": part_ort,
         "eval": part_eval}


def run_child(args, part: str, *extra) -> list:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--work", args.work,
           "--threads", str(args.threads), "--repeat", str(args.repeat),
           "--shortlists", ",".join(map(str, args.shortlists))] + list(extra)
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    print(f"[speed] {part} {' '.join(extra)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"part {part} failed (exit {proc.returncode})")
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def table(results: dict) -> str:
    gemm = results["gemm_torch"]["gflops"]
    loop = results["loop"]["pairs_per_s"]
    rows = [("(a) fp32 GEMM 2048^3, torch", f"{gemm:.0f} GFLOP/s", "", "ceiling"),
            ("(a) fp32 GEMM 2048^3, numpy", f"{results['gemm_numpy']['gflops']:.0f} GFLOP/s", "", "")]

    def pairs_row(label, r, target=None):
        achieved = r["pairs_per_s"] * r["flop_per_pair"] / 1e9
        note = f"{r['flop_per_pair'] / 1e6:.1f} MFLOP/pair, {achieved:.0f} GFLOP/s = {100 * achieved / gemm:.0f}% of (a)"
        if "tile" in r:
            note += f", tile {r['tile'][0]}x{r['tile'][1]}"
        return (label, f"{r['pairs_per_s']:,.0f} pairs/s", f"{r['pairs_per_s'] / loop:.2f}x", note)

    rows.append(pairs_row("(b) PyTorch loop, 1 caption x 100 images", results["loop"]))
    rows.append(pairs_row("    PyTorch model's own tiles 32x8", results["tiled"]))
    rows.append(pairs_row("(c) runtime ort fp32, exhaustive", results["ort_fp32"]))
    rows.append(pairs_row("(d) runtime ort int8, exhaustive", results["ort_int8"]))
    e32, e8 = results["eval_fp32"], results["eval_int8"]
    syn = (f"synthetic test {e32['images']}x{e32['captions']} (R={e32['dims']['R']}, D={e32['dims']['D']}, "
           f"mean L={e32['dims']['L_mean']:.1f})")
    rows.append(("(d) " + syn + " fp32", f"{e32['pairs_per_s']:,.0f} pairs/s", "",
                 f"rSum {e32['rsum']:.2f} (globals only {e32['globals_rsum']:.2f}), {e32['exhaustive_s']:.1f}s"))
    rows.append(("    same, int8", f"{e8['pairs_per_s']:,.0f} pairs/s", f"{e8['pairs_per_s'] / e32['pairs_per_s']:.2f}x fp32",
                 f"rSum {e8['rsum']:.2f}, delta {e8['rsum'] - e32['rsum']:+.2f}"))
    for ts in e32["two_stage"]:
        rows.append((f"(e) two-stage k'={ts['shortlist']}", f"{ts['t2i_s'] + ts['i2t_s']:.2f} s",
                     f"{ts['speedup']:.1f}x exhaustive",
                     f"rSum {ts['rsum']:.2f}, delta {ts['delta_rsum']:+.2f} (t2i {ts['t2i_s']:.2f}s, i2t {ts['i2t_s']:.2f}s)"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("measurement", "throughput", "vs (b)", "notes")
    widths = [max(w, len(h)) for w, h in zip(widths, head)]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))
    return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=os.path.join(os.getcwd(), ".bench-speed"), help="bundles and caches")
    p.add_argument("--checkpoint", default=None, help="trained checkpoint for the synthetic-set parts "
                                                      "(default: the shipped one, else a quick training run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--shortlists", default="10,20,50,100", help="k' values for two-stage")
    p.add_argument("--json", default=None, help="also write every result to this file")
    p.add_argument("--part", choices=sorted(PARTS),
                   help="run one part in this process, printing RESULT lines (run 'prepare' first: it builds the bundles)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="for --part ort and eval")
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shortlists = [int(x) for x in str(args.shortlists).split(",") if x]
    args.work = os.path.abspath(args.work)
    if args.part:
        PARTS[args.part](args)
        return
    os.makedirs(args.work, exist_ok=True)
    if args.json:
        from kidrr.errors import InputError
        from kidrr.fileio import check_report_path
        try:
            check_report_path(args.json, "--json")   # before the run: a folder or a foreign file fails now
        except InputError as exc:
            p.error(str(exc))
    results = {}
    steps = [("prepare",), ("gemm",), ("loop",), ("tiled",), ("ort", "--precision", "fp32"),
             ("ort", "--precision", "int8"), ("eval", "--precision", "fp32"), ("eval", "--precision", "int8"),
             ("gemm",)]
    for step in steps:
        for r in run_child(args, *step):
            key = r["part"]
            if key in results and key.startswith("gemm"):   # measured before and after: keep both, use the max
                r["gflops"] = max(r["gflops"], results[key]["gflops"])
            results[key] = r
    print(table(results))
    if args.json:
        from kidrr.fileio import write_atomic
        write_atomic(os.path.abspath(args.json), json.dumps(results, indent=1).encode())


if __name__ == "__main__":
    main()
