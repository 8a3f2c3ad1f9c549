"""Side-by-side latency of one text->image query: the C++ example vs the Python runtime.

Both answer the same caption over the same gallery file with the same thread count, each in its own
process (torch is never imported by either timed process). Reports medians over --repeat runs and
the ratio, for exact and two-stage search. Rerun it; shared machines are noisy.

    python runtime/cpp/scripts/compare_latency.py [--bundle DIR] [--images 1000] [--threads 2]

Without --bundle a random model at the small config (D=256, S=64, F=2048, R=36) is exported to a
temporary folder: latency depends on shapes, not on weights.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
QUERY = "a dog runs on the grass"

PY_TIMER = r"""
import json, sys, time, numpy as np
from kidrr.runtime import open_bundle
bundle, gallery_path, query, k, shortlist, repeat, threads = sys.argv[1:8]
with open_bundle(bundle, threads=int(threads)) as r:
    g = r.load_gallery(gallery_path)
    sl = int(shortlist) or None
    r.search_text(query, int(k), gallery=g, shortlist=sl)   # warm-up (and tile calibration)
    times = []
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        hits = r.search_text(query, int(k), gallery=g, shortlist=sl)
        times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"median_ms": float(np.median(times)), "hits": hits}))
"""

GALLERY = r"""
import sys, numpy as np
from kidrr.runtime import open_bundle
bundle, out, n, regions, fsize = sys.argv[1:6]
feats = np.random.default_rng(0).normal(size=(int(n), int(regions), int(fsize))).astype(np.float32)
with open_bundle(bundle) as r:
    r.encode_images(feats).save(out)
"""


def make_bundle(folder):
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.export.bundle import export_bundle
    from kidrr.model import KIDRR
    from kidrr.tokenizer import Vocabulary
    import torch
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a dog runs on the grass", "two cats sleep on a red car"] * 4)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=2048)).eval()
    save_checkpoint(os.path.join(folder, "ckpt"), model, vocab)
    export_bundle(os.path.join(folder, "ckpt"), os.path.join(folder, "bundle"), force=True, verify=False,
                  progress=False, log=lambda m: None)
    return os.path.join(folder, "bundle")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--shortlist", type=int, default=100, help="k' of the two-stage run")
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "cpp", "release"))
    args = ap.parse_args()
    exe = os.path.join(args.build, "kidrr_search")
    if not os.path.exists(exe):
        sys.exit(f"{exe} not built: cmake -S runtime/cpp -B {args.build} && cmake --build {args.build}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or make_bundle(tmp)
        fsize = json.load(open(os.path.join(bundle, "manifest.json")))["model"]["feature_size"]
        gallery = os.path.join(tmp, "gallery.npz")
        subprocess.run([sys.executable, "-c", GALLERY, bundle, gallery, str(args.images), str(args.regions), str(fsize)],
                       check=True)
        print(f"gallery {args.images} images x {args.regions} regions, query {QUERY!r}, k={args.k}, "
              f"threads={args.threads}, median of {args.repeat}")
        print(f"{'search':<18}{'C++ ms':>10}{'Python ms':>12}{'Python/C++':>12}  same top-k")
        for shortlist in (0, args.shortlist):
            cpp = subprocess.run([exe, bundle, gallery, QUERY, "-k", str(args.k), "--shortlist", str(shortlist),
                                  "--repeat", str(args.repeat + 1), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            cpp_ms = float(cpp.split("latency_ms median ")[1].split()[0])
            cpp_hits = [int(line.split("\t")[1].split()[1]) for line in cpp.splitlines() if not line.startswith("#")]
            py = json.loads(subprocess.run([sys.executable, "-c", PY_TIMER, bundle, gallery, QUERY, str(args.k),
                                            str(shortlist), str(args.repeat), str(args.threads)],
                                           capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            same = cpp_hits == [i for i, _ in py["hits"]]
            name = "exact" if shortlist == 0 else f"two-stage k'={shortlist}"
            print(f"{name:<18}{cpp_ms:>10.2f}{py['median_ms']:>12.2f}{py['median_ms'] / cpp_ms:>12.2f}  {same}")


if __name__ == "__main__":
    main()
