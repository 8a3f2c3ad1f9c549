"""kidrr gallery: create | add | remove | compact | info | verify | search | duplicates | convert (docs/gallery.md).

`add` and `search` are registered by the front door (kidrr/cli.py): they are shortcuts of
`kidrr index --out FOLDER --append` and `kidrr search --gallery FOLDER`, which live above this package.
"""
from __future__ import annotations

import json
import sys

import click
from tqdm import tqdm

from kidrr.errors import KidrrError, describe

from .convert import convert_v1
from .layout import LOCALS_DTYPES
from .duplicates import DEFAULT_THRESHOLD, find_duplicates
from .reader import open_gallery, verify
from .npy_input import read_ids
from .writer import GalleryWriter, create_gallery

CTX = {"help_option_names": ["-h", "--help"]}


def _fail(exc):
    click.echo(f"kidrr gallery: error: {describe(exc)}", err=True)
    sys.exit(2)


def _bundle_identity(bundle: str) -> tuple[str, dict]:
    from kidrr.runtime.bundle import load_bundle
    b = load_bundle(bundle, verify=True)
    return b.identity, b.model


@click.group(context_settings=CTX)
def main():
    """Galleries on disk: a folder of memory-mapped segments with ids, an ANN first stage, search.
    `add` and `search` are shortcuts of `kidrr index --out FOLDER --append` and `kidrr search --gallery FOLDER`."""


@main.command(context_settings=CTX)
@click.argument("folder", type=click.Path())
@click.option("--bundle", required=True, type=click.Path(file_okay=False), help="the bundle that encodes the items")
@click.option("--regions", type=int, required=True, help="local vectors per item (R)")
@click.option("--locals-dtype", type=click.Choice(sorted(LOCALS_DTYPES)), default="fp16", show_default=True)
@click.option("--ann", type=click.Choice(["ivf", "hnsw"]), default="ivf", show_default=True,
              help="approximate first stage built for segments of at least --ann-min-rows items")
@click.option("--ann-min-rows", type=int, default=50_000, show_default=True)
def create(folder, bundle, regions, locals_dtype, ann, ann_min_rows):
    """An empty gallery for BUNDLE's items."""
    try:
        identity, model = _bundle_identity(bundle)
        create_gallery(folder, identity, regions, int(model["embed_size"]), locals_dtype, ann, ann_min_rows)
    except (KidrrError, OSError) as exc:
        _fail(exc)
    click.echo(f"created {folder}: {locals_dtype} locals, R={regions}, D={model['embed_size']}, ann {ann}")


@main.command(context_settings=CTX)
@click.argument("folder", type=click.Path(file_okay=False))
@click.argument("ids", nargs=-1)
@click.option("--ids-file", type=click.Path(dir_okay=False), help="text file, one id per line")
def remove(folder, ids, ids_file):
    """Mark items removed (tombstones); `compact` reclaims the space."""
    try:
        wanted = list(ids) + (read_ids(ids_file, "--ids-file") if ids_file else [])
        with GalleryWriter(folder) as w:
            live = w.remove(wanted)
    except (KidrrError, OSError) as exc:
        _fail(exc)
    click.echo(f"removed {len(wanted)} items; {live} live")


@main.command(context_settings=CTX)
@click.argument("folder", type=click.Path(file_okay=False))
def compact(folder):
    """Rewrite the live items into one segment (and one ANN index)."""
    try:
        with GalleryWriter(folder, progress=True) as w:
            live = w.compact()
    except (KidrrError, OSError) as exc:
        _fail(exc)
    click.echo(f"compacted {folder}: {live} live items in one segment")


@main.command(context_settings=CTX)
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def info(folder, as_json):
    """Counts, dims, dtypes, segments and the first stage a search would use."""
    try:
        g = open_gallery(folder)
    except (KidrrError, OSError) as exc:
        _fail(exc)
    m = g.manifest
    doc = {"folder": g.folder, "bundle_id": m.bundle_id, "generation": m.generation, "rows": m.rows, "live": m.live,
           "removed": m.removed, "regions": m.regions, "dim": m.dim, "locals_dtype": m.locals_dtype,
           "ann": m.ann_method, "ann_min_rows": m.ann_min_rows, "first_stage": g.describe_first_stage(),
           "fields": g.fields,
           "thumbnails": sum(s.thumbnails["count"] for s in m.segments if s.thumbnails),
           "disk_bytes": sum(e["bytes"] for s in m.segments for e in
                             list(s.files.values()) + [x for x in (s.tombstones, s.ann) if x]),
           "segments": [{"name": s.name, "rows": s.rows, "removed": s.tombstones["count"] if s.tombstones else 0,
                         "ann": s.ann["method"] if s.ann else None} for s in m.segments]}
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    for key in ("folder", "bundle_id", "generation", "rows", "live", "removed", "regions", "dim", "locals_dtype",
                "ann", "first_stage", "disk_bytes", "fields", "thumbnails"):
        click.echo(f"{key:>13}: {doc[key]}")
    for s in doc["segments"]:
        click.echo(f"    {s['name']}: {s['rows']} rows, {s['removed']} removed, ann {s['ann'] or '-'}")


@main.command("verify", context_settings=CTX)
@click.argument("folder", type=click.Path(file_okay=False))
def verify_cmd(folder):
    """Check every file's sha256 against the manifest (reads everything)."""
    try:
        g = open_gallery(folder)
        total = sum(1 + bool(s.tombstones) + bool(s.ann) + len(s.files) - 1 for s in g.manifest.segments)
        with tqdm(total=total, desc="verifying", unit="file") as bar:
            problems = verify(g, bar)
    except (KidrrError, OSError) as exc:
        _fail(exc)
    if problems:
        for p in problems:
            click.echo(f"BAD {p}", err=True)
        sys.exit(1)
    click.echo(f"{folder}: every file matches the manifest ({g.manifest.live} live items)")


@main.command(context_settings=CTX)
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_THRESHOLD, show_default=True,
              help="globals cosine at or above which two items are near-duplicates")
@click.option("--first-stage", type=click.Choice(["auto", "exact", "ann"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def duplicates(folder, threshold, first_stage, as_json):
    """Groups of near-identical items (each item's nearest neighbours through the index, not n^2)."""
    try:
        g = open_gallery(folder)
        with tqdm(total=len(g), desc="finding duplicates", unit="item", unit_scale=True, leave=False) as bar:
            groups = find_duplicates(g, threshold, method=first_stage, progress=bar)
    except (KidrrError, OSError) as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({"threshold": threshold, "groups": groups}, indent=1))
        return
    for i, group in enumerate(groups, 1):
        click.echo(f"group {i}: " + "  ".join(group))
    click.echo(f"{len(groups)} group(s), {sum(len(x) for x in groups)} items, threshold {threshold}", err=True)


@main.command(context_settings=CTX)
@click.argument("npz", type=click.Path(dir_okay=False))
@click.argument("folder", type=click.Path())
@click.option("--locals-dtype", type=click.Choice(sorted(LOCALS_DTYPES)), default="fp16", show_default=True)
@click.option("--ann", type=click.Choice(["ivf", "hnsw"]), default="ivf", show_default=True)
def convert(npz, folder, locals_dtype, ann):
    """A v1 .npz gallery -> a format-2 folder (ids are the v1 positions)."""
    try:
        n = convert_v1(npz, folder, locals_dtype, ann, progress=True)
    except (KidrrError, OSError) as exc:
        _fail(exc)
    click.echo(f"converted {n} items from {npz} into {folder}")


if __name__ == "__main__":
    main()
