"""Encoded items kept for search: images (a Gallery) and captions (a CaptionIndex).

Both are immutable after construction (read-only arrays), so many threads may share them. A
gallery file is a plain .npz (no pickles: loaded with allow_pickle=False) tagged with the
identity of the bundle that encoded it; the runtime refuses to mix it with another bundle.
"""
from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from kidrr.errors import BundleError, DataError, InputError
from kidrr.fileio import write_atomic

from .search import shortlist_rows, top_k

GALLERY_FORMAT = "kidrr-gallery/1"
V1_MEMBERS = {"format", "bundle_id", "locals", "globals"}
V1_OPTIONAL = {"names"}   # the images' file names (encode_image_files); older files have none


@runtime_checkable
class GallerySource(Protocol):
    """What the Retriever needs from a gallery, in memory (Gallery) or on disk (kidrr.gallery.DiskGallery).

    Rows are the source's own item numbers; labels(rows) turns them into what search returns
    (positions for Gallery, id strings on disk).
    """
    bundle_id: str

    def __len__(self) -> int: ...
    def shortlist(self, query_globals: np.ndarray, size: int) -> list: ...          # per query: rows
    def nearest(self, query_globals: np.ndarray, size: int) -> list: ...            # per query: (rows, sims)
    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...        # float32 locals, globals
    def labels(self, rows: np.ndarray) -> list: ...
    def tiles(self, rows_per_tile: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]: ...


def _freeze(*arrays):
    for a in arrays:
        a.flags.writeable = False


@dataclass(frozen=True)
class Gallery:
    """Image locals (n, R, D), globals (n, D), the bundle identity they came from, and optionally one
    name per row (the image's file name, from encode_image_files): search then answers with the names."""
    locals: np.ndarray
    globals: np.ndarray
    bundle_id: str
    names: tuple | None = None

    def __post_init__(self):
        if self.locals.ndim != 3 or self.globals.ndim != 2 or len(self.locals) != len(self.globals) \
                or self.locals.shape[2] != self.globals.shape[1]:
            raise InputError(f"gallery arrays disagree: locals {self.locals.shape}, globals {self.globals.shape}")
        if self.names is not None:
            names = tuple(self.names)
            if len(names) != len(self.globals) or not all(isinstance(n, str) and n for n in names):
                raise InputError(f"gallery names must be {len(self.globals)} non-empty strings (one per image), "
                                 f"got {len(names)}")
            if len(set(names)) != len(names):
                raise InputError("gallery names must be unique (they are what search answers with)")
            object.__setattr__(self, "names", names)
        _freeze(self.locals, self.globals)

    def __len__(self) -> int:
        return len(self.globals)

    # GallerySource: rows are positions, and so are the labels.
    def shortlist(self, query_globals: np.ndarray, size: int) -> list:
        return list(shortlist_rows(query_globals, self.globals, size))

    def nearest(self, query_globals: np.ndarray, size: int) -> list:
        """Per query (rows, dot products) of the `size` best items, best first (ties: smaller row)."""
        sims = np.asarray(query_globals, dtype=np.float32) @ self.globals.T
        out = []
        for row in sims:
            best = top_k(row, int(min(size, len(self))))
            out.append((np.array([r for r, _ in best], dtype=np.int64), np.array([s for _, s in best], np.float32)))
        return out

    def find(self, ids) -> dict:
        """label -> row for the given labels (names when the gallery has them, else int positions)."""
        if self.names is not None:
            where = {n: i for i, n in enumerate(self.names)}
            return {i: where[i] for i in ids if isinstance(i, str) and i in where}
        return {i: int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(self)}

    def gather(self, rows):
        return self.locals[rows], self.globals[rows]

    def labels(self, rows) -> list:
        if self.names is not None:
            return [self.names[int(r)] for r in rows]
        return [int(r) for r in rows]

    def tiles(self, rows_per_tile: int):
        for i in range(0, len(self), rows_per_tile):
            rows = np.arange(i, min(len(self), i + rows_per_tile))
            yield rows, self.locals[i:i + rows_per_tile], self.globals[i:i + rows_per_tile]

    @property
    def nbytes(self) -> int:
        return self.locals.nbytes + self.globals.nbytes

    def save(self, path: str) -> None:
        buf = io.BytesIO()
        names = {} if self.names is None else {"names": np.array(self.names, dtype=str)}
        np.savez(buf, format=np.array(GALLERY_FORMAT), bundle_id=np.array(self.bundle_id),
                 locals=self.locals, globals=self.globals, **names)
        try:
            write_atomic(path, buf.getvalue())
        except OSError as exc:
            raise DataError(f"cannot write gallery {path} ({exc.strerror or exc}); choose a writable path "
                            f"(an existing folder, not a file, with free space)") from exc

    @classmethod
    def load(cls, path: str, bundle_id: str | None = None, dim: int | None = None) -> "Gallery":
        """Read a v1 gallery file; with bundle_id, refuse one encoded by another bundle; with dim, one of
        another embedding size. Every way the file can be damaged is a DataError naming it."""
        if os.path.isdir(path):
            hint = ("it is a format-2 gallery folder: open it with kidrr.gallery.open_gallery"
                    if os.path.isfile(os.path.join(path, "manifest.json")) else "give a .npz gallery file")
            raise InputError(f"gallery {path} is a folder, not a .npz file; {hint}")
        if not os.path.isfile(path):
            raise InputError(f"gallery file {path} does not exist")
        arrays = _read_v1(path)
        fmt, tag = arrays["format"], arrays["bundle_id"]
        if fmt.dtype.kind != "U" or fmt.shape != () or str(fmt) != GALLERY_FORMAT:
            raise DataError(f"{path}: gallery format {str(fmt)[:40]!r} is not {GALLERY_FORMAT}; rebuild it")
        if tag.dtype.kind != "U" or tag.shape != ():
            raise DataError(f"{path}: bundle_id is not a string; the gallery file is damaged, rebuild it")
        tag = str(tag)
        if bundle_id is not None and tag != bundle_id:
            raise BundleError(f"gallery {path} was encoded by another bundle ({tag[:12]}...), not this one "
                              f"({bundle_id[:12]}...); re-encode the images with this bundle")
        locs, globs = arrays["locals"], arrays["globals"]
        for name, arr, nd in (("locals", locs, 3), ("globals", globs, 2)):
            if arr.ndim != nd or not np.issubdtype(arr.dtype, np.floating):
                raise DataError(f"{path}: {name} must be a {nd}-D float array, got {arr.dtype} {arr.shape}; "
                                f"the gallery file is damaged, rebuild it")
        if len(locs) != len(globs) or locs.shape[2] != globs.shape[1]:
            raise DataError(f"{path}: locals {locs.shape} and globals {globs.shape} disagree; rebuild the gallery")
        if dim is not None and globs.shape[1] != dim:
            raise DataError(f"{path} holds {globs.shape[1]}-d vectors but the model's embedding is {dim}-d; "
                            f"it was not encoded by this model")
        locs, globs = locs.astype(np.float32, copy=False), globs.astype(np.float32, copy=False)
        bad = ~(np.isfinite(locs).all(axis=(1, 2)) & np.isfinite(globs).all(axis=1))
        if bad.any():
            raise DataError(f"{path}: items {np.flatnonzero(bad)[:5].tolist()} hold NaN or inf; rebuild the gallery")
        names = arrays.get("names")
        if names is not None:
            if names.dtype.kind != "U" or names.shape != (len(globs),):
                raise DataError(f"{path}: names must be {len(globs)} strings, got {names.dtype} {names.shape}; "
                                f"rebuild the gallery")
            names = tuple(str(n) for n in names)
        return cls(locs, globs, tag, names)


def _read_v1(path: str) -> dict:
    """The four arrays of a v1 .npz, with each member's declared size checked against the zip before
    anything is allocated, and every zip/npy error turned into a DataError."""
    def damaged(why):
        return DataError(f"{path} is not a kidrr gallery file, or a damaged one ({why}); rebuild it with "
                         f"encode_images")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            if not V1_MEMBERS <= set(infos) <= V1_MEMBERS | V1_OPTIONAL:
                raise damaged(f"members {sorted(infos)}, expected {sorted(V1_MEMBERS)} (and optionally "
                              f"{sorted(V1_OPTIONAL)})")
            out = {}
            for name, info in infos.items():
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in readers:
                        raise damaged(f"{name}: npy version {version}")
                    shape, fortran, dtype = readers[version](fh, max_header_size=10000)
                    if dtype.hasobject:
                        raise damaged(f"{name}: object arrays are never part of a gallery")
                    count = int(np.prod(shape, dtype=object))
                    if count * dtype.itemsize > info.file_size:
                        raise damaged(f"{name}: header declares {shape} {dtype}, more than the "
                                      f"{info.file_size}-byte member holds (truncated or crafted)")
                with zf.open(info) as fh:
                    out[name] = np.lib.format.read_array(fh, allow_pickle=False)
            return out
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, struct.error, ValueError, KeyError, OSError, EOFError, TypeError,
            IndexError, UnicodeDecodeError, NotImplementedError, SyntaxError, OverflowError, MemoryError) as exc:
        raise damaged(f"{type(exc).__name__}: {str(exc)[:200]}") from exc


@dataclass(frozen=True)
class CaptionIndex:
    """Encoded captions sorted by length (so tiles trim padding), with their original order.

    Word vectors are stored back to back, without padding: padded rows would make every caption
    as long as the longest one (m x max_len x D; 5x the memory on COCO-like length spreads).
    Tiles are padded on the fly to their own longest caption.
    """
    words: np.ndarray        # (sum of lengths, D): row k's words are words[starts[k]:starts[k + 1]]
    starts: np.ndarray       # (m + 1,) int64 offsets into words
    globals: np.ndarray      # (m, D) in length order
    lengths: np.ndarray      # (m,) int64 ascending
    order: np.ndarray        # order[k] = original index of row k
    bundle_id: str

    def __post_init__(self):
        _freeze(self.words, self.starts, self.globals, self.lengths, self.order)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.words, self.starts, self.globals, self.lengths, self.order))

    @classmethod
    def from_sorted(cls, words, globals_, lengths, order, bundle_id: str) -> "CaptionIndex":
        """From rows already in length order: words (sum of lengths, D) back to back."""
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(np.ascontiguousarray(words, dtype=np.float32), starts, np.ascontiguousarray(globals_),
                   lengths, np.asarray(order, dtype=np.int64), bundle_id)

    @classmethod
    def from_encoded(cls, locals_, globals_, lengths, bundle_id: str) -> "CaptionIndex":
        """From padded (m, L, D) locals in any order."""
        order = np.argsort(lengths, kind="stable")
        lengths = np.asarray(lengths, dtype=np.int64)[order]
        sorted_locals = locals_[order]
        words = sorted_locals[np.arange(sorted_locals.shape[1])[None, :] < lengths[:, None]]
        return cls.from_sorted(words, np.asarray(globals_)[order], lengths, order, bundle_id)

    def padded_locals(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, L, D) word vectors of rows start..stop, zero-padded to the longest of them."""
        stop = len(self) if stop is None else stop
        lens = self.lengths[start:stop]
        out = np.zeros((len(lens), int(lens.max()), self.words.shape[1]), dtype=np.float32)
        out[np.arange(out.shape[1])[None, :] < lens[:, None]] = self.words[self.starts[start]:self.starts[stop]]
        return out

    def take(self, rows: np.ndarray) -> "CaptionIndex":
        """A sub-index of the given (sorted-order) rows, still sorted by length."""
        rows = np.sort(np.asarray(rows))
        words = np.concatenate([self.words[self.starts[r]:self.starts[r + 1]] for r in rows])
        return CaptionIndex.from_sorted(words, self.globals[rows], self.lengths[rows], self.order[rows],
                                        self.bundle_id)
