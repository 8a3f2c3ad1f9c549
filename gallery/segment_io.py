"""Writing and mapping one segment: fixed-header .npy files streamed with their sha256, ids, int8 scales.

A segment is written once, in a staging folder, and never modified; the writer renames it into
place and only then switches the manifest. Writes go through `opener` so tests can inject a
disk that fills up.
"""
from __future__ import annotations

import errno
import hashlib
import os
import threading

import numpy as np

from kidrr.errors import DataError

from .layout import ID_BYTES_FILE, LOCALS_DTYPES, NPY_HEADER_BYTES, array_spec, npy_header, read_npy_header, segment_files
from .metadata import ColumnBuilder, write_columns


CONVERT_ROWS = 64


_caster = None
_caster_lock = threading.Lock()


def half_to_float(x: np.ndarray) -> np.ndarray:
    """float16 -> float32 by onnxruntime's Cast kernel, which is vectorised: numpy's own conversion
    of 100 rows at R=49, D=256 took 2.4 ms against 0.4 (bench/studies/gather_compare.py), most of a
    gather. The conversion is exact either way."""
    global _caster
    with _caster_lock:
        if _caster is None:
            import onnxruntime as ort
            from onnx import TensorProto, helper
            graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "half_to_float",
                                      [helper.make_tensor_value_info("x", TensorProto.FLOAT16, None)],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1      # no thread pool: nothing left spinning between calls
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            _caster = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return _caster.run(None, {"x": np.ascontiguousarray(x, dtype=np.float16)})[0]


def id_hash(encoded: bytes) -> int:
    """The lookup key of an id: the first 8 bytes of sha256(UTF-8 id) as a little-endian uint64."""
    return int.from_bytes(hashlib.sha256(encoded).digest()[:8], "little")


def quantize_int8(locals_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per local vector: value = q * scale, scale = max|x| / 127 (0 for a zero vector)."""
    peak = np.abs(locals_).max(axis=2)
    scale = (peak / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    q = np.clip(np.rint(locals_ / safe), -127, 127).astype(np.int8)
    return q, scale


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashedFile:
    """A file written front to back whose sha256 and size are known when it closes."""

    def __init__(self, path: str, opener):
        self.path, self.fh, self.sha, self.size = path, opener(path, "wb"), hashlib.sha256(), 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.fh.write(view)
        self.sha.update(view)
        self.size += len(view)

    def close(self) -> dict:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return {"bytes": self.size, "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass


class SegmentWriter:
    """Streams `rows` items into a new segment folder in batches; finish() returns the manifest's file table."""

    def __init__(self, folder: str, rows: int, regions: int, dim: int, locals_dtype: str, opener=open,
                 schema: dict | None = None):
        self.folder, self.rows, self.locals_dtype, self.opener = folder, rows, locals_dtype, opener
        self.written, self.hashes, self.id_end = 0, [], 0
        self.meta = ColumnBuilder(schema or {})     # metadata columns, written at finish
        self.meta_entries = None
        from .thumbnails import ThumbnailWriter
        self.thumbnails = ThumbnailWriter(folder, opener)    # written only when an item has one
        self.thumbnail_entry = None
        os.mkdir(folder)      # not makedirs: a staging area its job removed must stay removed
        self.files = {}
        try:
            for name in segment_files(locals_dtype):
                f = self.files[name] = _HashedFile(os.path.join(folder, name), opener)
                if name.endswith(".npy") and name != "id_hashes.npy":
                    f.write(npy_header(*array_spec(name, rows, regions, dim, locals_dtype)))
            self.files["id_offsets.npy"].write(np.zeros(1, "<i8"))
        except OSError as exc:
            self.abort()
            raise _write_error(folder, exc) from exc

    def write(self, globals_: np.ndarray, locals_: np.ndarray, encoded_ids: list, metas: list | None = None,
              thumbnails: list | None = None) -> None:
        """One batch: float32 globals (b, D), float32 locals (b, R, D), ids as UTF-8 bytes, metadata dicts,
        JPEG thumbnails or None (all already checked)."""
        b = len(globals_)
        if self.written + b > self.rows:
            raise DataError(f"segment {self.folder}: more rows than the {self.rows} declared")
        self.meta.add(metas if metas is not None else [{}] * b)
        lengths = np.fromiter((len(e) for e in encoded_ids), dtype=np.int64, count=b)
        offsets = self.id_end + np.cumsum(lengths)
        try:
            self.files["globals.npy"].write(np.ascontiguousarray(globals_, "<f4"))
            # Converted a slice at a time: small temporaries are reused by the allocator, while one the
            # size of the batch would be fresh pages (faulted in, then returned) on every call.
            for i in range(0, b, CONVERT_ROWS):
                part = locals_[i:i + CONVERT_ROWS]
                if self.locals_dtype == "int8":
                    q, scale = quantize_int8(part)
                    self.files["locals.npy"].write(q)
                    self.files["scales.npy"].write(scale)
                else:
                    self.files["locals.npy"].write(np.ascontiguousarray(part, LOCALS_DTYPES[self.locals_dtype]))
            self.files[ID_BYTES_FILE].write(b"".join(encoded_ids))
            self.files["id_offsets.npy"].write(offsets.astype("<i8"))
            self.thumbnails.add(thumbnails if thumbnails is not None else [None] * b)
        except OSError as exc:
            self.abort()
            raise _write_error(self.folder, exc) from exc
        self.hashes.extend(id_hash(e) for e in encoded_ids)
        self.id_end = int(offsets[-1]) if b else self.id_end
        self.written += b

    def finish(self) -> dict:
        if self.written != self.rows:
            self.abort()
            raise DataError(f"segment {self.folder}: {self.written} rows written, {self.rows} declared")
        table = np.empty((self.rows, 2), dtype="<u8")
        table[:, 0] = np.asarray(self.hashes, dtype=np.uint64)
        table[:, 1] = np.arange(self.rows, dtype=np.uint64)
        table = table[np.lexsort((table[:, 1], table[:, 0]))]
        try:
            f = self.files["id_hashes.npy"]
            f.write(npy_header(np.dtype("<u8"), (self.rows, 2)))
            f.write(table)
            out = {name: f.close() for name, f in self.files.items()}
            self.meta_entries = write_columns(self.folder, self.meta, self._write_file)
            self.thumbnail_entry = self.thumbnails.finish()
            fsync_dir(self.folder)
        except OSError as exc:
            self.abort()
            raise _write_error(self.folder, exc) from exc
        return out

    def _write_file(self, path: str, data) -> dict:
        """A metadata file: raw bytes, or an array as a fixed-header .npy; its size and sha256."""
        if isinstance(data, bytes):
            f = _HashedFile(path, self.opener)
            try:
                f.write(data)
                return f.close()
            except OSError:
                f.abort()
                raise
        return write_small_array(path, data, self.opener)

    def abort(self) -> None:
        for f in self.files.values():
            f.abort()
        self.thumbnails.abort()


def _write_error(where: str, exc: OSError) -> DataError:
    why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
    return DataError(f"writing {where} failed ({why}); the gallery is unchanged (its previous version is intact). "
                     f"Free space or fix the folder's permissions and add again")


def write_small_array(path: str, arr: np.ndarray, opener=open) -> dict:
    """A whole small array (tombstones) as a fixed-header .npy; returns its size and sha256."""
    f = _HashedFile(path, opener)
    try:
        f.write(npy_header(arr.dtype, arr.shape))
        f.write(np.ascontiguousarray(arr))
        return f.close()
    except OSError as exc:
        f.abort()
        raise _write_error(path, exc) from exc


def map_array(fh, path: str, dtype: np.dtype, shape: tuple, expect_bytes: int | None = None) -> np.ndarray:
    """Read-only memory map of a segment array open as fh (a regular file: kidrr.fileio.open_regular),
    after checking its header and size against the manifest."""
    got_dtype, got_shape = read_npy_header(fh, path)
    if got_dtype != dtype or got_shape != tuple(shape):
        raise DataError(f"{path} holds {got_dtype} {got_shape}, the manifest says {dtype} {tuple(shape)}; "
                        f"the segment is damaged, run `kidrr gallery verify`")
    need = NPY_HEADER_BYTES + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = os.fstat(fh.fileno()).st_size
    if size != need or (expect_bytes is not None and size != expect_bytes):
        raise DataError(f"{path} is {size} bytes, its header and the manifest need {need}: the segment is "
                        f"truncated or damaged; restore it or rebuild the gallery")
    if need == NPY_HEADER_BYTES:
        return np.zeros(shape, dtype)
    return np.memmap(fh, dtype=dtype, mode="r", offset=NPY_HEADER_BYTES, shape=tuple(shape))
