"""`kidrr index`: a folder of photos -> a gallery searchable by text (torch-free: the runtime + kidrr.gallery).

The gallery is format 2 (a folder, written through kidrr.gallery's GalleryWriter), or a v1 .npz
file when --out ends in .npz. Ids are the files' paths relative to the image folder. Items encoded
elsewhere come in with --globals/--locals/--ids (kidrr.gallery.npy_input); `kidrr gallery add` is
this command with --out FOLDER --append. Beside it, `kidrr-index.json` records the bundle it was made with (so
kidrr search needs no --bundle), the image folder, and what was skipped and why.
"""
from __future__ import annotations

import json
import os
import sys

import click
from tqdm import tqdm

from kidrr.config import dump_json
from kidrr.errors import InputError, KidrrError, describe
from kidrr.fileio import write_atomic
from kidrr.images.batch import SkipReport, list_image_files

SIDECAR = "kidrr-index.json"
SEGMENT_IMAGES = 1024      # images encoded per gallery segment: bounds memory, keeps segments few


def sidecar_path(gallery: str) -> str:
    """Where the index record of a gallery lives: inside a format-2 folder, next to a .npz file."""
    return gallery + "." + SIDECAR if gallery.endswith(".npz") else os.path.join(gallery, SIDECAR)


def read_sidecar(gallery: str) -> dict | None:
    path = sidecar_path(gallery)
    if not os.path.isfile(path):
        return None
    if os.path.getsize(path) > 64 << 20:
        raise InputError(f"{path} is larger than any index record; it is not one, remove it")
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); pass --bundle explicitly") from exc
    if not isinstance(record, dict) or not isinstance(record.get("bundle"), str):
        raise InputError(f"{path} does not name a bundle; pass --bundle explicitly")
    return record


def list_inputs(images: str | None, list_file: str | None, metadata: str | None, report: SkipReport):
    """(root, ids, other files ignored, {id: metadata} or None): the photos under the folder `images`, or
    the ones `list_file` names (kidrr.photos.input_list; root: `images`, else the list's folder), with
    the metadata of the `metadata` sidecar or of the list's own columns (one source, not both)."""
    listed = None
    if list_file is None:
        if images is None:
            raise InputError("give --images (a folder of photos) or --list (a file naming them)")
        files, ignored = list_image_files(images, report)
    else:
        from .input_list import read_input_list
        images, files, listed = read_input_list(list_file, images, report)
        ignored = 0
    if metadata is None:
        return images, files, ignored, listed
    if listed is not None:
        raise InputError(f"--metadata {metadata} and the metadata columns of --list {list_file}: give the metadata "
                         f"in one of them")
    from kidrr.gallery.sidecar import check_names, read_sidecar
    sidecar = read_sidecar(metadata)
    if list_file is None:
        check_names(sidecar, _files_in(images, sidecar), metadata, f"files in {images}")
    else:
        check_names(sidecar, set(files), metadata, f"photos named by --list {list_file}")
    return images, files, ignored, sidecar


def index_folder(bundle: str, images: str | None, out: str, batch_size: int = 32, threads: int = 0,
                 strict: bool = False, append: bool = False, progress: bool = True, metadata: str | None = None,
                 exif: bool = True, thumbnails: bool = True, list_file: str | None = None) -> dict:
    """Encode every image under `images` (or named by `list_file`) into the gallery `out`; returns the
    index record. Each item carries what its file says (photo_meta: capture time, camera, size, folder)
    unless exif=False, updated by its entry in the `metadata` sidecar (CSV / JSON Lines,
    kidrr.gallery.sidecar) or the list's metadata columns, and a 256-px JPEG thumbnail (format-2
    galleries; thumbnails=False to skip)."""
    from kidrr.runtime import open_bundle
    report = SkipReport()
    v1 = out.endswith(".npz")
    if v1 and (metadata is not None or list_file is not None):
        raise InputError("--metadata and --list need a format-2 gallery folder (a .npz gallery holds no metadata)")
    images, files, ignored, sidecar = list_inputs(images, list_file, metadata, report)
    with open_bundle(bundle, threads=threads) as rt:
        if not rt.bundle.takes_pixels:
            raise InputError(f"bundle {bundle} takes region features, not images (it has no backbone); use a "
                             f"bundle exported from a checkpoint trained on kidrr features output")
        todo, before, created = files, 0, False
        if v1:
            if os.path.exists(out) and not append:
                raise InputError(f"{out} exists; choose another --out (kidrr never overwrites a gallery)")
            if append:
                raise InputError("--append works with format-2 gallery folders, not .npz files")
        else:
            from kidrr.gallery import create_gallery, open_gallery
            if append and os.path.isdir(out):
                existing = open_gallery(out, bundle_id=rt.bundle_id)
                present = existing.find(files)
                todo, before = [f for f in files if f not in present], len(existing)
            else:
                create_gallery(out, rt.bundle_id, regions=int(rt.bundle.image["regions"]),
                               dim=int(rt.bundle.model["embed_size"]))
                created = True
        bar = tqdm(total=len(todo), desc="kidrr index", unit="img", disable=not progress)
        added, parts, thumbs_made = 0, [], 0
        try:
            for start in range(0, len(todo), SEGMENT_IMAGES):
                names = todo[start:start + SEGMENT_IMAGES]
                skipped_before = len(report)
                try:
                    gallery = _encode_chunk(rt, images, names, batch_size, strict, report, bar)
                except InputError:
                    if strict or len(report) - skipped_before < len(names):
                        raise
                    continue   # every file of this chunk was skipped (each is in the report)
                if v1:
                    parts.append(gallery)
                else:
                    from kidrr.gallery import GalleryWriter
                    names = list(gallery.names)
                    metas = _metadata(images, names, sidecar, exif)
                    thumbs = _thumbnails(images, names) if thumbnails else None
                    thumbs_made += sum(t is not None for t in thumbs or ())
                    with GalleryWriter(out) as writer:
                        writer.add(gallery.globals, gallery.locals, names, metas, thumbs)
                added += len(gallery)
        except BaseException:
            if created and added == 0:
                _remove_empty_gallery(out)    # a rerun then starts afresh at the same --out
            raise
        finally:
            bar.close()
        if added == 0 and not before:
            if not v1:
                _remove_empty_gallery(out)
            raise InputError(f"none of the {len(files)} image file(s) in {images} could be indexed; "
                             + "; ".join(m for _, _, m in report.skipped[:3]))
        if v1:
            import numpy as np
            from kidrr.runtime import Gallery
            Gallery(np.concatenate([p.locals for p in parts]), np.concatenate([p.globals for p in parts]),
                    rt.bundle_id, tuple(n for p in parts for n in p.names)).save(out)
        record = {"bundle": os.path.abspath(bundle), "bundle_id": rt.bundle_id, "images": os.path.abspath(images),
                  **({"list": os.path.abspath(list_file)} if list_file else {}),
                  "backbone": rt.bundle.image["backbone"], "indexed": added, "already_indexed": len(files) - len(todo),
                  "files_found": len(files), "other_files_ignored": ignored, "thumbnails": thumbs_made,
                  "skipped": report.to_json()}
    write_atomic(sidecar_path(out), dump_json(record).encode())
    report.print_summary(len(todo), added)
    return record


def _index_with_ray(bundle, images, out, address, workers, cpus_per_worker, segment_photos, batch_size, strict,
                    append, metadata, exif, commit_every=8, commit_seconds=10.0, thumbnails=True,
                    list_file=None) -> dict:
    """--engine ray (kidrr.photos.ray_index), with the same index record and summary as the local engine."""
    if strict:
        raise InputError("--strict is for --engine local (a distributed job lists bad files and goes on)")
    from kidrr.images.batch import SkipReport
    from .ray_index import index_with_ray
    record = index_with_ray(bundle, images, out, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                            segment_photos=segment_photos, batch_size=batch_size, append=append, metadata=metadata,
                            exif=exif, commit_every=commit_every, commit_seconds=commit_seconds,
                            progress=sys.stderr.isatty(), thumbnails=thumbnails, list_file=list_file)
    write_atomic(sidecar_path(out), dump_json(record).encode())
    report = SkipReport([(s["file"], s["reason"], s["message"]) for s in record["skipped"]])
    report.print_summary(record["files_found"] - record["already_indexed"], record["indexed"])
    nodes = ", ".join(f"{n[:12]}: {c}" for n, c in sorted(record["photos_per_node"].items()))
    print(f"ray: {record['nodes']} node(s), photos encoded per node: {nodes or 'none'}; "
          f"{record['commits']} commit(s)", file=sys.stderr)
    return record


def _files_in(images: str, sidecar: dict) -> set:
    """The sidecar's names that are regular files inside the image folder (no absolute paths, no ..)."""
    return {n for n in sidecar if not os.path.isabs(n) and ".." not in n.split("/")
            and os.path.isfile(os.path.join(images, n))}


def _metadata(images: str, names: list, sidecar: dict | None, exif: bool):
    from kidrr.gallery.sidecar import metadata_for
    from .photo_meta import photo_metadata
    given = [photo_metadata(os.path.join(images, n), n) for n in names] if exif else None
    return metadata_for(names, sidecar, given)


def _thumbnails(images: str, names: list) -> list:
    """A thumbnail JPEG per indexed photo. Its file decoded once already (to be encoded), so a failure
    here means it changed meanwhile: the item is kept without a thumbnail (the page shows its id)."""
    from kidrr.errors import ImageError
    from kidrr.images.thumbnail import make_thumbnail
    out = []
    for n in names:
        try:
            out.append(make_thumbnail(os.path.join(images, n), name=n))
        except ImageError as exc:
            print(f"  no thumbnail for {n}: {exc}", file=sys.stderr)
            out.append(None)
    return out


def _encode_chunk(rt, images, names, batch_size, strict, report, bar):
    try:
        return rt.encode_image_files([os.path.join(images, n) for n in names], names=names, strict=strict,
                                     batch_size=batch_size, report=report)
    finally:
        bar.update(len(names))


def _remove_empty_gallery(out: str) -> None:
    from kidrr.gallery.npy_input import remove_empty_gallery
    remove_empty_gallery(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", default=None, help="bundle with an image backbone (default: the shipped real-photo model); "
                                             "with --globals: the bundle that encoded them (makes a new gallery)")
@click.option("--images", default=None,
              help="folder of photos (searched recursively; ids are relative paths); with --list: the root the "
                   "ids are relative to (default: the list's folder)")
@click.option("--list", "list_file", default=None, type=click.Path(dir_okay=False),
              help="index the photos this file names: paths one a line, or a .csv / .parquet file with a `path` "
                   "column and metadata columns (docs/indexing_at_scale.md)")
@click.option("--globals", "globals_path", default=None, type=click.Path(dir_okay=False),
              help="instead of --images: items already encoded, .npy (n, D) float (with --locals and --ids)")
@click.option("--locals", "locals_path", default=None, type=click.Path(dir_okay=False), help=".npy (n, R, D) float")
@click.option("--ids", "ids_path", default=None, type=click.Path(dir_okay=False), help="text file, one id per line")
@click.option("--out", required=True, help="gallery to write: a folder (format 2) or a .npz file (v1, photos only)")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--threads", type=int, default=0, help="onnxruntime threads (0: one per core)")
@click.option("--strict", is_flag=True, help="stop at the first bad file instead of skipping it")
@click.option("--append", is_flag=True, help="add to an existing format-2 gallery (photos: the files not yet in it, "
                                             "so an interrupted run resumes)")
@click.option("--metadata", "metadata", default=None, type=click.Path(dir_okay=False),
              help="sidecar of item metadata: CSV with a `file` column, or JSON Lines objects with a `file` key "
                   "(paths relative to --images, or the ids; docs/gallery.md)")
@click.option("--no-exif", is_flag=True, help="do not record capture time, camera, size and folder from the files")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: a Ray Data job over a local Ray or a cluster (docs/indexing_at_scale.md)")
@click.option("--address", default=None, help="ray: the cluster's HEAD:PORT (default: start a local Ray)")
@click.option("--workers", type=int, default=2, show_default=True, help="ray: encoder actors")
@click.option("--cpus-per-worker", type=int, default=1, show_default=True, help="ray: CPUs (ORT threads) per actor")
@click.option("--segment-photos", type=int, default=SEGMENT_IMAGES, show_default=True,
              help="ray: photos per segment (one actor call each)")
@click.option("--commit-every", type=click.IntRange(min=1), default=8, show_default=True,
              help="ray: adopt finished segments after this many ...")
@click.option("--commit-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="ray: ... or this many seconds (a killed driver loses at most this window)")
@click.option("--no-thumbnails", is_flag=True,
              help="do not store a 256-px JPEG per photo in the gallery (kidrr serve's page then shows ids)")
def main(bundle, images, list_file, globals_path, locals_path, ids_path, out, batch_size, threads, strict, append,
         metadata, no_exif, engine, address, workers, cpus_per_worker, segment_photos, commit_every, commit_seconds,
         no_thumbnails):
    """Put items into a gallery: a folder of photos (encoded here, or named by --list), or vectors encoded
    elsewhere (--globals/--locals/--ids). Exit code 0: all indexed; 1: some photos skipped; 2: error.
    `kidrr gallery add G ...` is the same command with --out G --append."""
    from .default_bundle import resolve_bundle
    vectors = (globals_path, locals_path, ids_path)
    try:
        photos = images is not None or list_file is not None
        if not photos and not any(vectors):
            raise InputError("give --images DIR or --list FILE (photos), or --globals, --locals and --ids "
                             "(encoded items)")
        if photos and any(vectors):
            raise InputError("give either --images/--list or --globals/--locals/--ids, not both")
        if not photos:
            if not all(vectors):
                raise InputError("encoded items need all three of --globals, --locals and --ids")
            n, live = _add_vectors(out, *vectors, metadata, append, bundle)
            click.echo(f"added {n} items to {out}; {live} live", err=True)
            sys.exit(0)
        if engine == "ray":
            record = _index_with_ray(resolve_bundle(bundle), images, out, address, workers, cpus_per_worker,
                                     segment_photos, batch_size, strict, append, metadata, not no_exif,
                                     commit_every, commit_seconds, thumbnails=not no_thumbnails,
                                     list_file=list_file)
        else:
            if address is not None:
                raise InputError("--address is for --engine ray")
            record = index_folder(resolve_bundle(bundle), images, out, batch_size, threads, strict, append,
                                  metadata=metadata, exif=not no_exif, thumbnails=not no_thumbnails,
                                  list_file=list_file)
    except (KidrrError, OSError) as exc:
        click.echo(f"error: {describe(exc)}", err=True)
        sys.exit(2)
    click.echo(f"indexed {record['indexed']} images into {out}"
               + (f" ({record['already_indexed']} were already there)" if record["already_indexed"] else ""),
               err=True)
    sys.exit(1 if record["skipped"] else 0)


def _add_vectors(out, globals_path, locals_path, ids_path, metadata, append, bundle):
    from kidrr.gallery.npy_input import add_npy_files
    bundle_id = None
    if bundle is not None:
        from kidrr.runtime.bundle import load_bundle
        bundle_id = load_bundle(bundle, verify=True).identity
    return add_npy_files(out, globals_path, locals_path, ids_path, metadata, append=append, bundle_id=bundle_id)


def gallery_add_command() -> click.Command:
    """`kidrr gallery add FOLDER [OPTIONS]`: exactly `kidrr index --out FOLDER --append [OPTIONS]` (same options,
    same output, same exit codes), for users who think in gallery operations."""
    params = [click.Argument(["folder"], type=click.Path())] + [
        p for p in main.params if p.name not in ("out", "append")]

    @click.pass_context
    def add(ctx, folder, **options):
        return ctx.invoke(main, out=folder, append=True, **options)
    return click.Command("add", params=params, callback=add, context_settings=main.context_settings,
                         help="Add items to the gallery FOLDER: photos (--images) or encoded vectors "
                              "(--globals/--locals/--ids). A shortcut of `kidrr index --out FOLDER --append`: "
                              "same options, same output.")


if __name__ == "__main__":
    main()
