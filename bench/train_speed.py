"""Training throughput: scored pairs per second of kidrr train's optimisation step, per config.

    python bench/train_speed.py   (or python -m kidrr.bench.train_speed) [--threads 2] [--steps 5] [--configs small,published] [--json out.json]

Times `Trainer.step` (encode a batch, score its batch x batch matrix in tiles, both losses, backward,
clip, Adam) on random features and captions with the shapes of each config, all in one run so the
numbers compare side by side. Reports the median over --steps timed steps after one warm-up step.
Pairs per step = batch^2, the same count kidrr train's progress bar uses.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from kidrr.config import ModelConfig, TrainConfig
from kidrr.fileio import write_atomic
from kidrr.model import KIDRR
from kidrr.tokenizer import SPECIALS, Vocabulary
from kidrr.train import Trainer

# Shapes per config: the small one as once trained on the retired f8k-sample (R=49, F=256), the published one on
# BUTD features (R=36, F=2048) at the batch that fits a CPU run. L: tokens incl. <start>/<end>.
CONFIGS = {
    "small": dict(model=ModelConfig.small, batch=128, R=49, F=256, L=14),
    "published": dict(model=ModelConfig, batch=32, R=36, F=2048, L=15),
}
VOCAB = 1000


def measure(name: str, steps: int, hardest: bool) -> dict:
    spec = CONFIGS[name]
    torch.manual_seed(0)
    model = KIDRR(spec["model"](vocab_size=VOCAB, feature_size=spec["F"]))
    trainer = Trainer(model, Vocabulary(SPECIALS), TrainConfig(batch_size=spec["batch"]))
    rng = np.random.default_rng(0)
    b = spec["batch"]
    feats = torch.from_numpy(rng.normal(size=(b, spec["R"], spec["F"])).astype(np.float32))
    ids = torch.from_numpy(rng.integers(4, VOCAB, size=(b, spec["L"])))
    lengths = torch.full((b,), spec["L"], dtype=torch.int64)
    image_ids = torch.arange(b)
    times = []
    for k in range(steps + 1):
        start = time.perf_counter()
        trainer.step(feats, ids, lengths, image_ids, hardest)
        if k:  # the first step is a warm-up (allocations, thread pool start)
            times.append(time.perf_counter() - start)
    secs = statistics.median(times)
    return {"config": name, "embed_size": model.cfg.embed_size, "sim_size": model.cfg.sim_size,
            "batch": b, "regions": spec["R"], "feature_size": spec["F"], "caption_tokens": spec["L"],
            "median_step_s": secs, "pairs_per_s": b * b / secs, "steps": steps}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps per config (after one warm-up)")
    p.add_argument("--configs", default="small,published", help=f"comma-separated, of {sorted(CONFIGS)}")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.json:
        from kidrr.errors import InputError
        from kidrr.fileio import check_report_path
        try:
            check_report_path(args.json, "--json")   # before the run: a folder or a foreign file fails now
        except InputError as exc:
            p.error(str(exc))
    torch.set_num_threads(args.threads)
    results = []
    for name in names:
        r = measure(name, args.steps, hardest=True)
        results.append(r)
        print(f"{name:9s} D={r['embed_size']} S={r['sim_size']} batch {r['batch']} R={r['regions']} "
              f"F={r['feature_size']} L={r['caption_tokens']}: {r['pairs_per_s']:,.0f} pairs/s "
              f"(median step {r['median_step_s']:.2f} s over {r['steps']}, {args.threads} threads)", flush=True)
    if args.json:
        write_atomic(os.path.abspath(args.json), json.dumps({"threads": args.threads, "results": results},
                                                            indent=2).encode())


if __name__ == "__main__":
    main()
