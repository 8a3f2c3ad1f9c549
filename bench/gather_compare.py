"""Reading k' shortlisted rows of locals from a gallery on disk, with and without the kernel prefetch
advice (MADV_WILLNEED) that DiskGallery.gather gives, alternating, on fresh random rows each time.

    python -m kidrr.bench.gather_compare GALLERY [--rows 100] [--trials 40] [--json FILE]

On a gallery much larger than the page cache most rows are cold, which is what this measures.
"""
from __future__ import annotations

import json
import os
import time

import click
import numpy as np

from kidrr.fileio import write_atomic


def compare(folder: str, rows: int, trials: int, seed: int = 0) -> dict:
    import kidrr.gallery.reader as reader
    from kidrr.gallery import open_gallery
    gal = open_gallery(folder)
    rng = np.random.default_rng(seed)
    advise = reader._prefetch
    times = {"prefetch": [], "plain": []}
    try:
        for trial in range(trials):
            mode = "prefetch" if trial % 2 == 0 else "plain"
            reader._prefetch = advise if mode == "prefetch" else (lambda arr, r: None)
            pick = np.sort(rng.choice(gal.manifest.rows, rows, replace=False))
            t = time.perf_counter()
            gal.gather(pick)
            times[mode].append(time.perf_counter() - t)
    finally:
        reader._prefetch = advise
    return {"items": gal.manifest.rows, "rows": rows, "trials": trials, "load": os.getloadavg(),
            **{f"{k}_p50_ms": float(np.median(v) * 1000) for k, v in times.items()},
            **{f"{k}_p90_ms": float(np.percentile(v, 90) * 1000) for k, v in times.items()}}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("gallery", type=click.Path(file_okay=False))
@click.option("--rows", type=int, default=100, show_default=True)
@click.option("--trials", type=int, default=40, show_default=True)
@click.option("--json", "json_path", default=None)
def main(gallery, rows, trials, json_path):
    """Cold-cache gather of ROWS random rows, with and without prefetch advice, side by side."""
    out = json.dumps(compare(gallery, rows, trials), indent=1)
    if json_path:
        write_atomic(json_path, out.encode())
    click.echo(out)


if __name__ == "__main__":
    main()
