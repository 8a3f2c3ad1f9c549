"""Encoded items kept for search: images (a Gallery) and captions (a CaptionIndex).

Both are immutable after construction (read-only arrays), so many threads may share them. A
gallery file is a plain .npz (no pickles: loaded with allow_pickle=False) tagged with the
identity of the bundle that encoded it; the runtime refuses to mix it with another bundle.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from kidrr.errors import BundleError, InputError
from kidrr.fileio import write_atomic

GALLERY_FORMAT = "kidrr-gallery/1"


def _freeze(*arrays):
    for a in arrays:
        a.flags.writeable = False


@dataclass(frozen=True)
class Gallery:
    """Image locals (n, R, D), globals (n, D), the bundle identity they came from, and optionally one
    id (the image's file name) per row; search answers with the ids when there are some."""
    locals: np.ndarray
    globals: np.ndarray
    bundle_id: str
    ids: tuple | None = None

    def __post_init__(self):
        if self.locals.ndim != 3 or self.globals.ndim != 2 or len(self.locals) != len(self.globals) \
                or self.locals.shape[2] != self.globals.shape[1]:
            raise InputError(f"gallery arrays disagree: locals {self.locals.shape}, globals {self.globals.shape}")
        if self.ids is not None:
            if len(self.ids) != len(self.globals) or not all(isinstance(i, str) for i in self.ids):
                raise InputError(f"gallery ids must be {len(self.globals)} strings (one per image), got "
                                 f"{len(self.ids)}")
            if len(set(self.ids)) != len(self.ids):
                raise InputError("gallery ids must be unique (they name the images search answers with)")
            object.__setattr__(self, "ids", tuple(self.ids))
        _freeze(self.locals, self.globals)

    def __len__(self) -> int:
        return len(self.globals)

    @property
    def nbytes(self) -> int:
        return self.locals.nbytes + self.globals.nbytes

    def save(self, path: str) -> None:
        buf = io.BytesIO()
        extra = {} if self.ids is None else {"ids": np.array(self.ids, dtype=str)}
        np.savez(buf, format=np.array(GALLERY_FORMAT), bundle_id=np.array(self.bundle_id),
                 locals=self.locals, globals=self.globals, **extra)
        write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: str, bundle_id: str | None = None) -> "Gallery":
        """Read a gallery file; with bundle_id, refuse one encoded by another bundle."""
        if not os.path.isfile(path):
            raise InputError(f"gallery file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                fmt = str(data["format"])
                tag = str(data["bundle_id"])
                locs, globs = data["locals"], data["globals"]
                ids = tuple(str(i) for i in data["ids"]) if "ids" in data.files else None
        except (ValueError, KeyError, OSError, EOFError) as exc:
            raise InputError(f"{path} is not a kidrr gallery file ({exc}); rebuild it with encode_images") from exc
        if fmt != GALLERY_FORMAT:
            raise InputError(f"{path}: gallery format {fmt!r} is not {GALLERY_FORMAT}; rebuild it")
        if bundle_id is not None and tag != bundle_id:
            raise BundleError(f"gallery {path} was encoded by another bundle ({tag[:12]}...), not this one "
                              f"({bundle_id[:12]}...); re-encode the images with this bundle")
        return cls(locs, globs, tag, ids)


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
