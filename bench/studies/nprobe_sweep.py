"""How many IVF lists a text query must scan: shortlist recall and final top-10 overlap against
the exact first stage, per nprobe, on one format-2 gallery of the shipped bundle.

    python -m kidrr.bench.studies.nprobe_sweep GALLERY [--nprobe 4,8,16,24,32,64] [--queries 60] [--shortlist 100] [--json FILE]

Queries are captions of the synthetic test set (what `kidrr bench scale` galleries are drawn
around); the rerank is the bundle's similarity graph, as in a search. The measurement behind the
default nprobe (docs/gallery.md).
"""
from __future__ import annotations

import json
import os
import time

import click
import numpy as np

from kidrr.errors import InputError, KidrrError
from kidrr.fileio import write_atomic

TOP = 10


def sweep(folder: str, bundle: str, captions: list, nprobes, shortlist: int, threads: int) -> dict:
    from kidrr.gallery import open_gallery
    from kidrr.gallery.first_stage import default_nprobe
    from kidrr.runtime import open_bundle
    caps = list(captions)
    with open_bundle(bundle, threads=threads) as rt:
        g = open_gallery(folder, bundle_id=rt.bundle_id, dim=rt.planner.dim)
        lists = [s.ann_info["params"]["nlist"] for s in g.segments if s.ann_info and s.ann_info["method"] == "ivf"]
        if not lists:
            raise InputError(f"{folder} has no IVF index to sweep; build the gallery with --ann ivf")
        enc = rt.encode_texts(caps, on_long="truncate")

        def top(rows_per_query):
            out = []
            for q, rows in enumerate(rows_per_query):
                locs, globs = g.gather(rows)
                s = rt.runner.score(locs, globs, enc.padded_locals(q, q + 1), enc.globals[q:q + 1],
                                    enc.lengths[q:q + 1])[:, 0]
                out.append(set(rows[np.argsort(-s, kind="stable")[:TOP]].tolist()))
            return out
        exact = g.shortlist(enc.globals, shortlist, method="exact")
        exact_top = top(exact)
        result = {"gallery": folder, "items": len(g), "nlist": lists, "default_nprobe": default_nprobe(max(lists)),
                  "queries": len(caps), "shortlist": shortlist, "load_before": os.getloadavg(), "nprobe": {}}
        for nprobe in nprobes:
            g.nprobe = nprobe
            times = []
            found = []
            for q in range(len(caps)):
                t = time.perf_counter()
                found.append(g.shortlist(enc.globals[q:q + 1], shortlist, method="ann")[0])
                times.append(time.perf_counter() - t)
            result["nprobe"][str(nprobe)] = {
                f"recall@{shortlist}": float(np.mean([len(set(a.tolist()) & set(b.tolist())) / shortlist
                                                     for a, b in zip(found, exact)])),
                f"top{TOP}_overlap": float(np.mean([len(a & b) / TOP for a, b in zip(top(found), exact_top)])),
                "first_stage_p50_ms": float(np.median(times) * 1000)}
    result["load_after"] = os.getloadavg()
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("gallery", type=click.Path(file_okay=False))
@click.option("--nprobe", "nprobes", default="4,8,16,24,32,64", show_default=True)
@click.option("--queries", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--shortlist", type=click.IntRange(min=TOP), default=100, show_default=True)
@click.option("--threads", type=int, default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--json", "json_path", default=None)
def main(gallery, nprobes, queries, shortlist, threads, json_path):
    """Shortlist recall and top-10 overlap against the exact first stage, per nprobe."""
    try:
        values = [int(v) for v in nprobes.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"must be integers separated by commas, got {nprobes!r}", param_hint="--nprobe")
    from kidrr.synthetic import make_synthetic
    from . import sources
    bundles, _, _ = sources.resolve_bundles(None, None, ["fp32"])
    split = make_synthetic("test")
    caps = [split.captions[i] for i in np.random.default_rng(0).choice(len(split.captions), queries, False)]
    try:
        out = json.dumps(sweep(gallery, bundles["fp32"], caps, values, shortlist, threads), indent=1)
    except KidrrError as exc:
        raise click.ClickException(str(exc)) from exc
    if json_path:
        write_atomic(json_path, out.encode())
    click.echo(out)


if __name__ == "__main__":
    main()
