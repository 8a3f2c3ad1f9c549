"""Thumbnails inside a segment: one small JPEG per item, stored back to back with int64 offsets.

    thumbnails.jpgs          raw bytes: every item's JPEG, back to back (an item without one: nothing)
    thumbnail_offsets.npy    int64 (rows + 1,): item i = thumbnails.jpgs[offsets[i]:offsets[i + 1]]

Both files are part of the segment (named by the manifest's segment entry under "thumbnails" with
their sizes and sha256, written in the staging folder before the manifest switch, checked by
verify), so add / remove / compact and the crash-safety protocol carry them like ids. A segment
whose items have none has no "thumbnails" entry. Readers hand out bytes only after checking the
offsets, the size bound and the JPEG start marker: the service never serves anything else.
"""
from __future__ import annotations

import os

import numpy as np

from kidrr.errors import DataError, InputError

BLOB = "thumbnails.jpgs"
OFFSETS = "thumbnail_offsets.npy"
FILES = (BLOB, OFFSETS)
MAX_BYTES = 256 << 10          # a 256-px JPEG is ~10-30 KB; anything near this is not one we made
JPEG_START = b"\xff\xd8\xff"   # SOI followed by a marker


def check_thumbnails(thumbnails, n: int, ids: list) -> list:
    """n thumbnails (JPEG bytes or None), checked before anything is written."""
    if thumbnails is None:
        return [None] * n
    if isinstance(thumbnails, (str, bytes, dict)) or not hasattr(thumbnails, "__len__") or len(thumbnails) != n:
        raise InputError(f"thumbnails must be a list of {n} JPEG byte strings (or None), one per item")
    out = []
    for data, item in zip(thumbnails, ids):
        if data is None or (isinstance(data, (bytes, bytearray, memoryview)) and len(data) == 0):
            out.append(None)
            continue
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"thumbnail of {item[:200]!r} must be bytes (a JPEG file), got {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_BYTES or not data.startswith(JPEG_START):
            raise InputError(f"thumbnail of {item[:200]!r} must be a JPEG file of at most {MAX_BYTES} bytes "
                             f"(got {len(data)} bytes starting {data[:4]!r})")
        out.append(data)
    return out


class ThumbnailWriter:
    """Streams one segment's thumbnails into its staging folder; finish() returns the manifest entry
    (None when no item has one: then nothing is left in the folder)."""

    def __init__(self, folder: str, opener=open):
        self.folder, self.opener = folder, opener
        self.blob = None
        self.ends = [0]
        self.count = 0

    def add(self, thumbnails: list) -> None:
        for data in thumbnails:
            if data:
                if self.blob is None:
                    from .segment_io import _HashedFile
                    self.blob = _HashedFile(os.path.join(self.folder, BLOB), self.opener)
                self.blob.write(data)
                self.count += 1
            self.ends.append(self.ends[-1] + (len(data) if data else 0))

    def finish(self) -> dict | None:
        if self.blob is None:
            return None
        from .segment_io import write_small_array
        blob = self.blob.close()
        offsets = write_small_array(os.path.join(self.folder, OFFSETS), np.asarray(self.ends, dtype="<i8"), self.opener)
        return {"count": self.count, "files": {BLOB: blob, OFFSETS: offsets}}

    def abort(self) -> None:
        if self.blob is not None:
            self.blob.abort()


class Thumbnails:
    """A segment's thumbnails, memory-mapped; every read checked (the files may be damaged)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, label: str):
        self.blob, self.offsets, self.label = blob, offsets, label

    def get(self, row: int) -> bytes | None:
        """The JPEG of a segment row, or None when the item has none."""
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        if a == b:
            return None
        if not 0 <= a < b <= len(self.blob) or b - a > MAX_BYTES:
            raise DataError(f"{self.label}: thumbnail offsets are damaged; run `kidrr gallery verify`")
        data = bytes(self.blob[a:b])
        if not data.startswith(JPEG_START):
            raise DataError(f"{self.label}: a thumbnail is not a JPEG; run `kidrr gallery verify`")
        return data

    def problems(self) -> list:
        """What verify reports: offsets that do not walk the blob, sizes over the bound, non-JPEG data."""
        offs = np.asarray(self.offsets)
        sizes = np.diff(offs)
        if offs[0] != 0 or offs[-1] != len(self.blob) or (sizes < 0).any():
            return [f"{self.label}: {OFFSETS} does not walk {BLOB} from 0 to its end"]
        if (sizes > MAX_BYTES).any():
            return [f"{self.label}: a thumbnail is larger than {MAX_BYTES} bytes"]
        blob = np.asarray(self.blob)
        for start in offs[:-1][sizes > 0].tolist():
            if bytes(blob[start:start + 3]) != JPEG_START:
                return [f"{self.label}: the thumbnail at byte {start} is not a JPEG"]
        return []


def parse_entry(doc, name: str, rows: int, bad) -> dict | None:
    """A segment's "thumbnails" manifest entry, checked; bad(what) -> the DataError to raise."""
    if doc is None:
        return None
    if not isinstance(doc, dict) or set(doc) != {"count", "files"}:
        raise bad(f"segment {name}'s thumbnails entry must be an object with exactly count and files")
    count = doc["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= rows:
        raise bad(f"segment {name}'s thumbnails count must be an integer in 1..{rows}, got {count!r}")
    files = doc["files"]
    if not isinstance(files, dict) or set(files) != set(FILES):
        raise bad(f"segment {name}'s thumbnails must list exactly the files {sorted(FILES)}")
    return {"count": count, "files": files}


def open_thumbnails(seg_fd: int, seg_dir: str, entry: dict, rows: int, what: str) -> Thumbnails:
    """Map a segment's thumbnail files (regular files inside the segment folder only), sizes checked."""
    from kidrr.fileio import open_regular
    from .segment_io import map_array
    blob_path, offsets_path = os.path.join(seg_dir, BLOB), os.path.join(seg_dir, OFFSETS)
    with open_regular(BLOB, dir_fd=seg_fd, what=what, label=blob_path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size != entry["files"][BLOB]["bytes"] or size == 0:
            raise DataError(f"{blob_path} is {size} bytes, the manifest says {entry['files'][BLOB]['bytes']}: "
                            f"the segment is damaged; restore it or rebuild the gallery")
        blob = np.memmap(fh, dtype=np.uint8, mode="r")
    with open_regular(OFFSETS, dir_fd=seg_fd, what=what, label=offsets_path) as fh:
        offsets = map_array(fh, offsets_path, np.dtype("<i8"), (rows + 1,), entry["files"][OFFSETS]["bytes"])
    if int(offsets[0]) != 0 or int(offsets[-1]) != len(blob):
        raise DataError(f"{seg_dir}: {OFFSETS} does not span {BLOB}; the segment is damaged")
    return Thumbnails(blob, offsets, f"{seg_dir} thumbnails")
