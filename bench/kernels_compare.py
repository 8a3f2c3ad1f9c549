"""Fused kernels (libkidrr_ops) against the ops' function bodies, side by side in one run.

    python -m kidrr.bench.kernels_compare [--bundle DIR] [--tiles 64x16,256x32] [--rounds 7] [--threads 2] [--json F]

Default bundle: the shipped model exported fp32 into a temporary folder. Both sessions live in one
process and are timed in alternation (round r: bodies then fused), so a noisy machine slows both
alike; the table gives per-setting medians (pairs/s) and the ratio, plus the largest score difference.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def _inputs(rt, n: int, m: int, regions: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, regions, rt.bundle.manifest["model"]["feature_size"])).astype(np.float32)
    locs, glob = rt.runner.encode_images(feats)
    d = locs.shape[-1]
    lengths = rng.integers(max(1, length // 2), length + 1, m).astype(np.int64)
    lengths[0] = length
    cap = rng.standard_normal((m, length, d)).astype(np.float32)
    cap /= np.linalg.norm(cap, axis=-1, keepdims=True)
    cap *= (np.arange(length)[None, :] < lengths[:, None])[:, :, None]
    cg = rng.standard_normal((m, d)).astype(np.float32)
    cg /= np.linalg.norm(cg, axis=-1, keepdims=True)
    return locs, glob, cap, cg, lengths


def measure(bundle: str, tiles, regions: int, length: int, rounds: int, threads: int) -> dict:
    from kidrr.runtime import open_bundle
    out = {"bundle": bundle, "threads": threads, "regions": regions, "caption_len": length, "rounds": rounds,
           "tiles": []}
    with open_bundle(bundle, threads=threads, kernels="bodies") as bodies, \
            open_bundle(bundle, threads=threads) as fused:
        if not fused.runner.kernels.startswith("fused"):
            sys.exit(f"no fused kernels to compare: {fused.runner.kernels}")
        out["kernels"] = fused.runner.kernels
        for n, m in tiles:
            args = _inputs(bodies, n, m, regions, length)
            want, got = bodies.runner.score(*args), fused.runner.score(*args)
            times = {"bodies": [], "fused": []}
            for name, rt in (("bodies", bodies), ("fused", fused)):
                rt.runner.score(*args)  # warm-up
            for _ in range(rounds):
                for name, rt in (("bodies", bodies), ("fused", fused)):
                    t = time.perf_counter()
                    rt.runner.score(*args)
                    times[name].append(time.perf_counter() - t)
            row = {"tile": f"{n}x{m}", "max_abs_diff": float(np.abs(got - want).max())}
            for name, ts in times.items():
                row[f"{name}_pairs_per_s"] = n * m / float(np.median(ts))
            row["ratio"] = row["fused_pairs_per_s"] / row["bodies_pairs_per_s"]
            out["tiles"].append(row)
    return out


def table(res: dict) -> str:
    lines = [f"similarity graph, R={res['regions']}, L<={res['caption_len']}, {res['threads']} threads, "
             f"medians of {res['rounds']} alternating rounds; {res['kernels']}",
             f"{'tile':>9} {'bodies pairs/s':>15} {'fused pairs/s':>14} {'fused/bodies':>13} {'max |diff|':>11}"]
    for r in res["tiles"]:
        lines.append(f"{r['tile']:>9} {r['bodies_pairs_per_s']:>15,.0f} {r['fused_pairs_per_s']:>14,.0f} "
                     f"{r['ratio']:>12.2f}x {r['max_abs_diff']:>11.1e}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="fp32 bundle (default: the shipped model, exported now)")
    p.add_argument("--tiles", default="64x16,256x32", help="images x captions per scoring call, comma-separated")
    p.add_argument("--regions", type=int, default=16)
    p.add_argument("--caption-len", type=int, default=12)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    tiles = [tuple(int(v) for v in t.split("x")) for t in a.tiles.split(",")]
    with tempfile.TemporaryDirectory(prefix="kidrr-kernels-") as work:
        bundle = a.bundle
        if bundle is None:
            from kidrr.export.bundle import export_bundle
            bundle = os.path.join(work, "bundle")
            export_bundle(None, bundle, verify=False, progress=False, log=lambda m: None)
        res = measure(bundle, tiles, a.regions, a.caption_len, a.rounds, a.threads)
    print(table(res))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
