"""Photos-in speed: backbone images/s (torch vs the bundle's ONNX graph in ONNX Runtime) at batch 1 and
32, and end-to-end JPEG files -> gallery images/s (decode, preprocess graph, backbone, image encoder).

    python bench/images_speed.py   (or python -m kidrr.bench.images_speed) [--bundle B] [--threads 2]
        [--backbone efficientnet-lite0] [--photos 64] [--threads 2 | 1,2] [--out images-speed/]

Each measurement runs in its own process (torch and onnxruntime in one process disturb each other's
threads), one after the other in the same run, so the ratios compare like with like. Reported:
medians of repeated timed calls after warm-up, the machine's load average before and after (the
CPU may be shared: compare within one run). End to end uses --bundle (a bundle with a backbone),
else the shipped pixel model's cached bundle, else a bundle of a random small model on the same
backbone (the KIDRR image encoder's cost does not depend on its weights).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BATCHES = (1, 32)


def _median_rate(fn, items: int, repeats: int) -> dict:
    fn()   # warm-up (allocations, ORT's first-run planning)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    med = statistics.median(times)
    return {"median_s": med, "images_per_s": items / med, "repeats": repeats}


def worker_backbone(kind: str, backbone: str, batch: int, threads: int, repeats: int) -> dict:
    from kidrr.images.spec import backbone_spec
    side = backbone_spec(backbone).input_size
    images = np.random.default_rng(0).normal(size=(batch, 3, side, side)).astype(np.float32)
    if kind == "torch":
        import torch
        from kidrr.backbone import load_backbone
        torch.set_num_threads(threads)
        net = load_backbone(backbone)
        x = torch.from_numpy(images)

        def run():
            with torch.inference_mode():
                net(x)
    else:
        import onnxruntime as ort
        path = os.environ["KIDRR_BENCH_BACKBONE_ONNX"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

        def run():
            sess.run(None, {"images": images})
    return _median_rate(run, batch, repeats)


def worker_end_to_end(bundle: str, photos: str, threads: int, repeats: int) -> dict:
    from kidrr.runtime import open_bundle
    names = sorted(os.listdir(photos))
    paths = [os.path.join(photos, n) for n in names]
    with open_bundle(bundle, threads=threads) as rt:
        return _median_rate(lambda: rt.encode_image_files(paths, names=names, batch_size=32), len(paths), repeats)


def _child(args: list) -> dict:
    proc = subprocess.run([sys.executable, "-m", "kidrr.bench.images_speed", "--worker", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_photos(folder: str, n: int) -> None:
    """n seeded 500 x 375 JPEGs (Flickr's usual size): shapes on a background plus noise."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.new("RGB", (500, 375), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            x, y = int(rng.integers(0, 450)), int(rng.integers(0, 330))
            draw.ellipse([x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))],
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        noisy = np.clip(np.asarray(img).astype(int) + rng.integers(-15, 16, (375, 500, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(folder, f"photo{i:03d}.jpg"), quality=90)


def _bundle_for(bundle: str | None, backbone: str, work: str, log) -> tuple[str, str]:
    if bundle:
        return bundle, "given"
    try:
        from kidrr.photos.default_bundle import shipped_pixel_bundle
        return shipped_pixel_bundle(log), "shipped pixel model"
    except Exception as exc:  # no shipped pixel model in this checkout: a random one costs the same
        log(f"  no shipped pixel model ({str(exc)[:120]}); using a random small model on {backbone}")
    import torch
    from kidrr.backbone import features_record
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.export.bundle import export_bundle
    from kidrr.model import KIDRR
    from kidrr.tokenizer import Vocabulary
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a photo of a dog", "a red circle on the grass"])
    record = features_record(backbone)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=record["feature_size"],
                                    image_backbone=record)).eval()
    ckpt, out = os.path.join(work, "ckpt"), os.path.join(work, "bundle")
    save_checkpoint(ckpt, model, vocab)
    export_bundle(ckpt, out, progress=False, log=lambda m: None)
    return out, "random small model (D=256)"


def run(bundle, backbone, thread_counts, photos, repeats_b1, repeats_b32, repeats_e2e, out, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="kidrr-images-speed-") as work:
        load_before = os.getloadavg()
        bundle, bundle_kind = _bundle_for(bundle, backbone, work, log)
        with open(os.path.join(bundle, "manifest.json")) as fh:
            manifest = json.load(fh)
        backbone = manifest["image"]["backbone"]
        os.environ["KIDRR_BENCH_BACKBONE_ONNX"] = os.path.join(bundle, manifest["graphs"]["backbone"]["file"])
        rows = []
        folder = os.path.join(work, "photos")
        os.makedirs(folder)
        _write_photos(folder, photos)
        for threads in thread_counts:
            for batch in BATCHES:
                reps = repeats_b1 if batch == 1 else repeats_b32
                for kind in ("torch", "ort"):
                    log(f"  backbone {kind} batch {batch}, {threads} thread(s) ...")
                    r = _child(["backbone", kind, backbone, str(batch), str(threads), str(reps)])
                    rows.append({"what": "backbone", "backend": kind, "batch": batch, "threads": threads, **r})
            log(f"  end to end: {photos} JPEGs 500x375 -> gallery, {threads} thread(s) ...")
            r = _child(["e2e", bundle, folder, str(threads), str(repeats_e2e)])
            rows.append({"what": "jpeg->gallery", "backend": "ort", "batch": 32, "threads": threads, **r})
        load_after = os.getloadavg()
    rate = {(r["what"], r["backend"], r["batch"], r["threads"]): r["images_per_s"] for r in rows}
    report = {"backbone": backbone, "threads": list(thread_counts), "bundle": bundle_kind, "rows": rows,
              "ort_over_torch": {f"batch {b}, {t} thread(s)": rate[("backbone", "ort", b, t)]
                                 / rate[("backbone", "torch", b, t)] for t in thread_counts for b in BATCHES},
              "load_average_before": load_before, "load_average_after": load_after, "cpus": os.cpu_count()}
    os.makedirs(out, exist_ok=True)
    from kidrr.fileio import write_atomic
    from kidrr.config import dump_json
    write_atomic(os.path.join(out, "images_speed.json"), dump_json(report).encode())
    _plot(report, os.path.join(out, "images_speed.png"))
    return report


def _plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kidrr.fileio import write_figure
    labels = [f"{r['what']}\n{r['backend']} b{r['batch']} t{r['threads']}" for r in report["rows"]]
    values = [r["images_per_s"] for r in report["rows"]]
    fig, ax = plt.subplots(figsize=(10, 3.4))
    colours = ["#4c72b0" if r["backend"] == "torch" else "#dd8452" for r in report["rows"]]
    ax.bar(range(len(values)), values, color=colours)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("images / s (median)")
    ax.set_yscale("log")
    ax.set_title(f"{report['backbone']} (load average {report['load_average_before'][0]:.1f} on "
                 f"{report['cpus']} CPUs)",
                 fontsize=9)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    write_figure(fig, path)
    plt.close(fig)


def _print(report: dict) -> None:
    print(f"{'what':15s} {'backend':7s} {'threads':>7s} {'batch':>5s} {'images/s':>9s} {'median s':>9s}")
    for r in report["rows"]:
        print(f"{r['what']:15s} {r['backend']:7s} {r['threads']:7d} {r['batch']:5d} {r['images_per_s']:9.2f} "
              f"{r['median_s']:9.4f}")
    print("ORT / torch: " + ", ".join(f"{k} x{v:.2f}" for k, v in report["ort_over_torch"].items()))
    print(f"load average before {report['load_average_before'][0]:.1f}, after {report['load_average_after'][0]:.1f} "
          f"on {report['cpus']} CPUs")


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--worker":
        kind, rest = argv[1], argv[2:]
        if kind == "backbone":
            r = worker_backbone(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        else:
            r = worker_end_to_end(rest[0], rest[1], int(rest[2]), int(rest[3]))
        print(json.dumps(r))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="bundle with a backbone (default: shipped pixel model)")
    ap.add_argument("--backbone", default="efficientnet-lite0", help="for the random fallback bundle")
    ap.add_argument("--threads", default="2", help="thread counts, comma-separated (e.g. 1,2)")
    ap.add_argument("--photos", type=int, default=64, help="JPEGs for the end-to-end run")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls at batch 1 (batch 32 and e2e: a third)")
    ap.add_argument("--out", default="images-speed", help="folder for images_speed.json and .png")
    a = ap.parse_args(argv)
    reps32 = max(3, a.repeats // 3)
    threads = [int(t) for t in str(a.threads).split(",") if t.strip()]
    report = run(a.bundle, a.backbone, threads, a.photos, a.repeats, reps32, reps32, a.out,
                 log=lambda m: print(m, file=sys.stderr))
    _print(report)


if __name__ == "__main__":
    main()
