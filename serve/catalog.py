"""What the service answers from, loaded and verified before it listens.

A catalog is the bundle path, the gallery (a kidrr gallery file), the ids of its rows (from an ids
file, one per line, or the row numbers) and optionally the captions that image queries search.
Everything is checked here: a bad bundle, gallery, ids or captions file stops the command with a
clear message before any port is opened.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from kidrr.errors import DataError, InputError

MAX_ID_CHARS = 256
MAX_LIST_BYTES = 256 << 20   # an ids or captions file larger than this is not one we made


@dataclass
class Catalog:
    bundle: str
    gallery_path: str
    ids: list                # one per gallery row: str from an ids file, else the row number (int)
    captions: list | None    # texts image queries search, or None


def read_lines(path: str, what: str) -> list:
    if not os.path.isfile(path):
        raise DataError(f"{what} file {path} does not exist")
    size = os.path.getsize(path)
    if size > MAX_LIST_BYTES:
        raise DataError(f"{what} file {path} is {size} bytes, more than the {MAX_LIST_BYTES} allowed")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.rstrip("\r\n") for line in fh]
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} file {path} is not UTF-8 text ({exc})") from exc
    while lines and not lines[-1].strip():
        lines.pop()
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


def open_catalog(retriever, gallery_path: str, ids_path: str | None = None,
                 captions_path: str | None = None):
    """(Catalog, Gallery): the gallery verified against the retriever's bundle, ids, captions."""
    try:
        gallery = retriever.load_gallery(gallery_path)    # BundleError if another bundle made it
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        # Gallery.load lets a damaged zip container through as BadZipFile: say what it is here.
        if isinstance(exc, InputError):
            raise
        raise DataError(f"{gallery_path} is not a kidrr gallery file ({type(exc).__name__}: {exc}); "
                        f"rebuild it with encode_images(...).save()") from exc
    if len(gallery) == 0:
        raise InputError(f"gallery {gallery_path} is empty; encode at least one image")
    if not (np.isfinite(gallery.globals).all() and np.isfinite(gallery.locals).all()):
        raise DataError(f"gallery {gallery_path} holds NaN or inf values; rebuild it")
    captions = read_lines(captions_path, "captions") if captions_path else None
    return Catalog(retriever.bundle.path, gallery_path, read_ids(ids_path, len(gallery)), captions), gallery
