"""fp32 (function bodies, fused kernels), int8 dynamic and int8 static QDQ similarity graphs, side by side.

    python -m kidrr.bench.precision_compare [--tiles 64x16,256x32] [--rounds 7] [--threads 2] [--json F]

The shipped model (small config) is exported fp32, int8-dynamic and int8 (static QDQ, calibrated on
the synthetic dev set) into a temporary folder; all four sessions live in one process and are timed
in alternation on the same inputs, so a busy machine slows them alike. Medians, pairs/s.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from .kernels_compare import _inputs

VARIANTS = (("fp32 bodies", "fp32", "bodies"), ("fp32 fused", "fp32", "auto"),
            ("int8 dynamic", "int8-dynamic", "auto"), ("int8 QDQ", "int8", "auto"))


def measure(work: str, tiles, regions: int, length: int, rounds: int, threads: int) -> dict:
    from kidrr.export.bundle import export_bundle
    from kidrr.runtime import open_bundle
    folders = {}
    for precision in ("fp32", "int8-dynamic", "int8"):
        folders[precision] = os.path.join(work, precision)
        export_bundle(None, folders[precision], precision=precision, verify=False, progress=False, log=lambda m: None)
    runtimes = {name: open_bundle(folders[p], threads=threads, kernels=k) for name, p, k in VARIANTS}
    out = {"threads": threads, "regions": regions, "caption_len": length, "rounds": rounds, "tiles": [],
           "kernels": {name: rt.runner.kernels for name, rt in runtimes.items()}}
    try:
        for n, m in tiles:
            args = _inputs(runtimes["fp32 bodies"], n, m, regions, length)
            ref = runtimes["fp32 bodies"].runner.score(*args)
            times = {name: [] for name in runtimes}
            for rt in runtimes.values():
                rt.runner.score(*args)   # warm-up
            for _ in range(rounds):
                for name, rt in runtimes.items():
                    t = time.perf_counter()
                    rt.runner.score(*args)
                    times[name].append(time.perf_counter() - t)
            row = {"tile": f"{n}x{m}"}
            for name, rt in runtimes.items():
                row[name] = {"pairs_per_s": n * m / float(np.median(times[name])),
                             "max_abs_diff": float(np.abs(rt.runner.score(*args) - ref).max())}
            out["tiles"].append(row)
    finally:
        for rt in runtimes.values():
            rt.close()
    return out


def table(res: dict) -> str:
    names = [v[0] for v in VARIANTS]
    lines = [f"similarity graph, shipped model, R={res['regions']}, L<={res['caption_len']}, {res['threads']} threads, "
             f"medians of {res['rounds']} alternating rounds (pairs/s; x fp32 bodies; max |diff| vs fp32 bodies)",
             "| tile | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in res["tiles"]:
        base = r["fp32 bodies"]["pairs_per_s"]
        cells = [f"{r[n]['pairs_per_s']:,.0f} ({r[n]['pairs_per_s'] / base:.2f}x, {r[n]['max_abs_diff']:.1e})"
                 for n in names]
        lines.append(f"| {r['tile']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", default="64x16,256x32")
    p.add_argument("--regions", type=int, default=16)
    p.add_argument("--caption-len", type=int, default=12)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    tiles = [tuple(int(v) for v in t.split("x")) for t in a.tiles.split(",")]
    with tempfile.TemporaryDirectory(prefix="kidrr-precision-") as work:
        res = measure(work, tiles, a.regions, a.caption_len, a.rounds, a.threads)
    print(table(res))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
