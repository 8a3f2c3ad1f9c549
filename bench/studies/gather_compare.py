"""Reading k' shortlisted rows of locals from a gallery on disk with and without the kernel prefetch
advice (MADV_WILLNEED per run of adjacent rows) that DiskGallery.gather gives, alternating, on
fresh random rows each time; and the fp16 -> fp32 conversion of such a block, numpy against
segment_io.half_to_float. Before each trial the locals file's pages are dropped from the page cache
(POSIX_FADV_DONTNEED: clean pages only, nothing is written), so every trial reads cold rows
whatever the gallery's size and the machine's memory; other processes reading the same gallery
lose those cached pages too.

    python -m kidrr.bench.studies.gather_compare GALLERY [--rows 100] [--trials 40] [--json FILE]

"""
from __future__ import annotations

import json
import os
import time

import click
import numpy as np

from kidrr.fileio import write_atomic


def _drop_cached(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _conversion(rows: int, regions: int, dim: int, trials: int) -> dict:
    """fp16 -> fp32 of one gathered block: numpy's astype against segment_io.half_to_float, alternating."""
    from kidrr.gallery.segment_io import half_to_float
    block = np.random.default_rng(0).standard_normal((rows, regions, dim)).astype(np.float16)
    times = {"numpy": [], "half_to_float": []}
    half_to_float(block)
    for trial in range(2 * trials):
        name = "numpy" if trial % 2 == 0 else "half_to_float"
        t = time.perf_counter()
        block.astype(np.float32) if name == "numpy" else half_to_float(block)
        times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v) * 1000) for k, v in times.items()}
    return {"fp16_to_fp32_numpy_p50_ms": med["numpy"], "fp16_to_fp32_p50_ms": med["half_to_float"],
            "fp16_to_fp32_speedup": med["numpy"] / med["half_to_float"]}


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
            for seg in gal.segments:
                _drop_cached(os.path.join(gal.folder, seg.name, "locals.npy"))
            pick = np.sort(rng.choice(gal.manifest.rows, rows, replace=False))
            t = time.perf_counter()
            gal.gather(pick)
            times[mode].append(time.perf_counter() - t)
    finally:
        reader._prefetch = advise
    return {"items": gal.manifest.rows, "rows": rows, "trials": trials, "load": os.getloadavg(),
            **_conversion(rows, gal.regions, gal.dim, trials),
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
