"""`kidrr search --demo`: search a rendered folder with the shipped pixel model, out of the box.

First use, each step cached under $KIDRR_CACHE (default ~/.cache/kidrr) and reused after:
1. render the demo folder (kidrr.render.render_demo_folder: 60 pixel test scenes plus the example
   query's scene and its colour-, place- and size-swapped family), keyed by the renderer's source;
2. the shipped pixel model's bundle (kidrr/shipped_pixels, with its preprocessing and backbone
   graphs), exported and cached as kidrr bench caches its bundles (default_bundle.py: the same
   bundle kidrr index and kidrr search use without --bundle);
3. index the folder through the bundle (Retriever.encode_image_files) into a gallery keyed by the
   bundle's identity;
then search it. Torch is only imported by the export, in its own child process.
"""
from __future__ import annotations

import os

from kidrr.bench import sources
from kidrr.errors import InputError
from kidrr.render import render_demo_folder

from .default_bundle import shipped_pixel_bundle

DEMO_QUERY = "a big red circle left of a small blue square"


def demo_root() -> str:
    return os.path.join(sources.cache_root(), "demo")


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


def demo_search(query: str, k: int = 10, threads: int = 0, log=None) -> list:
    """[{"rank", "file", "score", "path"}] best first (kidrr search's answer) over the demo folder."""
    from kidrr.runtime import open_bundle
    if not query or not query.strip():
        raise InputError(f"the query is empty; try \"{DEMO_QUERY}\"")
    with open_bundle(shipped_pixel_bundle(log), threads=threads) as retriever:
        images, gallery = demo_gallery(retriever, log)
        hits = retriever.search_text(query, k=min(k, len(gallery)), gallery=gallery)
    return [{"rank": r + 1, "file": str(name), "score": float(score), "path": os.path.join(images, str(name))}
            for r, (name, score) in enumerate(hits)]
