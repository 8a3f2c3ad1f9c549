"""Encoded items from files into a gallery: globals and locals as .npy arrays, ids as a text file.

What `kidrr index --globals G --locals L --ids IDS` (and its shortcut `kidrr gallery add`) runs: the
arrays are memory-mapped, not loaded, and written through GalleryWriter in slices of 8,192 rows,
so a file larger than the RAM can be added.
"""
from __future__ import annotations

import os

import numpy as np

from kidrr.errors import InputError
from kidrr.fileio import read_text_lines

from .layout import MANIFEST
from .sidecar import check_names, metadata_for, read_sidecar
from .writer import GalleryWriter, create_gallery

SLICE_ROWS = 8192


def load_npy(path: str, what: str):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{what} {path} is not a readable .npy array ({exc})") from exc


def read_ids(path: str, what: str) -> list:
    """One id per line, UTF-8; blank lines are an error (they would be an empty id)."""
    return read_text_lines(path, what, max_bytes=1 << 30)


def add_npy_files(folder: str, globals_path: str, locals_path: str, ids_path: str, metadata_path: str | None = None,
                  append: bool = True, bundle_id: str | None = None, progress: bool = True) -> tuple[int, int]:
    """(items added, live items after). append=False makes a new gallery (which needs bundle_id, and
    refuses a folder that exists); append=True adds one segment to an existing one, or makes it when
    it does not exist yet and bundle_id is given."""
    g, l = load_npy(globals_path, "--globals"), load_npy(locals_path, "--locals")
    ids = read_ids(ids_path, "--ids file")
    metas = None
    if metadata_path:
        sidecar = read_sidecar(metadata_path)
        check_names(sidecar, set(ids), metadata_path, "in the --ids file")
        metas = metadata_for(ids, sidecar)
    exists = os.path.isfile(os.path.join(folder, MANIFEST))
    if not exists or not append:
        if bundle_id is None:
            raise InputError(f"{folder} is not a gallery yet; make it with `kidrr gallery create {folder} --bundle B "
                             f"--regions R`, or give --bundle to make it here")
        if l.ndim != 3 or g.ndim != 2:
            raise InputError(f"--locals must be (n, R, D) and --globals (n, D); got {l.shape} and {g.shape}")
        create_gallery(folder, bundle_id, regions=int(l.shape[1]), dim=int(g.shape[1]))
    n = len(g)
    try:
        with GalleryWriter(folder, progress=progress) as w:
            if len(ids) == n:
                live = w.add_batches(((g[i:i + SLICE_ROWS], l[i:i + SLICE_ROWS], ids[i:i + SLICE_ROWS],
                                       None if metas is None else metas[i:i + SLICE_ROWS])
                                      for i in range(0, n, SLICE_ROWS)), rows=n)
            else:
                live = w.add(g, l, ids, metas)      # the writer says which counts disagree
    except BaseException:
        if not exists:
            remove_empty_gallery(folder)     # a rerun then starts afresh at the same path
        raise
    return n, live


def remove_empty_gallery(folder: str) -> None:
    """Undo create_gallery when nothing could be added (only the files it made, never anything else)."""
    from kidrr.errors import KidrrError
    from .layout import LOCK
    from .reader import open_gallery
    try:
        if len(open_gallery(folder)) == 0:
            for name in os.listdir(folder):
                if name in (MANIFEST, LOCK):
                    os.unlink(os.path.join(folder, name))
            if not os.listdir(folder):
                os.rmdir(folder)
    except (KidrrError, OSError):
        pass   # leave an empty gallery rather than risk deleting what is not ours
