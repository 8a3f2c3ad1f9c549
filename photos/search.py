"""`kidrr-search`: the photos of a gallery that best match a sentence, best first (torch-free).

Without --bundle the bundle is the one the gallery was made with, read from the gallery's
kidrr-index.json and checked against the identity the gallery itself carries; galleries made
elsewhere (kidrr-gallery add) fall back to the shipped real-photo model, also checked.
"""
from __future__ import annotations

import json
import os
import sys

import click

from kidrr.errors import BundleError, InputError, KidrrError, describe

from .index import read_sidecar, sidecar_path


def _open_gallery(rt, gallery: str):
    if gallery.endswith(".npz"):
        return rt.load_gallery(gallery)
    if not os.path.isdir(gallery):
        raise InputError(f"gallery {gallery} does not exist; make one with `kidrr-index --images DIR --out {gallery}`")
    from kidrr.gallery import open_gallery
    return open_gallery(gallery, bundle_id=rt.bundle_id, dim=int(rt.bundle.model["embed_size"]))


def bundle_for(gallery: str, bundle: str | None) -> tuple[str, dict | None]:
    """(bundle folder, the gallery's index record or None)."""
    record = read_sidecar(gallery)
    if bundle:
        return bundle, record
    if record is not None:
        if not os.path.isdir(record["bundle"]):
            raise BundleError(f"gallery {gallery} was made with bundle {record['bundle']}, which no longer exists "
                              f"(see {sidecar_path(gallery)}); pass --bundle with that bundle")
        return record["bundle"], record
    from .default_bundle import shipped_photo_bundle
    return shipped_photo_bundle(), None


def search(gallery: str, query: str, k: int = 10, bundle: str | None = None, shortlist: int | None = None,
           threads: int = 0) -> list:
    """[{"rank", "file", "score", "path"}] best first."""
    from kidrr.runtime import open_bundle
    if not query or not query.strip():
        raise InputError("the query is empty; give a sentence, e.g. \"two dogs playing in the snow\"")
    bundle, record = bundle_for(gallery, bundle)
    with open_bundle(bundle, threads=threads) as rt:
        if record is not None and record.get("bundle_id") not in (None, rt.bundle_id):
            raise BundleError(f"bundle {bundle} has changed since gallery {gallery} was indexed with it "
                              f"(identity {rt.bundle_id[:12]}..., recorded {str(record['bundle_id'])[:12]}...); "
                              f"re-index the photos or pass the original --bundle")
        items = _open_gallery(rt, gallery)
        k = min(k, len(items)) if len(items) else k
        hits = rt.search_text(query, k=k, gallery=items, shortlist=shortlist)
    root = record.get("images") if record else None
    return [{"rank": r + 1, "file": str(name), "score": float(score),
             "path": os.path.join(root, str(name)) if root else None} for r, (name, score) in enumerate(hits)]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("query")
@click.option("--gallery", default=None, help="gallery made by kidrr-index (folder, or .npz file)")
@click.option("--bundle", default=None, help="bundle (default: the one the gallery was made with)")
@click.option("-k", "k", type=int, default=10, show_default=True, help="number of photos to list")
@click.option("--shortlist", type=int, default=None, help="two-stage search: rerank this many by the globals")
@click.option("--threads", type=int, default=0)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--demo", is_flag=True, help="search a rendered demo folder with the shipped pixel model (rendered, "
                                           "exported and indexed into the cache on first use), e.g. "
                                           "kidrr-search --demo \"a big red circle left of a small blue square\"")
def main(query, gallery, bundle, k, shortlist, threads, as_json, demo):
    """Photos of GALLERY ranked by how well they match QUERY."""
    try:
        if demo:
            if gallery or bundle or shortlist:
                raise InputError("--demo searches its own folder with the shipped pixel model; drop --gallery, "
                                 "--bundle and --shortlist")
            from .demo import demo_search
            hits = demo_search(query, k, threads, log=None if as_json else lambda m: click.echo(m, err=True))
        elif not gallery:
            raise InputError("give --gallery (made by kidrr-index), or --demo to try the shipped pixel model")
        else:
            hits = search(gallery, query, k, bundle, shortlist, threads)
    except (KidrrError, OSError) as exc:
        click.echo(f"error: {describe(exc)}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"query": query, "results": hits}, indent=2))
        return
    for hit in hits:
        click.echo(f"{hit['rank']:3d}  {hit['score']:.4f}  {hit['file']}")


if __name__ == "__main__":
    main()
