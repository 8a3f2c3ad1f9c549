"""Reading a format-2 gallery: one manifest snapshot, memory-mapped segments, lazy ANN indexes.

Opening reads the manifest, each segment array's 128-byte header and its size, and the
tombstones (small): time and anonymous memory do not grow with the item count. Item rows are
numbered across segments in manifest order; searches return ids. A reader never takes the
writer's lock: writers never modify a file a manifest names, they only add files and switch the
manifest, so a reader keeps the snapshot it opened (a file unlinked by compact stays readable
through its open map). Implements kidrr.runtime.gallery.GallerySource for the Retriever.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import threading
from dataclasses import dataclass

import numpy as np

from kidrr.errors import DataError, InputError
from kidrr.fileio import NotRegularFile, open_folder, open_regular, sha256_file

from . import first_stage
from .layout import (ID_BYTES_FILE, MANIFEST, MAX_ID_BYTES, Manifest, array_spec, check_bundle, field_schema, read_manifest,
                     segment_files)
from .metadata import Column, column_spec
from .segment_io import half_to_float, id_hash, map_array

OPEN_RETRIES = 5
DEFAULT_EXACT_MAX = 50_000   # auto first stage: exact up to this many live items, ANN above
# A filter keeping at most this many items of a segment is answered by an exact scan of just those
# rows (a gather and one product: ~1 ms per 10k at D=256), which beats an index that would have to
# probe most of its lists to find them.
SUBSET_EXACT_MAX = 32_768


@dataclass
class Segment:
    name: str
    start: int                 # global row of its first item
    rows: int
    globals: np.ndarray        # (rows, D) float32, memory-mapped
    locals: np.ndarray         # (rows, R, D) fp32 | fp16 | int8, memory-mapped
    scales: np.ndarray | None  # (rows, R) float32 for int8
    id_offsets: np.ndarray
    id_bytes: np.ndarray
    id_hashes: np.ndarray      # (rows, 2) uint64 sorted: (hash, row)
    dead: np.ndarray           # sorted local rows removed (tombstones)
    ann_info: dict | None
    ann_file: object = None    # the ANN index, open since the snapshot was taken (read on first use)
    meta: dict = None          # metadata field -> Column (memory-mapped)
    thumbs: object = None      # thumbnails.Thumbnails, or None when the segment holds none


class DiskGallery:
    def __init__(self, folder: str, manifest: Manifest, segments: list, manifest_bytes: bytes):
        self.folder, self.manifest, self.segments = folder, manifest, segments
        self.manifest_bytes = manifest_bytes
        self._starts = np.array([s.start for s in segments] + [manifest.rows], dtype=np.int64)
        self._ann: dict = {}           # segment name -> faiss index, read on first use
        self._live: dict = {}          # segment name -> faiss IDSelector skipping its removed rows
        self._ann_lock = threading.Lock()
        self.fields = field_schema(manifest)    # metadata field -> type
        # First-stage settings a search uses (the Retriever calls shortlist(globals, k') only).
        self.first_stage, self.nprobe, self.ef, self.exact_max = "auto", None, None, DEFAULT_EXACT_MAX

    # ---- GallerySource ------------------------------------------------------------------
    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def regions(self) -> int:
        return self.manifest.regions

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def __len__(self) -> int:
        return self.manifest.live

    def first_stage_method(self, method: str | None = None) -> str:
        """'exact' or 'ann': what `method` ('auto' | 'exact' | 'ann') resolves to for this gallery."""
        method = method or self.first_stage
        if method not in ("auto", "exact", "ann"):
            raise InputError(f"first stage must be auto, exact or ann, got {method!r}")
        if method == "auto":
            return "ann" if len(self) > self.exact_max and any(s.ann_info for s in self.segments) else "exact"
        return method

    def describe_first_stage(self, method: str | None = None) -> str:
        used = self.first_stage_method(method)
        if used == "exact":
            return f"exact (blocked scan of {len(self):,} globals)"
        with_ann = [s for s in self.segments if s.ann_info]
        scanned = sum(s.rows for s in self.segments if not s.ann_info)
        kinds = sorted({s.ann_info["method"] for s in with_ann})
        return (f"ann ({'/'.join(kinds) or 'none'} over {len(with_ann)} segment(s), exact scan of {scanned:,} "
                f"rows in segments without an index)")

    def shortlist(self, query_globals: np.ndarray, size: int, method: str | None = None, where=None) -> list:
        """Per query, the global rows (ascending) of the `size` live items with the largest global dot
        product; where: a compiled filter (compile_filter), only items it keeps."""
        return [np.sort(rows) for rows, _ in self.nearest(query_globals, size, method, where)]

    def nearest(self, query_globals: np.ndarray, size: int, method: str | None = None, where=None) -> list:
        """Per query (rows, dot products) of the `size` best live items (that `where` keeps), best first
        (ties: smaller row). Fewer when fewer items match."""
        queries = np.ascontiguousarray(query_globals, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"query globals must be (q, {self.dim}), got {queries.shape}")
        allowed = self._allowed(where)
        total = len(self) if allowed is None else sum(int(a.sum()) for a in allowed)
        size = int(min(size, total))
        if size <= 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(queries))]
        use_ann = self.first_stage_method(method) == "ann"
        best_s = best_r = None
        for si, seg in enumerate(self.segments):
            keep = None if allowed is None else allowed[si]
            count = seg.rows - len(seg.dead) if keep is None else int(keep.sum())
            if count == 0:
                continue
            if keep is not None and (count <= SUBSET_EXACT_MAX or not (use_ann and seg.ann_info)):
                # A selective filter: scanning its matches exactly is cheaper than any index, and exact.
                sims, rows = first_stage.exact_subset(queries, seg.globals, np.flatnonzero(keep), min(size, count))
            elif use_ann and seg.ann_info:
                selector = self._live_selector(seg) if keep is None else first_stage.mask_selector(keep)
                sims, rows = first_stage.search_index(self._index(seg), seg.ann_info["method"],
                                                      seg.ann_info["params"], queries, min(count, size), self.nprobe,
                                                      self.ef, selector)
            else:
                for b0 in range(0, seg.rows, first_stage.EXACT_BLOCK_ROWS):
                    b1 = min(seg.rows, b0 + first_stage.EXACT_BLOCK_ROWS)
                    if keep is None:
                        lo, hi = np.searchsorted(seg.dead, [b0, b1])
                        skip = seg.dead[lo:hi] - b0
                    else:
                        skip = np.flatnonzero(~keep[b0:b1])
                    sims, rows = first_stage.exact_block(queries, seg.globals[b0:b1], size, skip)
                    rows = np.where(np.isfinite(sims), rows + seg.start + b0, -1)
                    best_s, best_r = first_stage.merge(best_s, best_r, sims, rows, size)
                continue
            rows = np.where(rows >= 0, rows + seg.start, -1)
            best_s, best_r = first_stage.merge(best_s, best_r, sims, rows, size)
        out = []
        for q in range(len(queries)):
            found = best_r[q] >= 0
            if found.sum() < size and use_ann:    # the index found too few items: ask the reference
                out.append(self.nearest(queries[q:q + 1], size, "exact", where)[0])
                continue
            rows, sims = best_r[q][found].astype(np.int64), best_s[q][found].astype(np.float32)
            order = np.lexsort((rows, -sims))
            out.append((rows[order], sims[order]))
        return out

    def _allowed(self, where):
        """None (every live item), or per segment a bool mask of the live rows a compiled filter keeps."""
        if where is None:
            return None
        if getattr(where, "gallery", None) is not self:
            raise InputError("this filter was compiled for another gallery snapshot; compile it with "
                             "gallery.compile_filter(where)")
        return where.masks()

    def _locate(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= self.manifest.rows)):
            raise InputError(f"rows must be 1-D in 0..{self.manifest.rows - 1}")
        seg_of = np.searchsorted(self._starts, rows, side="right") - 1
        return rows, seg_of

    def gather(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """float32 locals (len, R, D) and globals (len, D) of the given rows, read from the maps only."""
        rows, seg_of = self._locate(rows)
        locs = np.empty((len(rows), self.regions, self.dim), dtype=np.float32)
        globs = np.empty((len(rows), self.dim), dtype=np.float32)
        for si in np.unique(seg_of):
            seg, at = self.segments[si], np.flatnonzero(seg_of == si)
            local = rows[at] - seg.start
            order = np.argsort(local, kind="stable")       # ascending reads: kinder to the page cache
            local, at = local[order], at[order]
            for arr in (seg.locals, seg.scales, seg.globals):
                _prefetch(arr, local)
            block = np.asarray(seg.locals[local])
            locs[at] = half_to_float(block) if block.dtype == np.float16 else block
            if seg.scales is not None:
                locs[at] *= seg.scales[local][..., None]
            globs[at] = seg.globals[local]
        if not (np.isfinite(locs).all() and np.isfinite(globs).all()):
            raise DataError(f"gallery {self.folder}: a stored vector holds NaN or inf; run `kidrr gallery verify`")
        return locs, globs

    def labels(self, rows) -> list:
        """The id strings of the given rows."""
        rows, seg_of = self._locate(rows)
        out = []
        for r, si in zip(rows.tolist(), seg_of.tolist()):
            seg = self.segments[si]
            i = r - seg.start
            a, b = int(seg.id_offsets[i]), int(seg.id_offsets[i + 1])
            if not 0 <= a < b <= len(seg.id_bytes) or b - a > 4096:
                raise DataError(f"{self.folder}/{seg.name}: id offsets are damaged; run `kidrr gallery verify`")
            try:
                out.append(bytes(seg.id_bytes[a:b]).decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{self.folder}/{seg.name}: id {i} is not UTF-8; run `kidrr gallery verify`") from None
        if len(set(out)) != len(set(rows.tolist())):
            raise DataError(f"gallery {self.folder}: an id is live on two rows (an answer would name it twice); "
                            f"run `kidrr gallery verify`")
        return out

    def tiles(self, rows_per_tile: int, where=None):
        """(global rows, float32 locals, float32 globals) of every live item (that a compiled filter
        keeps), a tile at a time."""
        allowed = self._allowed(where)
        for si, seg in enumerate(self.segments):
            for b0 in range(0, seg.rows, rows_per_tile):
                local = np.arange(b0, min(seg.rows, b0 + rows_per_tile))
                if allowed is not None:
                    local = local[allowed[si][local]]
                elif len(seg.dead):
                    local = local[~np.isin(local, seg.dead)]
                if len(local):
                    rows = local + seg.start
                    yield (rows, *self.gather(rows))

    # ---- metadata -----------------------------------------------------------------------
    def metadata(self, rows) -> list:
        """The metadata dict of each given row ({} for an item without any)."""
        rows, seg_of = self._locate(rows)
        out = []
        for r, si in zip(rows.tolist(), seg_of.tolist()):
            seg = self.segments[si]
            item = {}
            for field, col in seg.meta.items():
                value = col.value(r - seg.start)
                if value is not None:
                    item[field] = value
            out.append(item)
        return out

    @property
    def has_thumbnails(self) -> bool:
        return any(seg.thumbs is not None for seg in self.segments)

    def thumbnails(self, rows) -> list:
        """The JPEG thumbnail of each given row (bytes), or None for an item without one."""
        rows, seg_of = self._locate(rows)
        out = []
        for r, si in zip(rows.tolist(), seg_of.tolist()):
            seg = self.segments[si]
            out.append(None if seg.thumbs is None else seg.thumbs.get(r - seg.start))
        return out

    def compile_filter(self, where, unknown: str = "error"):
        """A filter (JSON form: docs/gallery.md) checked against this snapshot's fields, ready for
        shortlist / nearest / tiles. unknown: "error" (InputError naming the fields) or "none" (a field
        this gallery lacks matches no item: a shard that has no such item)."""
        from .filters import compile_filter
        return compile_filter(self, where, unknown)

    # ---- ids ----------------------------------------------------------------------------
    def find(self, ids) -> dict:
        """id -> global row for the given ids that are live here (others are absent from the result)."""
        found = {}
        for item in dict.fromkeys(ids):
            enc = item.encode("utf-8")
            h = np.uint64(id_hash(enc))
            for seg in self.segments:
                keys = seg.id_hashes[:, 0]
                lo, hi = int(np.searchsorted(keys, h, "left")), int(np.searchsorted(keys, h, "right"))
                for row in seg.id_hashes[lo:hi, 1].tolist():
                    if row >= seg.rows:
                        raise DataError(f"{self.folder}/{seg.name}: id table is damaged; run `kidrr gallery verify`")
                    at = int(np.searchsorted(seg.dead, row))
                    dead = at < len(seg.dead) and seg.dead[at] == row
                    if not dead and self.labels([seg.start + row])[0] == item:
                        if item in found:     # ids are unique among live items: refuse, never pick one
                            raise DataError(f"gallery {self.folder}: id {item!r} is live twice (rows {found[item]} "
                                            f"and {seg.start + row}); run `kidrr gallery verify`")
                        found[item] = seg.start + row
        return found

    def ids(self) -> list:
        """Every live id in row order (O(n): for tools, not for serving)."""
        return [i for _, i in self.iter_ids()]

    def iter_ids(self):
        for seg in self.segments:
            offsets = np.asarray(seg.id_offsets)
            blob = bytes(seg.id_bytes)
            dead = set(seg.dead.tolist())
            for i in range(seg.rows):
                if i not in dead:
                    try:
                        yield seg.start + i, blob[offsets[i]:offsets[i + 1]].decode("utf-8")
                    except UnicodeDecodeError:
                        raise DataError(f"{self.folder}/{seg.name}: id {i} is not UTF-8; run "
                                        f"`kidrr gallery verify`") from None

    # ---- ANN ----------------------------------------------------------------------------
    def _index(self, seg: Segment):
        with self._ann_lock:
            index = self._ann.get(seg.name)
            if index is None:
                path = os.path.join(self.folder, seg.ann_info["file"])
                fh = seg.ann_file
                # faiss parses the file in C++: only a file that matches the manifest's sha256 gets there.
                if os.fstat(fh.fileno()).st_size != seg.ann_info["bytes"] or sha256_file(fh) != seg.ann_info["sha256"]:
                    raise DataError(f"{path} does not match its sha256 (or size) in the manifest; rebuild "
                                    f"the index with `kidrr gallery compact`, or search with --first-stage exact")
                # Through the descriptor opened with the snapshot: the file may be unlinked by now.
                index = first_stage.read_index(f"/proc/self/fd/{fh.fileno()}", shown=path)
                first_stage.check_index(index, seg.ann_info["method"], seg.ann_info["params"], seg.globals, path)
                self._ann[seg.name] = index
            return index

    def _live_selector(self, seg: Segment):
        """None without removals; else the segment's tombstone filter, built once per snapshot."""
        if not len(seg.dead):
            return None
        with self._ann_lock:
            if seg.name not in self._live:
                self._live[seg.name] = first_stage.live_selector(seg.dead)
            return self._live[seg.name]

    def adopt_indexes(self, older: "DiskGallery") -> None:
        """Reuse the ANN indexes an older snapshot of this gallery has read, for segments both list
        with the same index entry (files a manifest names never change, so they are the same index)."""
        before = {s.name: s.ann_info for s in older.segments}
        with older._ann_lock:
            kept = {name: older._ann[name] for name in older._ann}
        for seg in self.segments:
            if seg.ann_info and before.get(seg.name) == seg.ann_info and seg.name in kept:
                self._ann[seg.name] = kept[seg.name]

    def load_indexes(self) -> None:
        """Read (and checksum) every ANN index now rather than on the first search."""
        for seg in self.segments:
            if seg.ann_info:
                self._index(seg)


def _prefetch(arr, rows: np.ndarray) -> None:
    """Ask the kernel for the given rows' pages at once (MADV_WILLNEED, one call per run of adjacent
    rows): on a cold cache the reads then overlap instead of faulting in one page after another."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not len(rows) or not hasattr(mmap, "MADV_WILLNEED"):
        return
    row_bytes = arr.strides[0]
    first = arr.offset % mmap.ALLOCATIONGRANULARITY          # where the array starts inside the map
    cut = np.flatnonzero(np.diff(rows) != 1) + 1              # rows are ascending
    try:
        for a, b in zip(rows[np.r_[0, cut]].tolist(), rows[np.r_[cut - 1, len(rows) - 1]].tolist()):
            start = first + a * row_bytes
            aligned = start - start % mmap.PAGESIZE
            mm.madvise(mmap.MADV_WILLNEED, aligned, first + (b + 1) * row_bytes - aligned)
    except (OSError, ValueError):
        pass     # advice only: the reads below still happen


def _open_segment(folder: str, manifest: Manifest, info, start: int) -> Segment:
    """Map one segment's files. Each is opened once, as a regular file inside the real segment folder
    (no symlink, FIFO or device: kidrr.fileio.open_regular), and checked through that descriptor."""
    seg_dir = os.path.join(folder, info.name)
    what = f"gallery {folder}"
    seg_fd = open_folder(seg_dir, what=what)
    try:
        maps = {}
        for name in segment_files(manifest.locals_dtype):
            path = os.path.join(seg_dir, name)
            expect = info.files[name]["bytes"]
            with open_regular(name, dir_fd=seg_fd, what=what, label=path) as fh:
                if name == ID_BYTES_FILE:
                    size = os.fstat(fh.fileno()).st_size
                    if size != expect or size < info.rows:
                        raise DataError(f"{path} is {size} bytes, the manifest says {expect}: the segment is "
                                        f"truncated or damaged; restore it or rebuild the gallery")
                    maps[name] = np.memmap(fh, dtype=np.uint8, mode="r")
                    continue
                dtype, shape = array_spec(name, info.rows, manifest.regions, manifest.dim, manifest.locals_dtype)
                maps[name] = map_array(fh, path, dtype, shape, expect)
        offsets = maps["id_offsets.npy"]
        if int(offsets[0]) != 0 or int(offsets[-1]) != len(maps[ID_BYTES_FILE]):
            raise DataError(f"{seg_dir}: id offsets do not span {ID_BYTES_FILE}; the segment is damaged")
        dead = np.zeros(0, dtype=np.int64)
        if info.tombstones:
            path = os.path.join(folder, info.tombstones["file"])
            count = info.tombstones["count"]
            with open_regular(os.path.basename(path), dir_fd=seg_fd, what=what, label=path) as fh:
                arr = map_array(fh, path, np.dtype("<i8"), (count,), info.tombstones["bytes"])
                if sha256_file(fh) != info.tombstones["sha256"]:
                    raise DataError(f"{path} does not match its sha256 in the manifest; the removals are damaged")
                dead = np.array(arr, dtype=np.int64)
            if count and (dead[0] < 0 or dead[-1] >= info.rows or (np.diff(dead) <= 0).any()):
                raise DataError(f"{path}: tombstones must be sorted unique rows in 0..{info.rows - 1}")
        columns = {}
        for i, col in enumerate(info.meta or ()):
            arrays = {}
            for name, entry in col["files"].items():
                path = os.path.join(seg_dir, name)
                with open_regular(name, dir_fd=seg_fd, what=what, label=path) as fh:
                    kind = name.split("-", 2)[2].rsplit(".", 1)[0]
                    if name.endswith(".utf8"):
                        if os.fstat(fh.fileno()).st_size != entry["bytes"]:
                            raise DataError(f"{path} is not the size the manifest says; the segment is damaged")
                        arrays[kind] = np.memmap(fh, dtype=np.uint8, mode="r") if entry["bytes"] else np.zeros(0, np.uint8)
                        continue
                    dtype, shape = column_spec(name, col["type"], info.rows, col.get("distinct", 0), col.get("total", 0))
                    arrays[kind] = map_array(fh, path, dtype, shape, entry["bytes"])
            columns[col["name"]] = Column(col["name"], col["type"], info.rows, arrays,
                                          f"{seg_dir} metadata field {col['name']!r}")
        thumbs = None
        if info.thumbnails:
            from .thumbnails import open_thumbnails
            thumbs = open_thumbnails(seg_fd, seg_dir, info.thumbnails, info.rows, what)
        # The ANN index is opened now and read later (on first search): the open descriptor keeps
        # this snapshot's file readable after a compaction unlinks it.
        ann_fh = None
        if info.ann:
            path = os.path.join(folder, info.ann["file"])
            ann_fh = open_regular(os.path.basename(path), dir_fd=seg_fd, what=what, label=path)
    finally:
        os.close(seg_fd)
    return Segment(info.name, start, info.rows, maps["globals.npy"], maps["locals.npy"], maps.get("scales.npy"),
                   offsets, maps[ID_BYTES_FILE], maps["id_hashes.npy"], dead, info.ann, ann_fh, columns, thumbs)


def open_gallery(folder: str, bundle_id: str | None = None, dim: int | None = None) -> DiskGallery:
    """Open a format-2 gallery folder (manifest + headers only). With bundle_id, refuse another bundle's.

    A writer may switch the manifest while this runs; a segment that vanished under a newer
    manifest means a compaction ran: read the new snapshot (a few tries) rather than fail.
    """
    folder = os.path.abspath(folder)
    last = None
    for _ in range(OPEN_RETRIES):
        manifest, raw = read_manifest(folder)
        check_bundle(manifest, bundle_id, folder)
        if dim is not None and manifest.dim != dim:
            raise DataError(f"gallery {folder} holds {manifest.dim}-d vectors but the model's embedding is {dim}-d; "
                            f"it was not encoded by this model")
        try:
            segments, start = [], 0
            for info in manifest.segments:
                segments.append(_open_segment(folder, manifest, info, start))
                start += info.rows
            return DiskGallery(folder, manifest, segments, raw)
        except FileNotFoundError as exc:
            last = exc
            try:
                with open(os.path.join(folder, MANIFEST), "rb") as fh:
                    if fh.read() != raw:
                        continue     # a writer switched the manifest: take the new snapshot
            except OSError:
                pass
            break
    raise DataError(f"gallery {folder}: {last} is missing although the manifest lists it; the gallery is "
                    f"damaged (restore the file, or rebuild the gallery)")


def verify(gallery: DiskGallery, progress=None) -> list:
    """Every file's sha256 against the manifest, then the ids and the ANN indexes: [problems], empty
    when the gallery is sound."""
    problems = []
    for info in gallery.manifest.segments:
        entries = {f"{info.name}/{k}": v for k, v in info.files.items()}
        if info.tombstones:
            entries[info.tombstones["file"]] = info.tombstones
        if info.ann:
            entries[info.ann["file"]] = info.ann
        for col in info.meta or ():
            entries.update({f"{info.name}/{k}": v for k, v in col["files"].items()})
        if info.thumbnails:
            entries.update({f"{info.name}/{k}": v for k, v in info.thumbnails["files"].items()})
        for rel, entry in entries.items():
            path = os.path.join(gallery.folder, rel)
            try:
                with open_regular(path, what=f"gallery {gallery.folder}") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size != entry["bytes"]:
                        problems.append(f"{rel}: {size} bytes, the manifest says {entry['bytes']}")
                    elif sha256_file(fh) != entry["sha256"]:
                        problems.append(f"{rel}: sha256 mismatch (the file changed after it was written)")
            except FileNotFoundError:
                problems.append(f"{rel}: missing")
            except NotRegularFile as exc:
                problems.append(f"{rel}: {exc}")
            except OSError as exc:
                problems.append(f"{rel}: cannot be read ({exc.strerror})")
            if progress is not None:
                progress.update(1)
    if not problems:
        for seg in gallery.segments:
            problems.extend(check_segment_ids(seg))
        if not problems:
            problems.extend(duplicate_ids(gallery))
        for seg in gallery.segments:
            for col in seg.meta.values():
                problems.extend(col.problems())
            if seg.thumbs is not None:
                problems.extend(seg.thumbs.problems())
        for seg in gallery.segments:
            if seg.ann_info:
                try:
                    gallery._index(seg)
                except DataError as exc:
                    problems.append(f"{seg.ann_info['file']}: {exc}")
    return problems


def check_segment_ids(seg: Segment) -> list:
    """What is wrong with one segment's ids: offsets, UTF-8, NUL, length, and the lookup table
    (a permutation of the rows, sorted, each hash that of its row's id). Reads every id: O(rows)."""
    offs = np.asarray(seg.id_offsets)
    if (np.diff(offs) <= 0).any():
        return [f"{seg.name}/id_offsets.npy: offsets not strictly increasing"]
    if (np.diff(offs) > MAX_ID_BYTES).any():
        return [f"{seg.name}/{ID_BYTES_FILE}: an id is longer than {MAX_ID_BYTES} bytes"]
    blob = bytes(seg.id_bytes)
    table = np.asarray(seg.id_hashes)
    keys, rows = table[:, 0], table[:, 1]
    if not np.array_equal(np.sort(rows), np.arange(seg.rows, dtype=np.uint64)):
        return [f"{seg.name}/id_hashes.npy: the rows column is not a permutation of the segment's rows"]
    if len(keys) > 1 and (keys[1:] < keys[:-1]).any():
        return [f"{seg.name}/id_hashes.npy: not sorted by hash"]
    # UTF-8 of every id at once: the whole blob decodes, and no id starts inside a character.
    try:
        blob.decode("utf-8")
        bad = None
    except UnicodeDecodeError as exc:
        bad = int(np.searchsorted(offs, exc.start, side="right")) - 1
    starts = np.frombuffer(blob, dtype=np.uint8)[offs[:-1]] if seg.rows else np.zeros(0, np.uint8)
    inside = np.flatnonzero((starts & 0xC0) == 0x80)
    if bad is not None or len(inside):
        return [f"{seg.name}/{ID_BYTES_FILE}: id {bad if bad is not None else int(inside[0])} is not UTF-8"]
    nul = blob.find(b"\0")
    if nul >= 0:
        return [f"{seg.name}/{ID_BYTES_FILE}: id {int(np.searchsorted(offs, nul, side='right')) - 1} holds a NUL byte"]
    sha = hashlib.sha256
    bounds = offs.tolist()
    want = np.frombuffer(b"".join(sha(blob[a:b]).digest()[:8] for a, b in zip(bounds[:-1], bounds[1:])), dtype="<u8")
    if not np.array_equal(keys, want[rows.astype(np.int64)]):
        return [f"{seg.name}/id_hashes.npy: a hash does not match its row's id (the lookup table is damaged)"]
    return []


def duplicate_ids(gallery: DiskGallery) -> list:
    """Ids live more than once in the gallery (ids are unique among live items): [problems]."""
    try:
        seen, problems = {}, []
        for row, item in gallery.iter_ids():
            if item in seen:
                problems.append(f"id {item!r} is live twice (rows {seen[item]} and {row}); remove one copy")
                if len(problems) >= 5:
                    break
            seen[item] = row
        return problems
    except DataError as exc:
        return [str(exc)]
