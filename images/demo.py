"""`kidrr-search --demo`: search a rendered folder with the shipped pixel model, out of the box.

First use, each step cached under $KIDRR_CACHE (default ~/.cache/kidrr) and reused after:
1. render the demo folder (kidrr.render.render_demo_folder: 60 pixel test scenes plus the example
   query's scene and its colour-, place- and size-swapped family), keyed by the renderer's source;
2. export the shipped pixel model (kidrr/shipped_pixels) to a bundle with its preprocessing and
   backbone graphs, cached exactly as kidrr-bench caches its bundles (kidrr.bench.sources);
3. index the folder through the bundle (Retriever.encode_image_files) into a gallery keyed by the
   bundle's identity;
then search it. Torch is only imported by the export, in its own child process.
"""
from __future__ import annotations

import os

from kidrr.bench import sources
from kidrr.render import render_demo_folder

DEMO_QUERY = "a big red circle left of a small blue square"


def demo_root() -> str:
    return os.path.join(sources.cache_root(), "demo")


def demo_bundle(log=None) -> str:
    """The shipped pixel model's fp32 bundle (exported on first use, then cached)."""
    folder, sha = sources.resolve_checkpoint(sources.shipped_pixel_checkpoint_dir())
    return sources.export_cached(folder, sha, "fp32", log)


def demo_gallery(retriever, log=None):
    """(demo image folder, its gallery for this bundle): rendered and indexed once, then loaded."""
    images = render_demo_folder(demo_root(), progress=log is not None)
    path = os.path.join(images + "-galleries", f"{retriever.bundle_id[:16]}.npz")
    if os.path.exists(path):
        return images, retriever.load_gallery(path)
    names = sorted(n for n in os.listdir(images) if n.endswith(".png"))
    if log:
        log(f"indexing the {len(names)} demo pictures in {images}")
    gallery = retriever.encode_image_files([os.path.join(images, n) for n in names], names=names,
                                           strict=True, progress=log is not None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    gallery.save(path)   # written atomically: a gallery there is a whole one
    return images, gallery


def demo_search(query: str, k: int = 5, threads: int = 0, log=None):
    """(image folder, [(file name, score)] best first) for query over the demo folder."""
    from kidrr.runtime import open_bundle
    retriever = open_bundle(demo_bundle(log), threads=threads)
    images, gallery = demo_gallery(retriever, log)
    return images, retriever.search_text(query, k=min(k, len(gallery)), gallery=gallery)


__all__ = ["DEMO_QUERY", "demo_search", "demo_bundle", "demo_gallery", "demo_root"]


def print_hits(images: str, hits, as_json: bool = False) -> None:
    import json
    import click
    if as_json:
        click.echo(json.dumps({"images": images, "results": [{"file": n, "score": float(s)} for n, s in hits]}))
        return
    click.echo(f"demo pictures: {images}")
    for rank, (name, score) in enumerate(hits, 1):
        click.echo(f"{rank:3d}  {score:.4f}  {name}")
