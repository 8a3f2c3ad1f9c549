"""The one writer of a format-2 gallery: create, add, remove, compact, under an exclusive lock.

Every change follows one protocol, so a crash or kill at any point leaves the previous gallery
whole: new files go to a `.tmp-*` staging folder, are fsynced and renamed into place, and only
then does an atomic rename of manifest.json make them part of the gallery. Files a manifest
names are never modified; files no manifest names any more are deleted after the switch. Left-
overs of a killed writer (staging folders, segments no manifest names) are deleted by the next
writer, under the lock, and only when their names are ones kidrr writes.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import uuid
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from kidrr.errors import DataError, InputError
from kidrr.fileio import sha256_file

from . import first_stage
from .layout import (ANN_METHODS, FORMAT, LOCALS_DTYPES, LOCK, MANIFEST, MAX_ID_BYTES, MAX_NEXT_SEGMENT, SEGMENT_NAME,
                     STAGING_PREFIX, TOMBSTONE_NUMBERS, Manifest, SegmentInfo, field_schema, read_manifest)
from .metadata import check_item
from .thumbnails import check_thumbnails
from .reader import DEFAULT_EXACT_MAX, open_gallery
from .reader import check_segment_ids
from .segment_io import SegmentWriter, _write_error, fsync_dir, write_small_array

BATCH_ROWS = 8192            # rows per write during compact


def _tombstone_file(segment: str, generation: int, current: dict | None) -> str:
    """The new tombstone file of a segment: numbered by the generation within the six digits the
    names have, never the name of the file it replaces (that one is deleted after the switch)."""
    number = generation % TOMBSTONE_NUMBERS
    rel = f"{segment}/tombstones-{number:06d}.npy"
    if current and current["file"] == rel:
        rel = f"{segment}/tombstones-{(number + 1) % TOMBSTONE_NUMBERS:06d}.npy"
    return rel


class GalleryLocked(DataError):
    """Another process holds the gallery's writer lock."""


def check_ids(ids, n: int) -> list:
    """UTF-8 bytes of n unique, non-empty ids (str, no NUL, at most MAX_ID_BYTES each)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise InputError(f"ids must be a list of {n} strings, got {type(ids).__name__}")
    if len(ids) != n:
        raise InputError(f"{len(ids)} ids for {n} items; give exactly one id per item")
    out = []
    for i, item in enumerate(ids):
        if not isinstance(item, str) or not item or "\0" in item:
            raise InputError(f"id #{i} ({item!r}) must be a non-empty string without NUL")
        try:
            enc = item.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"id #{i} ({item!r}) cannot be encoded as UTF-8 (lone surrogate)") from None
        if len(enc) > MAX_ID_BYTES:
            raise InputError(f"id #{i} is {len(enc)} bytes in UTF-8; ids are at most {MAX_ID_BYTES}")
        out.append(enc)
    if len(set(out)) != n:
        seen, dup = set(), []
        for e in out:
            if e in seen:
                dup.append(e.decode())
            seen.add(e)
        raise InputError(f"duplicate ids in this batch: {dup[:5]}; every item needs its own id")
    return out


def check_metadata(metadata, encoded_ids: list) -> list:
    """One checked metadata dict per item (empty for none): hostile input, bounded (gallery.metadata)."""
    n = len(encoded_ids)
    if metadata is None:
        return [{}] * n
    if isinstance(metadata, (str, bytes, dict)) or not hasattr(metadata, "__len__") or len(metadata) != n:
        raise InputError(f"metadata must be a list of {n} objects (or None), one per item")
    return [check_item(meta, f"metadata of {e.decode()[:200]!r}") for meta, e in zip(metadata, encoded_ids)]


def check_vectors(globals_, locals_, regions: int, dim: int, locals_dtype: str):
    g, l = np.asarray(globals_), np.asarray(locals_)
    for name, arr, nd in (("globals", g, 2), ("locals", l, 3)):
        if arr.ndim != nd:
            raise InputError(f"{name} must be {nd}-D, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"{name} must be floating point, got dtype {arr.dtype}")
    if g.shape[1] != dim or l.shape[1:] != (regions, dim) or len(g) != len(l):
        raise InputError(f"globals {g.shape} and locals {l.shape} do not fit this gallery: it holds "
                         f"(n, {dim}) globals and (n, {regions}, {dim}) locals")
    g, l = g.astype(np.float32, copy=False), l.astype(np.float32, copy=False)
    for name, arr in (("globals", g), ("locals", l)):
        # A row sum in float64 is NaN/inf exactly when the row holds one (float32 values cannot overflow
        # it), and needs no temporary the size of the batch.
        bad = ~np.isfinite(arr.reshape(len(arr), -1).sum(axis=1, dtype=np.float64))
        if bad.any():
            raise InputError(f"{name} hold NaN or inf (rows {np.flatnonzero(bad)[:5].tolist()}); clean them first")
    if locals_dtype == "fp16" and len(l) and max(l.max(), -l.min()) > np.finfo(np.float16).max:
        raise InputError("locals exceed the fp16 range (65504); use --locals-dtype fp32 or int8")
    return g, l


def create_gallery(folder: str, bundle_id: str, regions: int, dim: int, locals_dtype: str = "fp16",
                   ann: str = "ivf", ann_min_rows: int = DEFAULT_EXACT_MAX) -> None:
    """An empty format-2 gallery. Refuses a folder that exists and is not empty (never overwrites)."""
    if locals_dtype not in LOCALS_DTYPES:
        raise InputError(f"locals dtype must be one of {sorted(LOCALS_DTYPES)}, got {locals_dtype!r}")
    if ann not in ANN_METHODS:
        raise InputError(f"ANN method must be one of {ANN_METHODS}, got {ann!r}")
    for name, v in (("regions", regions), ("dim", dim), ("ann_min_rows", ann_min_rows)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name} must be an integer >= 1, got {v!r}")
    if not isinstance(bundle_id, str) or not bundle_id or len(bundle_id) > 128 \
            or not all(0x21 <= ord(c) <= 0x7e for c in bundle_id):
        raise InputError("bundle_id must be 1-128 printable ASCII characters (the bundle's identity)")
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        hint = (" (it is a kidrr gallery: add to it, e.g. `kidrr index --append`)"
                if os.path.isfile(os.path.join(folder, MANIFEST)) else "")
        raise InputError(f"{folder} exists and is not an empty folder{hint}; choose a new path for the gallery")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot make the gallery folder {folder} ({exc.strerror or exc}); choose a path in a "
                         f"writable folder") from exc
    m = Manifest(bundle_id, 0, int(regions), int(dim), locals_dtype, (), ann, int(ann_min_rows), 0)
    _write_manifest(folder, m, open)


def _write_manifest(folder: str, manifest: Manifest, opener) -> None:
    """The commit point: write a temporary manifest, fsync it, rename it over manifest.json, fsync the folder."""
    tmp = os.path.join(folder, f"{STAGING_PREFIX}manifest-{uuid.uuid4().hex}")
    try:
        with opener(tmp, "wb") as fh:
            fh.write(manifest.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(folder, MANIFEST))
        fsync_dir(folder)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(os.path.join(folder, MANIFEST), exc) from exc


def _open_lock(path: str):
    """The writer's lock file, made if missing: a regular file, never a link or FIFO (no open can block)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb")


def write_segment(folder: str, name: str, manifest: Manifest, rows: int, batches, current=None, opener=open,
                  progress: bool = False) -> SegmentInfo:
    """THE way a segment is made, by the local writer and by distributed workers alike: stream `rows`
    items arriving as (globals, locals, ids[, metadata[, thumbnails]]) batches into the new folder `folder`, checked
    against the gallery's manifest (and, given `current`, against the ids it already holds), then build
    its ANN index. `name` is the segment name its manifest entries refer to. The folder is removed if
    anything fails; it is not part of any gallery until a writer commits it."""
    m = manifest
    seen = set()
    try:
        writer = SegmentWriter(folder, int(rows), m.regions, m.dim, m.locals_dtype, opener, schema=field_schema(m))
        with tqdm(total=int(rows), desc="adding items", unit="item", unit_scale=True, leave=False,
                  disable=not progress) as bar:
            for batch in batches:
                if not isinstance(batch, (tuple, list)) or len(batch) not in (3, 4, 5):
                    raise InputError("each batch must be (globals, locals, ids), (globals, locals, ids, metadata) "
                                     "or (globals, locals, ids, metadata, thumbnails)")
                g, l, ids = batch[:3]
                g, l = check_vectors(g, l, m.regions, m.dim, m.locals_dtype)
                enc = check_ids(ids, len(g))
                metas = check_metadata(batch[3] if len(batch) >= 4 else None, enc)
                thumbs = check_thumbnails(batch[4] if len(batch) == 5 else None, len(g), ids)
                again = seen.intersection(enc)
                taken = current.find([e.decode() for e in enc]) if current and current.segments else {}
                if again or taken:
                    dup = sorted({e.decode() for e in again} | set(taken))
                    raise InputError(f"ids already in the gallery: {dup[:5]}{' ...' if len(dup) > 5 else ''}; "
                                     f"remove them first or give new ids")
                seen.update(enc)
                writer.write(g, l, enc, metas, thumbs)
                bar.update(len(g))
        files = writer.finish()
        ann = _build_ann(folder, name, m.ann_method, int(rows), m.ann_min_rows, progress)
    except BaseException:
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return SegmentInfo(name, int(rows), files, None, ann, tuple(writer.meta_entries or ()) or None,
                       writer.thumbnail_entry)


def _build_ann(seg_dir: str, name: str, method: str, rows: int, min_rows: int, progress: bool = False):
    if rows < min_rows:
        return None
    globals_ = np.load(os.path.join(seg_dir, "globals.npy"), mmap_mode="r")
    with tqdm(total=rows, desc=f"{method} index", unit="item", unit_scale=True, leave=False,
              disable=not progress) as bar:
        index, params = first_stage.build_index(globals_, method, progress=bar)
    path = os.path.join(seg_dir, f"ann-{method}.faiss")
    try:
        import faiss
        faiss.write_index(index, path)
        os.chmod(path, 0o644)
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    except (OSError, RuntimeError) as exc:
        raise _write_error(path, exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc))) from exc
    return {"file": f"{name}/ann-{method}.faiss", "method": method, "params": params,
            "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


class GalleryWriter:
    """`with GalleryWriter(folder) as w: w.add(globals, locals, ids)`; one per gallery at a time."""

    def __init__(self, folder: str, opener=open, progress: bool = False):
        self.folder, self.opener, self.progress = os.path.abspath(folder), opener, progress
        read_manifest(self.folder)     # a clear error before a lock file appears in a non-gallery folder
        try:
            self._lock_fh = _open_lock(os.path.join(self.folder, LOCK))
        except OSError as exc:
            raise DataError(f"cannot open {os.path.join(self.folder, LOCK)} to write gallery {self.folder} "
                            f"({exc.strerror or exc}); the gallery is unchanged. A gallery is written in place: "
                            f"make its folder writable (not a read-only file system)") from exc
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise GalleryLocked(f"another process is writing gallery {self.folder} (it holds {LOCK}); "
                                    f"wait for it to finish, then try again") from None
            raise
        self.manifest = read_manifest(self.folder)[0]
        self._clean_leftovers()

    # ---- bookkeeping ------------------------------------------------------------------
    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()    # closing the descriptor releases the flock
            self._lock_fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self):
        if self._lock_fh is None:
            raise InputError("this GalleryWriter is closed; open a new one")

    def _referenced(self) -> set:
        refs = set()
        for s in self.manifest.segments:
            refs.add(s.name)
            refs.update(f"{s.name}/{f}" for f in s.files)
            refs.update(f"{s.name}/{f}" for col in (s.meta or ()) for f in col["files"])
            refs.update(f"{s.name}/{f}" for f in (s.thumbnails or {}).get("files", ()))
            for extra in (s.tombstones, s.ann):
                if extra:
                    refs.add(extra["file"])
        return refs

    def _clean_leftovers(self) -> None:
        """Delete what a killed writer of this gallery left: only kidrr's own names, never a listed file."""
        refs = self._referenced()
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            real_dir = os.path.isdir(path) and not os.path.islink(path)   # never delete through a link
            if name.startswith(STAGING_PREFIX + "seg-") or name.startswith(STAGING_PREFIX + "manifest-"):
                shutil.rmtree(path) if real_dir else os.unlink(path)
            elif SEGMENT_NAME.match(name) and name not in refs and real_dir:
                shutil.rmtree(path)
            elif name in refs and real_dir:
                for inner in os.listdir(path):
                    rel = f"{name}/{inner}"
                    if rel not in refs and (inner.startswith("tombstones-") or inner.startswith("ann-")
                                            or inner.startswith(STAGING_PREFIX)):
                        os.unlink(os.path.join(path, inner))

    def _commit(self, manifest: Manifest, drop: list = ()) -> None:
        _write_manifest(self.folder, manifest, self.opener)
        self.manifest = manifest
        self._drop(drop)

    def _drop(self, drop) -> None:
        for rel in drop:      # no longer named by the manifest: ours to delete
            path = os.path.join(self.folder, rel)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)

    def _open_checked(self):
        """The current gallery, with every segment's id table checked against its ids: add and remove
        find ids through the tables, and a damaged one would let an id in twice or leave a copy live."""
        current = open_gallery(self.folder)
        for seg in current.segments:
            problems = check_segment_ids(seg)
            if problems:
                raise DataError(f"gallery {self.folder}: {problems[0]}; nothing was changed. Run `kidrr gallery "
                                f"verify`, and restore the segment or rebuild the gallery")
        return current

    # ---- add ----------------------------------------------------------------------------
    def add(self, globals_, locals_, ids, metadata=None, thumbnails=None) -> int:
        """Append one batch as a new segment; returns the live item count afterwards. metadata: None, or
        one dict (or None) per item: strings, numbers, booleans, lists of strings, ISO dates (docs/gallery.md).
        thumbnails: None, or one JPEG (bytes, at most 256 KiB) or None per item."""
        g = np.asarray(globals_)
        return self.add_batches([(g, locals_, ids, metadata, thumbnails)], rows=len(g) if g.ndim else 0)

    def add_batches(self, batches, rows: int, _check_existing: bool = True, _number: int | None = None) -> int:
        """Append `rows` items arriving in batches of (globals, locals, ids), (globals, locals, ids,
        metadata) or (globals, locals, ids, metadata, thumbnails) as one new segment."""
        self._check_open()
        m = self.manifest
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise InputError(f"nothing to add: give at least one item (rows={rows!r})")
        number = m.next_segment if _number is None else _number
        if number >= MAX_NEXT_SEGMENT:    # the manifest could not name the next one: refuse before writing
            raise DataError(f"gallery {self.folder} has used every segment number; `kidrr gallery compact` it "
                            f"(compaction numbers its one segment afresh), then add again")
        current = self._open_checked() if _check_existing else None
        name = f"seg-{number:06d}"
        staging = os.path.join(self.folder, f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}")
        try:
            info = write_segment(staging, name, m, int(rows), batches, current, self.opener, self.progress)
            final = os.path.join(self.folder, name)
            os.rename(staging, final)
            staging = final
            fsync_dir(self.folder)
            self._commit(replace(m, generation=m.generation + 1, segments=m.segments + (info,),
                                 next_segment=number + 1))
        except BaseException:
            if self.manifest is m and os.path.isdir(staging):    # not committed: the new folder is nobody's
                shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.manifest.live

    def adopt(self, staged: list) -> list:
        """Make finished segment folders written elsewhere (write_segment, e.g. by distributed workers)
        part of the gallery with ONE manifest swap: each is renamed to the next seg-NNNNNN name. staged:
        [(folder inside this gallery, SegmentInfo from write_segment)]; the caller has checked their files
        and that their ids are new. Returns the new segment names. If the commit fails, the folders are
        renamed back where they were (a killed writer's renamed-but-unnamed ones are deleted by the next)."""
        self._check_open()
        m = self.manifest
        number = m.next_segment
        if number + len(staged) > MAX_NEXT_SEGMENT:
            raise DataError(f"gallery {self.folder} has too few segment numbers left for {len(staged)} more "
                            f"segments; `kidrr gallery compact` it, then index again")
        infos, moved = [], []
        try:
            for path, info in staged:
                name = f"seg-{number:06d}"
                final = os.path.join(self.folder, name)
                if os.path.lexists(final):
                    raise DataError(f"{final} exists but the manifest does not name it; run any gallery "
                                    f"command (its writer removes the leftover), then index again")
                os.rename(path, final)
                moved.append((final, path))
                ann = dict(info.ann, file=f"{name}/{os.path.basename(info.ann['file'])}") if info.ann else None
                infos.append(replace(info, name=name, ann=ann))
                number += 1
            fsync_dir(self.folder)
            self._commit(replace(m, generation=m.generation + 1, segments=m.segments + tuple(infos),
                                 next_segment=number))
        except BaseException:
            if self.manifest is m:
                for final, path in reversed(moved):
                    try:
                        os.rename(final, path)
                    except OSError:
                        pass    # left unnamed: the next writer deletes it, a rerun encodes its photos again
            raise
        return [i.name for i in infos]

    # ---- remove -------------------------------------------------------------------------
    def remove(self, ids) -> int:
        """Tombstone the given ids (all of them exist, or nothing changes); returns the live count."""
        self._check_open()
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__") or not len(ids):
            raise InputError("nothing to remove: give at least one id (a list of strings)")
        enc = check_ids(list(ids), len(ids))
        names = [e.decode() for e in enc]
        current = self._open_checked()
        found = current.find(names)
        unknown = [i for i in names if i not in found]
        if unknown:
            raise InputError(f"{len(unknown)} id(s) are not in the gallery: {unknown[:5]}; nothing was removed")
        m = self.manifest
        rows = np.array(sorted(found.values()), dtype=np.int64)
        segments, drop = list(m.segments), []
        gen = m.generation + 1
        written = []
        try:
            for si, seg in enumerate(current.segments):
                mine = rows[(rows >= seg.start) & (rows < seg.start + seg.rows)] - seg.start
                if not len(mine):
                    continue
                dead = np.union1d(seg.dead, mine).astype("<i8")
                rel = _tombstone_file(seg.name, gen, segments[si].tombstones)
                written.append(rel)
                entry = write_small_array(os.path.join(self.folder, rel), dead, self.opener)
                os.chmod(os.path.join(self.folder, rel), 0o644)
                if segments[si].tombstones:
                    drop.append(segments[si].tombstones["file"])
                segments[si] = replace(segments[si], tombstones={"file": rel, "count": int(len(dead)), **entry})
            fsync_dir(self.folder)
            self._commit(replace(m, generation=gen, segments=tuple(segments)), drop)
        except BaseException:
            if self.manifest is m:          # not committed: the new tombstone files are nobody's
                self._drop(written)
            raise
        return self.manifest.live

    # ---- compact ------------------------------------------------------------------------
    def compact(self) -> int:
        """Rewrite every live item into one new segment (and index); old segments go after the switch."""
        self._check_open()
        m = self.manifest
        current = open_gallery(self.folder)
        live = len(current)
        if live == 0:
            self._commit(replace(m, generation=m.generation + 1, segments=()), [s.name for s in m.segments])
            return 0

        def batches():
            for rows, locs, globs in current.tiles(BATCH_ROWS):
                yield globs, locs, current.labels(rows), current.metadata(rows), current.thumbnails(rows)
        old = [s.name for s in m.segments]
        number = m.next_segment
        if number >= MAX_NEXT_SEGMENT:
            # Every number was used once: the one new segment takes the lowest free name instead.
            used = {int(s.name[4:]) for s in m.segments}
            number = next(n for n in range(MAX_NEXT_SEGMENT) if n not in used
                          and not os.path.lexists(os.path.join(self.folder, f"seg-{n:06d}")))
        # The new segment alone replaces all the old ones at the manifest switch (its ids are the old ids).
        self.manifest = replace(m, segments=())
        try:
            self.add_batches(batches(), rows=live, _check_existing=False, _number=number)
        except BaseException:
            self.manifest = m
            raise
        self._drop(old)
        return live
