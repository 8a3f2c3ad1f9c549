"""Side-by-side timing of similarity-graph formulations and ONNX Runtime optimisation levels.

python -m kidrr.export.benchmark [--checkpoint CK] [--n 32 --m 16 --L 14 --R 36] [--repeats 15]
Each variant runs the same tile in its own session, interleaved, median of repeats; parity with
the reference (unfolded relation steps, batched attention: the literal PyTorch form) is printed.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import click
import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..config import ModelConfig
from ..model import KIDRR
from . import graphs
from .ort_session import session


def _tile(model, n, m, length, regions, seed=0):
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        il, ig = model.encode_images(torch.from_numpy(rng.normal(size=(n, regions, model.cfg.feature_size))
                                                      .astype(np.float32)))
        lengths = torch.from_numpy(rng.integers(max(1, length // 2), length + 1, size=m))
        lengths[0] = length
        ids = torch.randint(4, model.cfg.vocab_size, (m, length)) * (torch.arange(length)[None] < lengths[:, None])
        cl, cg = model.encode_texts(ids, lengths)
    return {"img_locals": il.numpy(), "img_global": ig.numpy(), "cap_locals": cl.numpy(), "cap_global": cg.numpy(),
            "cap_lengths": lengths.numpy()}


@click.command()
@click.option("--checkpoint", default=None, help="checkpoint folder; default: a random model at --config")
@click.option("--config", type=click.Choice(["small", "full"]), default="small")
@click.option("--n", default=32)
@click.option("--m", default=16)
@click.option("--L", "length", default=14)
@click.option("--R", "regions", default=36)
@click.option("--repeats", default=15)
@click.option("--threads", default=0)
def main(checkpoint, config, n, m, length, regions, repeats, threads):
    if checkpoint:
        model = load_checkpoint(checkpoint)[0]
    else:
        torch.manual_seed(0)
        cfg = ModelConfig.small(vocab_size=100, feature_size=128) if config == "small" else \
            ModelConfig(vocab_size=100, feature_size=2048)
        model = KIDRR(cfg).eval()
    torch.set_num_threads(max(1, threads or torch.get_num_threads()))
    feed = _tile(model, n, m, length, regions)
    tmp = tempfile.mkdtemp()
    variants = {
        "literal (unfolded q/k, batched attention)": graphs.SimilarityOptions(fold_qk=False, attention_layout="batched"),
        "folded q/k, batched attention": graphs.SimilarityOptions(fold_qk=True, attention_layout="batched"),
        "unfolded q/k, GEMM attention": graphs.SimilarityOptions(fold_qk=False, attention_layout="gemm"),
        "bundle (folded q/k, GEMM attention)": graphs.SimilarityOptions(),
        "bundle fp16": graphs.SimilarityOptions(precision="fp16"),
        "bundle int8": graphs.SimilarityOptions(precision="int8"),
    }
    sessions = {k: session(graphs.similarity(model, 18, v), threads) for k, v in variants.items()}
    bundle_model = graphs.similarity(model, 18)
    offline = os.path.join(tmp, "offline.onnx")
    session(bundle_model, threads, optimization="all", optimized_path=offline)
    sessions["bundle, ORT optimisation off"] = session(bundle_model, threads, optimization="none")
    sessions["bundle, ORT offline-optimised file"] = session(offline, threads, optimization="none")
    start = time.perf_counter()
    session(bundle_model, threads)
    create_plain = time.perf_counter() - start
    start = time.perf_counter()
    session(offline, threads, optimization="none")
    create_offline = time.perf_counter() - start
    ref = sessions[next(iter(variants))].run(None, feed)[0]
    times = {k: [] for k in sessions}
    for k, s in sessions.items():  # warm-up
        s.run(None, feed)
    for _ in range(repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times[next(iter(variants))])
    pairs = n * m
    click.echo(f"similarity tile n={n} m={m} L={length} R={regions} D={model.cfg.embed_size} S={model.cfg.sim_size}, "
               f"{repeats} interleaved repeats, onnxruntime CPU, threads={threads or 'default'}")
    click.echo(f"{'variant':45s} {'median ms':>10s} {'pairs/s':>10s} {'speed-up':>9s} {'max|diff|':>10s}")
    for k, s in sessions.items():
        med = statistics.median(times[k])
        diff = float(np.abs(s.run(None, feed)[0] - ref).max())
        click.echo(f"{k:45s} {med * 1e3:10.2f} {pairs / med:10.0f} {base / med:8.2f}x {diff:10.2e}")
    click.echo(f"session creation: plain {create_plain * 1e3:.0f} ms, offline-optimised file {create_offline * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
