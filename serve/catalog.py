"""What the service answers from, loaded and verified before it listens.

A catalog is the bundle path, the shards (rows of one v1 .npz gallery, or one format-2 gallery
folder each), the ids of a v1 gallery's rows (an ids file, one per line, or the row numbers;
format-2 galleries carry their own) and optionally the captions that image queries search.
Everything is checked here: a bad bundle, gallery, ids or captions file stops the command with a
clear message before any port is opened.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from kidrr.errors import DataError, InputError
from kidrr.fileio import read_text_lines

MAX_ID_CHARS = 256
MAX_LIST_BYTES = 256 << 20   # an ids or captions file larger than this is not one we made


@dataclass
class Catalog:
    bundle: str
    shards: list             # [ShardSpec]: where each shard's items live
    size: int                # items over all shards
    ids: list | None         # v1 galleries: one id per row (ids file, or the row numbers); format 2: None (own ids)
    captions: list | None    # texts image queries search, or None


def read_lines(path: str, what: str) -> list:
    lines = read_text_lines(path, f"{what} file", MAX_LIST_BYTES)
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise DataError(f"{what} file {path} has empty lines (first: line {empty[0]}); one item per line")
    return lines


def read_ids(path: str | None, size: int) -> list:
    """Row ids from a file (one per line, unique), or the row numbers."""
    if path is None:
        return list(range(size))
    ids = read_lines(path, "ids")
    if len(ids) != size:
        raise DataError(f"ids file {path} has {len(ids)} lines but the gallery holds {size} items; "
                        f"give one id per gallery row, in row order")
    long = [i + 1 for i, x in enumerate(ids) if len(x) > MAX_ID_CHARS]
    if long:
        raise DataError(f"ids file {path}: line {long[0]} is longer than {MAX_ID_CHARS} characters")
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for x in ids:
            if x in seen:
                dup = x
                break
            seen.add(x)
        raise DataError(f"ids file {path} repeats the id {dup!r}; ids must be unique")
    return ids


def open_catalog(retriever, galleries: list, shards: int = 1, ids_path: str | None = None,
                 captions_path: str | None = None):
    """(Catalog, [GallerySource] per shard), everything verified against the retriever's bundle.

    One v1 .npz file: cut into `shards` row ranges (ids from ids_path or the row numbers).
    Format-2 folders: one shard each (their ids are their own; they must not repeat across shards).
    """
    from .shards import ShardSpec, is_v1_file, split_rows
    galleries = [os.path.abspath(g) for g in galleries]
    if not galleries:
        raise InputError("give a gallery: one .npz file, or format-2 gallery folders (one per shard)")
    captions = read_lines(captions_path, "captions") if captions_path else None
    if captions:   # every caption must pass the bundle's tokenizer now, not in a replica after deploying
        from kidrr.runtime.captions import tokenize_captions
        try:
            tokenize_captions(retriever.bundle.vocab, captions, retriever.bundle.max_caption_len)
        except InputError as exc:
            raise DataError(f"captions file {captions_path}: {exc} (line numbers count from 0)") from exc
    if len(galleries) == 1 and is_v1_file(galleries[0]):
        whole = _load_v1(retriever, galleries[0])
        specs = [ShardSpec(galleries[0], a, b) for a, b in split_rows(len(whole), shards)]
        sources = [spec.open(retriever, whole) for spec in specs]
        return Catalog(retriever.bundle.path, specs, len(whole), read_ids(ids_path, len(whole)), captions), sources
    if any(is_v1_file(g) for g in galleries):
        raise InputError("several galleries must all be format-2 folders (one per shard); a .npz file is served alone")
    if shards not in (1, len(galleries)):
        raise InputError(f"--shards {shards} does not match the {len(galleries)} gallery folders given; with "
                         f"format-2 galleries every folder is one shard (split a gallery into folders to shard it)")
    if ids_path:
        raise InputError("--ids is for .npz galleries; format-2 galleries carry their own ids")
    specs = [ShardSpec(g) for g in galleries]
    sources = [spec.open(retriever) for spec in specs]
    empty = [g for g, src in zip(galleries, sources) if len(src) == 0]
    if empty:
        raise InputError(f"gallery {empty[0]} has no live items; add items or leave it out")
    if len(sources) > 1:
        seen: dict = {}
        for shard, src in enumerate(sources):
            for item in src.iter_ids():
                if seen.setdefault(item[1], shard) != shard:
                    raise DataError(f"id {item[1]!r} is in shard {seen[item[1]]} and shard {shard}; ids must be "
                                    f"unique across the shards")
    return Catalog(retriever.bundle.path, specs, sum(len(s) for s in sources), None, captions), sources


def _load_v1(retriever, path: str):
    gallery = retriever.load_gallery(path)   # DataError if damaged, BundleError if another bundle made it
    if len(gallery) == 0:
        raise InputError(f"gallery {path} is empty; encode at least one image")
    return gallery
