"""`kidrr features`: a folder of photos + a caption file -> the published precomputed layout.

Writes, in --out: `{split}_ims.npy` (N, R, F) float16, `{split}_caps.txt` (5 per image, image order),
`{split}_ids.txt` (the image file names) and `{split}_features.json` (which backbone and
preprocessing made them, and what was skipped and why). Resumable: rows go into a memory-mapped
`.{split}_ims.partial.npy` and `.{split}_progress.json` records, after each flushed batch, how far
it got; the final files appear only at the end (the captions file last), so nothing half-written
looks complete. `kidrr train --data OUT` trains on the folder unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

import click
import numpy as np
from tqdm import tqdm

from kidrr.config import dump_json
from kidrr.data import CAPTIONS_PER_IMAGE
from kidrr.errors import DataError, ImageError, KidrrError, describe
from kidrr.fileio import open_regular, sha256_file, write_atomic

from .batch import SkipReport, decode_batch, unique_names
from .caption_files import read_caption_file, safe_relative
from .decode import MAX_PIXELS
from .preprocess import Preprocessor, preprocessing_graph
from .spec import BACKBONES, DEFAULT_BACKBONE, backbone_spec

COPY_ROWS = 1024   # rows per chunk when compacting the partial array (bounded memory)


def _paths(out: str, split: str) -> dict:
    return {"ims": os.path.join(out, f"{split}_ims.npy"), "caps": os.path.join(out, f"{split}_caps.txt"),
            "ids": os.path.join(out, f"{split}_ids.txt"), "record": os.path.join(out, f"{split}_features.json"),
            "skipped": os.path.join(out, f"{split}_skipped.tsv"),
            "partial": os.path.join(out, f".{split}_ims.partial.npy"),
            "progress": os.path.join(out, f".{split}_progress.json")}


def plan_images(images_dir: str, entries: list, report: SkipReport) -> list:
    """[(name, path, five captions)] of the usable caption entries; the others go to the report."""
    if not os.path.isdir(images_dir):
        raise DataError(f"image folder {images_dir} does not exist or is not a folder")
    names = [name for name, _ in entries]
    plan = []
    for i in unique_names(names, report):
        name, captions = entries[i]
        captions = [c.strip() for c in captions if c.strip()]
        path = os.path.join(images_dir, name)
        if not safe_relative(name):
            report.add(name, "outside-folder", "the caption file names a path outside the image folder")
        elif not os.path.isfile(path):
            report.add(name, "missing", f"the caption file names it but {path} does not exist")
        elif len(captions) < CAPTIONS_PER_IMAGE:
            report.add(name, "captions", f"{len(captions)} non-empty caption(s); the layout needs "
                                         f"{CAPTIONS_PER_IMAGE} per image")
        else:
            plan.append((name, path, captions[:CAPTIONS_PER_IMAGE]))
    return plan


def _plan_digest(plan: list, record: dict) -> str:
    """Identity of a job: names, captions, file sizes and times, and the backbone record."""
    h = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    for name, path, captions in plan:
        st = os.stat(path)
        h.update(json.dumps([name, captions, st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def _load_progress(paths: dict, digest: str, restart: bool):
    if not os.path.exists(paths["progress"]):
        return None
    if restart:
        return None
    try:
        with open_regular(paths["progress"], follow_symlinks=True) as fh:
            progress = json.loads(fh.read(1 << 26).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{paths['progress']} is unreadable ({exc}); pass --restart to start over") from exc
    if progress.get("digest") != digest:
        raise DataError(f"{paths['progress']} belongs to another job (other images, captions or backbone); "
                        f"pass --restart to start this one over")
    if not os.path.exists(paths["partial"]):
        raise DataError(f"{paths['partial']} is missing but {paths['progress']} says rows were written; "
                        f"pass --restart")
    return progress


def extract_features(images_dir: str, captions: str, out: str, split: str = "train",
                     backbone: str = DEFAULT_BACKBONE, ids: str | None = None, batch_size: int = 32,
                     threads: int = 0, strict: bool = False, restart: bool = False, force: bool = False,
                     max_pixels: int = MAX_PIXELS, progress: bool = True, stop_after: int | None = None,
                     engine: str = "ort", address: str | None = None, workers: int = 2, cpus_per_worker: int = 1,
                     block_photos: int = 1024) -> dict:
    """Run the job; returns the record written to {split}_features.json.

    engine "ray" runs the `ort` backbone in a pool of `workers` Ray actors of `cpus_per_worker` CPUs
    (kidrr.images.ray_features), on a local Ray or the cluster at `address`; the driver writes the output.
    stop_after (tests: an interrupt) stops after that many batches, leaving a resumable job.
    """
    from kidrr.backbone import features_record

    if engine not in ENGINES:
        raise DataError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray" and strict:
        raise DataError("--strict is for the local engines (a distributed job lists bad files and goes on)")
    if engine != "ray" and address is not None:
        raise DataError("--address is for --engine ray")
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if not isinstance(split, str) or not re.fullmatch(SPLIT_NAME, split):
        raise DataError(f"split name {split!r} must be letters, digits, '_', '-' or '.' (not starting with '.'); "
                        f"it names files inside --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file; give a folder (new, or one holding earlier kidrr features output)")
    spec = backbone_spec(backbone)
    paths = _paths(out, split)
    existing = _finished_files(paths)
    if existing and not force:
        raise DataError(f"{out} already holds {split} features ({', '.join(map(os.path.basename, existing))}); "
                        f"choose another --out or --split, or pass --force to replace them")
    check_replaceable_features(out, split)
    report = SkipReport()
    plan = plan_images(images_dir, read_caption_file(captions, ids), report)
    if strict and len(report):
        name, reason, message = report.skipped[0]
        raise ImageError(f"{name}: [{reason}] {message}", reason=reason, path=name)
    if not plan:
        report.print_summary(len(report), 0)
        raise DataError(f"no usable image in {images_dir} for {captions}; see the skipped files above")
    record = features_record(backbone)
    digest = _plan_digest(plan, record)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot make --out {out} ({exc.strerror or exc}); choose a writable folder") from exc
    state = _load_progress(paths, digest, restart)
    shape = (len(plan), spec.regions, spec.feature_size)
    if state is None:
        rows = np.lib.format.open_memmap(paths["partial"], mode="w+", dtype=np.float16, shape=shape)
        state = {"digest": digest, "done": 0, "rows": 0, "kept": [], "skipped": []}
    else:
        rows = np.lib.format.open_memmap(paths["partial"], mode="r+")
        if rows.shape != shape or rows.dtype != np.float16:
            raise DataError(f"{paths['partial']} has shape {rows.shape} {rows.dtype}, the job needs {shape} float16; "
                            f"pass --restart")
        print(f"resuming: {state['done']} of {len(plan)} images done, {state['rows']} rows kept", file=sys.stderr)
    resumed_skips = SkipReport([tuple(s) for s in state["skipped"]])
    per_node: dict = {}
    if engine == "ray":
        from .ray_features import ray_feature_blocks
        blocks = ray_feature_blocks(plan[state["done"]:], backbone, batch_size=batch_size, max_pixels=max_pixels,
                                    address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                                    block_photos=block_photos, progress=progress, per_node=per_node)
    else:
        blocks = _local_blocks(plan[state["done"]:], backbone_runner(backbone, engine, threads),
                               Preprocessor(preprocessing_graph(backbone), threads=threads), batch_size, strict,
                               max_pixels)
    start_time, start_done = time.perf_counter(), state["done"]
    bar = tqdm(total=len(plan), initial=state["done"], desc=f"kidrr features {split}", unit="img",
               disable=not progress)
    batches = 0
    try:
        for count, kept, feats, skipped in blocks:
            if feats is not None:
                r = state["rows"]
                rows[r:r + len(kept)] = feats.astype(np.float16)
                rows.flush()   # rows on disk before the progress record says so
                state["rows"] = r + len(kept)
                state["kept"].extend(kept)
            for item in skipped:
                resumed_skips.add(*item)
            state["done"] += count
            state["skipped"] = [list(s) for s in resumed_skips.skipped]
            write_atomic(paths["progress"], json.dumps(state).encode())
            bar.update(count)   # tqdm shows the rate in images/s
            batches += 1
            if stop_after is not None and batches >= stop_after and state["done"] < len(plan):
                bar.close()
                return {"interrupted": True, **state}
    finally:
        bar.close()
        blocks.close()     # a Ray job stops (and a Ray it started shuts down) with the loop
    del rows
    elapsed = time.perf_counter() - start_time
    report.skipped.extend(resumed_skips.skipped)
    if state["rows"] == 0:
        report.print_summary(len(plan) + len(report) - len(resumed_skips), 0)
        os.unlink(paths["partial"])
        os.unlink(paths["progress"])
        raise DataError(f"none of the images in {images_dir} could be used; see the skipped files above")
    check_replaceable_features(out, split)   # again right before the move: nothing appeared meanwhile
    _finish(paths, state, plan)
    total = len(plan) + len(report) - len(resumed_skips)
    captions_of = {name: caps for name, _, caps in plan}
    ids_text = "".join(f"{n}\n" for n in state["kept"]).encode()
    caps_text = "".join(f"{c}\n" for n in state["kept"] for c in captions_of[n]).encode()
    # What this run wrote, so a later --force can tell these files from anyone else's.
    files = {os.path.basename(paths["ims"]): {"bytes": os.path.getsize(paths["ims"])},
             os.path.basename(paths["ids"]): {"bytes": len(ids_text), "sha256": hashlib.sha256(ids_text).hexdigest()},
             os.path.basename(paths["caps"]): {"bytes": len(caps_text), "sha256": hashlib.sha256(caps_text).hexdigest()}}
    record.update(split=split, engine=engine, images=state["rows"], source_images=total, skipped=report.to_json(),
                  images_per_s=round((state["done"] - start_done) / max(elapsed, 1e-9), 2), files=files)
    if engine == "ray":
        record.update(workers=workers, cpus_per_worker=cpus_per_worker, photos_per_node=per_node)
    write_atomic(paths["record"], dump_json(record).encode())
    if len(report):
        write_atomic(paths["skipped"], report.tsv().encode())
    elif os.path.exists(paths["skipped"]) and force:
        os.unlink(paths["skipped"])   # a stale report of the run being replaced
    write_atomic(paths["ids"], ids_text)
    write_atomic(paths["caps"], caps_text)
    os.unlink(paths["progress"])
    report.print_summary(total, state["rows"])
    return record


def _local_blocks(plan: list, extract, pre, batch_size: int, strict: bool, max_pixels: int):
    """The local engines: yields (photos done, names kept, features or None, skipped) per batch of `plan`."""
    for start in range(0, len(plan), batch_size):
        chunk = plan[start:start + batch_size]
        report = SkipReport()
        batch, kept = decode_batch([p for _, p, _ in chunk], [n for n, _, _ in chunk], pre, report,
                                   strict=strict, max_pixels=max_pixels)
        yield len(chunk), kept, (extract(batch) if batch is not None else None), report.skipped


ENGINES = ("ort", "torch", "ray")
SPLIT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
FINISHED = ("ims", "caps", "ids")


def _finished_files(paths: dict) -> list:
    return [p for k, p in paths.items() if k in FINISHED and os.path.lexists(p)]


def check_replaceable_features(out: str, split: str) -> None:
    """DataError unless every finished file of this split in out is one kidrr features wrote: a regular
    file that the split's record lists with this size (and sha256 for the text files). Records of
    older kidrr list no files: then {split}_ims.npy must have the row count and shape they record."""
    paths = _paths(out, split)
    existing = _finished_files(paths)
    if not existing:
        return

    def refuse(why):
        return DataError(f"{out}: {why}; --force replaces only what kidrr features wrote, so nothing was replaced. "
                         f"Move those files away, or choose another --out or --split")
    try:
        record = read_features_record(out, split)
    except DataError as exc:
        raise refuse(f"{split}_features.json is not a kidrr features record ({exc})") from None
    if record is None:
        raise refuse(f"{', '.join(map(os.path.basename, existing))} have no {split}_features.json record")
    files = record.get("files")
    for path in existing:
        name = os.path.basename(path)
        if os.path.islink(path) or not os.path.isfile(path):
            raise refuse(f"{name} is not a regular file")
        if isinstance(files, dict):
            entry = files.get(name)
            if not isinstance(entry, dict) or entry.get("bytes") != os.path.getsize(path) \
                    or ("sha256" in entry and sha256_file(path) != entry["sha256"]):
                raise refuse(f"{name} is not the file its record says kidrr features wrote")
        elif path == paths["ims"]:
            try:
                ims = np.load(path, mmap_mode="r", allow_pickle=False)
                same = (ims.dtype == np.float16 and ims.ndim == 3 and ims.shape[0] == record.get("images")
                        and ims.shape[1:] == (record.get("regions"), record.get("feature_size")))
            except (ValueError, OSError, EOFError):
                same = False
            if not same:
                raise refuse(f"{name} does not have the shape its record gives")


def backbone_runner(backbone: str, engine: str, threads: int):
    """(n, 3, S, S) float32 -> (n, R, F) float32. 'ort' (default) runs the very backbone.onnx a bundle
    ships, so training features equal runtime features; 'torch' runs the package network."""
    if engine == "torch":
        import torch
        from kidrr.backbone import load_backbone
        if threads:
            torch.set_num_threads(threads)
        net = load_backbone(backbone)

        def run(batch):
            with torch.inference_mode():
                return net(torch.from_numpy(batch)).numpy()
        return run
    import onnxruntime as ort
    from kidrr.backbone import ONNX_INPUT, cached_backbone_onnx
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(cached_backbone_onnx(backbone), opts, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {ONNX_INPUT: batch})[0]


def _finish(paths: dict, state: dict, plan: list) -> None:
    """Move the partial array into place, compacted to the rows kept (skipped files leave no row)."""
    kept = state["rows"]
    if kept == len(plan):
        os.replace(paths["partial"], paths["ims"])
        return
    src = np.load(paths["partial"], mmap_mode="r")
    tmp = paths["ims"] + ".tmp"
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(kept,) + src.shape[1:])
    for i in range(0, kept, COPY_ROWS):
        dst[i:i + COPY_ROWS] = src[i:min(i + COPY_ROWS, kept)]
    dst.flush()
    del dst, src
    os.replace(tmp, paths["ims"])
    os.unlink(paths["partial"])


def read_features_record(folder: str, split: str) -> dict | None:
    """The {split}_features.json of a data folder, or None when the features came from elsewhere."""
    path = os.path.join(folder, f"{split}_features.json")
    if not os.path.exists(path):
        return None
    try:
        with open_regular(path, what=f"data folder {folder}", follow_symlinks=True) as fh:
            record = json.loads(fh.read(1 << 26).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rerun kidrr features") from exc
    if not isinstance(record, dict) or record.get("backbone") not in BACKBONES:
        raise DataError(f"{path} does not name a known backbone ({sorted(BACKBONES)}); rerun kidrr features")
    return record


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--images", "images_dir", required=True, help="folder of image files")
@click.option("--captions", required=True, help="{split}_caps.txt (with {split}_ids.txt) or a 'file<TAB>caption' TSV")
@click.option("--ids", default=None, help="image file names for a {split}_caps.txt (default: {split}_ids.txt beside it)")
@click.option("--out", required=True, help="data folder to write (the published precomputed layout)")
@click.option("--split", default="train", show_default=True, help="split name: train, dev, test...")
@click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default=DEFAULT_BACKBONE, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch / onnxruntime threads (0: their default)")
@click.option("--strict", is_flag=True, help="stop at the first bad file instead of skipping it")
@click.option("--restart", is_flag=True, help="discard an interrupted run of this split and start over")
@click.option("--force", is_flag=True, help="replace this split's finished features in --out")
@click.option("--max-pixels", type=int, default=MAX_PIXELS, show_default=True, help="refuse larger images")
@click.option("--engine", type=click.Choice(ENGINES), default="ort", show_default=True,
              help="ort: the bundle's backbone graph (traced once, cached); torch: the package network; "
                   "ray: the ort graph in a pool of Ray actors (docs/indexing_at_scale.md)")
@click.option("--address", default=None, help="ray: the cluster's HEAD:PORT (default: start a local Ray)")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="ray: backbone actors")
@click.option("--cpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
              help="ray: CPUs (ONNX Runtime threads) per actor")
def main(images_dir, captions, ids, out, split, backbone, batch_size, threads, strict, restart, force, max_pixels,
         engine, address, workers, cpus_per_worker):
    """Extract region features for a folder of photos. Exit code 0: all used; 1: some skipped; 2: error."""
    try:
        record = extract_features(images_dir, captions, out, split, backbone, ids, batch_size, threads, strict,
                                  restart, force, max_pixels, engine=engine, address=address, workers=workers,
                                  cpus_per_worker=cpus_per_worker)
    except ImageError as exc:
        click.echo(f"error (--strict): {exc}", err=True)
        sys.exit(2)
    except (KidrrError, OSError) as exc:
        click.echo(f"error: {describe(exc)}", err=True)
        sys.exit(2)
    click.echo(f"wrote {record['images']} images x {record['regions']} regions x {record['feature_size']} "
               f"({record['backbone']}) to {out} at {record['images_per_s']} images/s", err=True)
    sys.exit(1 if record["skipped"] else 0)


if __name__ == "__main__":
    main()
