"""`kidrr search`: the photos of a gallery that best match a sentence, best first (torch-free).

Without --bundle the bundle is the one the gallery was made with, read from the gallery's
kidrr-index.json and checked against the identity the gallery itself carries; galleries made
elsewhere (kidrr index --globals, kidrr gallery add) fall back to the shipped real-photo model, also checked.
"""
from __future__ import annotations

import json
import os
import sys

import click

from kidrr.errors import BundleError, InputError, KidrrError, describe

from .index import read_sidecar, sidecar_path

# The full scorer reranks the globals' best 100 by default: on f8k-photos dev two-stage search at
# k'=50 already matched exhaustive scoring (+0.10 rSum) at 9.8x its speed (docs/shipped_photos.md);
# 100 leaves a 2x margin for other photos and models.
DEFAULT_SHORTLIST = 100


def _open_gallery(rt, gallery: str):
    if gallery.endswith(".npz"):
        return rt.load_gallery(gallery)
    if not os.path.isdir(gallery):
        raise InputError(f"gallery {gallery} does not exist; make one with `kidrr index --images DIR --out {gallery}`")
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


def search(gallery: str, query: str | None = None, k: int = 10, bundle: str | None = None,
           shortlist: int | None = None, threads: int = 0, like: str | None = None, like_id: str | None = None,
           where=None, dedup: float | None = None, first_stage: str = "auto", nprobe: int | None = None,
           ef: int | None = None) -> list:
    """[{"rank", "file", "score", "path", "metadata"}] best first. One of: query (a sentence), like (a
    photo file: photos that look like it, by the globals' cosine), like_id (an item of the gallery,
    by its stored global; the item itself is left out). where: a metadata filter (JSON text or object),
    dedup: collapse near-duplicates above this globals cosine. first_stage / nprobe / ef: how a format-2
    gallery finds its shortlist (docs/gallery.md)."""
    from kidrr.runtime import open_bundle
    given = [x for x in (query, like, like_id) if x is not None]
    if len(given) != 1:
        raise InputError("give one of: a sentence to search for, --like PHOTO or --like-id ID")
    if query is not None and not query.strip():
        raise InputError("the query is empty; give a sentence, e.g. \"two dogs playing in the snow\"")
    bundle, record = bundle_for(gallery, bundle)
    with open_bundle(bundle, threads=threads) as rt:
        if record is not None and record.get("bundle_id") not in (None, rt.bundle_id):
            raise BundleError(f"bundle {bundle} has changed since gallery {gallery} was indexed with it "
                              f"(identity {rt.bundle_id[:12]}..., recorded {str(record['bundle_id'])[:12]}...); "
                              f"re-index the photos or pass the original --bundle")
        items = _open_gallery(rt, gallery)
        if hasattr(items, "first_stage"):
            items.first_stage, items.nprobe, items.ef = first_stage, nprobe, ef
        elif (first_stage, nprobe, ef) != ("auto", None, None):
            raise InputError("--first-stage, --nprobe and --ef choose a format-2 gallery's first stage; a .npz "
                             "gallery is always searched exactly (convert it: kidrr gallery convert)")
        k = min(k, len(items)) if len(items) else k
        extra = {"where": where, "dedup": dedup}
        if query is not None:
            hits = rt.search_text(query, k=k, gallery=items, shortlist=shortlist, **extra)
        elif like_id is not None:
            hits = rt.search_like_id(like_id, k=k, gallery=items, **extra)
        else:
            if not os.path.isfile(like):
                raise InputError(f"--like {like}: no such photo file")
            photo = rt.encode_image_files([like], strict=True)
            hits = rt.search_similar(photo, k=k, gallery=items, **extra)[0]
        metas = _metadata(items, [name for name, _ in hits])
    root = record.get("images") if record else None
    return [{"rank": r + 1, "file": str(name), "score": float(score),
             "path": os.path.join(root, str(name)) if root else None, "metadata": meta}
            for r, ((name, score), meta) in enumerate(zip(hits, metas))]


def _metadata(items, names: list) -> list:
    """Each hit's metadata ({} for none; format-2 galleries only)."""
    if not hasattr(items, "metadata") or not names:
        return [{} for _ in names]
    rows = items.find(names)
    return items.metadata([rows[n] for n in names])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("query", required=False)
@click.option("--gallery", default=None, help="gallery made by kidrr index (folder, or .npz file)")
@click.option("--bundle", default=None, help="bundle (default: the one the gallery was made with)")
@click.option("-k", "k", type=int, default=10, show_default=True, help="number of photos to list")
@click.option("--shortlist", type=click.IntRange(min=0), default=None,
              help=f"two-stage search: the full scorer reranks this many items shortlisted by the globals "
                   f"(default {DEFAULT_SHORTLIST}, or k if larger; 0: score every item)")
@click.option("--like", "like", default=None, type=click.Path(dir_okay=False),
              help="search by example: photos that look like this photo file (instead of QUERY)")
@click.option("--like-id", "like_id", default=None, help="search by example: photos like this item of the gallery "
                                                          "(its id, e.g. trip/a.jpg), by its stored vector")
@click.option("--where", "where", default=None,
              help='metadata filter as JSON, e.g. \'{"album": "beach"}\' or \'{"taken": {"gte": "2019-01-01"}}\' '
                   "(docs/gallery.md)")
@click.option("--dedup", is_flag=True, help="collapse near-duplicate photos to the best of each group")
@click.option("--dedup-threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="globals cosine above which two photos are near-duplicates (default 0.95; implies --dedup)")
@click.option("--first-stage", type=click.Choice(["auto", "exact", "ann"]), default="auto", show_default=True,
              help="how a format-2 gallery finds the shortlist (auto: ann above 50,000 items)")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF lists scanned per query (default max(16, nlist/32); docs/gallery.md)")
@click.option("--ef", type=click.IntRange(min=1), default=None, help="HNSW efSearch (default max(2 k', 64))")
@click.option("--threads", type=int, default=0)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--demo", is_flag=True, help="search a rendered demo folder with the shipped pixel model (rendered, "
                                           "exported and indexed into the cache on first use), e.g. "
                                           "kidrr search --demo \"a big red circle left of a small blue square\"")
def main(query, gallery, bundle, k, shortlist, like, like_id, where, dedup, dedup_threshold, first_stage, nprobe, ef,
         threads, as_json, demo):
    """Items of GALLERY ranked by how well they match QUERY (or look like --like / --like-id).
    `kidrr gallery search FOLDER QUERY` is the same command with --gallery FOLDER."""
    from kidrr.gallery.duplicates import DEFAULT_THRESHOLD
    try:
        threshold = dedup_threshold if dedup_threshold is not None else (DEFAULT_THRESHOLD if dedup else None)
        if demo:
            if gallery or bundle or shortlist or like or like_id or where or threshold or nprobe or ef \
                    or first_stage != "auto":
                raise InputError("--demo searches its own folder with the shipped pixel model; drop --gallery, "
                                 "--bundle, --shortlist, --like, --like-id, --where, --dedup and the first-stage "
                                 "options")
            if not query:
                raise InputError("give a sentence to search the demo folder for")
            from .demo import demo_search
            hits = demo_search(query, k, threads, log=None if as_json else lambda m: click.echo(m, err=True))
        elif not gallery:
            raise InputError("give --gallery (made by kidrr index), or --demo to try the shipped pixel model")
        else:
            shortlist = max(k, DEFAULT_SHORTLIST) if shortlist is None else (shortlist or None)
            hits = search(gallery, query, k, bundle, shortlist, threads, like=like, like_id=like_id, where=where,
                          dedup=threshold, first_stage=first_stage, nprobe=nprobe, ef=ef)
    except (KidrrError, OSError) as exc:
        click.echo(f"error: {describe(exc)}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({"query": query, "like": like, "like_id": like_id, "where": where,
                               "results": hits}, indent=2))
        return
    for hit in hits:
        click.echo(f"{hit['rank']:3d}  {hit['score']:.4f}  {hit['file']}")


def gallery_search_command() -> click.Command:
    """`kidrr gallery search FOLDER [QUERY] [OPTIONS]`: exactly `kidrr search --gallery FOLDER [QUERY] [OPTIONS]`
    (same options, same output, same exit codes)."""
    params = [click.Argument(["folder"], type=click.Path())] + [
        p for p in main.params if p.name not in ("gallery", "demo")]

    @click.pass_context
    def search_gallery(ctx, folder, **options):
        return ctx.invoke(main, gallery=folder, **options)
    return click.Command("search", params=params, callback=search_gallery, context_settings=main.context_settings,
                         help="Items of the gallery FOLDER ranked for QUERY (or like --like / --like-id). A shortcut "
                              "of `kidrr search --gallery FOLDER`: same options, same output.")


if __name__ == "__main__":
    main()
