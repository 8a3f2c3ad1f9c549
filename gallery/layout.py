"""Gallery format 2 on disk: names, the fixed .npy header, the manifest schema and its checks.

Everything a reader trusts goes through here: the manifest is parsed into plain values with every
field's type and range checked, and each .npy segment header is parsed by hand (no pickles, no
object dtypes) and compared with what the manifest promises before any array is mapped.
The exact spec is docs/gallery.md; keep the two in step.
"""
from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from kidrr.errors import BundleError, DataError
from kidrr.fileio import open_regular

from .first_stage import check_params
from .metadata import FIELD_NAME, MAX_GALLERY_FIELDS, RESERVED, TYPES, column_files
from .thumbnails import parse_entry as parse_thumbnails

FORMAT = "kidrr-gallery/2"
MANIFEST = "manifest.json"
LOCK = "writer.lock"
STAGING_PREFIX = ".tmp-"
MAX_MANIFEST_BYTES = 64 << 20
NPY_HEADER_BYTES = 128           # every segment array's data starts at this offset (magic + v1.0 header)
MAX_ID_BYTES = 1024

LOCALS_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "int8": np.dtype("i1")}
ANN_METHODS = ("ivf", "hnsw")
SEGMENT_NAME = re.compile(r"^seg-[0-9]{6}$")
TOMBSTONE_NAME = re.compile(r"^seg-[0-9]{6}/tombstones-[0-9]{6}\.npy$")
# Names carry six digits: segment numbers stay below MAX_NEXT_SEGMENT (the manifest's next_segment
# is at most that), and tombstone files are numbered by the generation modulo TOMBSTONE_NUMBERS.
MAX_NEXT_SEGMENT = 999_999
TOMBSTONE_NUMBERS = 1_000_000
ANN_NAME = re.compile(r"^seg-[0-9]{6}/ann-(ivf|hnsw)\.faiss$")

# Files of one segment: name -> (dtype, shape from (rows, regions, dim, id_bytes)).
SEGMENT_ARRAYS = ("globals.npy", "locals.npy", "scales.npy", "id_offsets.npy", "id_hashes.npy")
ID_BYTES_FILE = "ids.utf8"


def array_spec(name: str, rows: int, regions: int, dim: int, locals_dtype: str):
    """(dtype, shape) the manifest promises for segment file `name`."""
    if name == "globals.npy":
        return np.dtype("<f4"), (rows, dim)
    if name == "locals.npy":
        return LOCALS_DTYPES[locals_dtype], (rows, regions, dim)
    if name == "scales.npy":
        return np.dtype("<f4"), (rows, regions)
    if name == "id_offsets.npy":
        return np.dtype("<i8"), (rows + 1,)
    if name == "id_hashes.npy":
        return np.dtype("<u8"), (rows, 2)
    raise DataError(f"unknown segment file {name}")


def segment_files(locals_dtype: str) -> tuple:
    arrays = [n for n in SEGMENT_ARRAYS if n != "scales.npy" or locals_dtype == "int8"]
    return tuple(arrays) + (ID_BYTES_FILE,)


# ---- the fixed-size .npy header -------------------------------------------------------------
def npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """A .npy v1.0 header padded with spaces to NPY_HEADER_BYTES (data at a fixed, 64-aligned offset)."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (np.dtype(dtype).str, repr(tuple(shape)))
    body_len = NPY_HEADER_BYTES - 10
    if len(text) + 1 > body_len:
        raise DataError(f"shape {shape} does not fit a {NPY_HEADER_BYTES}-byte .npy header")
    body = text.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


def read_npy_header(fh, path: str) -> tuple[np.dtype, tuple]:
    """(dtype, shape) of a segment array open as fh; DataError unless it is our fixed header for a plain array."""
    try:
        fh.seek(0)
        head = fh.read(NPY_HEADER_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}); the gallery is damaged, restore it or rebuild it") from exc
    if len(head) < NPY_HEADER_BYTES or head[:8] != b"\x93NUMPY\x01\x00" \
            or int.from_bytes(head[8:10], "little") != NPY_HEADER_BYTES - 10:
        raise DataError(f"{path} does not start with a kidrr .npy header (v1.0, {NPY_HEADER_BYTES} bytes); "
                        f"the segment is damaged, run `kidrr gallery verify`")
    try:
        meta = ast.literal_eval(head[10:].decode("latin1").strip())
        dtype = np.dtype(meta["descr"])
        shape = tuple(int(x) for x in meta["shape"])
        fortran = meta["fortran_order"]
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError) as exc:
        raise DataError(f"{path}: unreadable .npy header ({exc}); the segment is damaged") from exc
    if fortran is not False or dtype.hasobject or any(s < 0 for s in shape):
        raise DataError(f"{path}: the .npy header declares a layout kidrr never writes; the segment is damaged")
    return dtype, shape


# ---- the manifest ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentInfo:
    name: str
    rows: int
    files: dict            # file name -> {"bytes": int, "sha256": str}
    tombstones: dict | None   # {"file": path relative to the gallery, "count": int, "sha256": str}
    ann: dict | None          # {"file": ..., "method": "ivf"|"hnsw", "bytes": int, "sha256": str, "params": {}}
    meta: tuple | None = None  # metadata columns: ({"name", "type", "files", "distinct"?, "total"?}, ...) by name
    thumbnails: dict | None = None   # {"count": items with one, "files": {name: {"bytes", "sha256"}}} (thumbnails.py)


@dataclass(frozen=True)
class Manifest:
    bundle_id: str
    generation: int
    regions: int
    dim: int
    locals_dtype: str
    segments: tuple
    ann_method: str
    ann_min_rows: int
    next_segment: int

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def removed(self) -> int:
        return sum(s.tombstones["count"] for s in self.segments if s.tombstones)

    @property
    def live(self) -> int:
        return self.rows - self.removed

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, "bundle_id": self.bundle_id, "generation": self.generation,
               "regions": self.regions, "dim": self.dim, "globals_dtype": "fp32", "locals_dtype": self.locals_dtype,
               "rows": self.rows, "live": self.live,
               "ann": {"method": self.ann_method, "min_rows": self.ann_min_rows},
               "next_segment": self.next_segment,
               "segments": [{"name": s.name, "rows": s.rows, "files": s.files, "tombstones": s.tombstones,
                             "ann": s.ann, **({"meta": list(s.meta)} if s.meta else {}),
                             **({"thumbnails": s.thumbnails} if s.thumbnails else {})} for s in self.segments]}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _bad(path, what):
    return DataError(f"{path}: {what}; the manifest is damaged or was edited (restore it, or rebuild the gallery)")


def _int(doc, key, path, low=0, high=1 << 62):
    v = doc.get(key) if isinstance(doc, dict) else None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise _bad(path, f"field {key!r} must be an integer in {low}..{high}, got {v!r}")
    return v


def _str(doc, key, path, pattern=None):
    v = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(v, str) or (pattern is not None and not re.fullmatch(pattern, v)):
        raise _bad(path, f"field {key!r} must be a string{' matching ' + pattern if pattern else ''}, got {v!r}")
    return v


def _file_entry(doc, path, what):
    if not isinstance(doc, dict):
        raise _bad(path, f"{what} must be an object, got {type(doc).__name__}")
    return {"bytes": _int(doc, "bytes", path, 0, 1 << 50), "sha256": _str(doc, "sha256", path, r"[0-9a-f]{64}")}


def parse_manifest(raw: bytes, path: str) -> Manifest:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad(path, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _bad(path, f"the manifest must be a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("kidrr-gallery/"):
            raise DataError(f"{path}: gallery format {fmt!r} is not one this kidrr reads ({FORMAT}); "
                            f"use the kidrr version that wrote it, or rebuild the gallery")
        raise _bad(path, f"'format' is {fmt!r}, not {FORMAT!r}")
    bundle_id = _str(doc, "bundle_id", path, r"[\x21-\x7e]{1,128}")
    regions, dim = _int(doc, "regions", path, 1, 1 << 20), _int(doc, "dim", path, 1, 1 << 20)
    locals_dtype = _str(doc, "locals_dtype", path)
    if locals_dtype not in LOCALS_DTYPES:
        raise _bad(path, f"locals_dtype {locals_dtype!r} is not one of {sorted(LOCALS_DTYPES)}")
    if doc.get("globals_dtype") != "fp32":
        raise _bad(path, f"globals_dtype must be 'fp32', got {doc.get('globals_dtype')!r}")
    ann = doc.get("ann")
    method = _str(ann, "method", path)
    if method not in ANN_METHODS:
        raise _bad(path, f"ann.method {method!r} is not one of {ANN_METHODS}")
    min_rows = _int(ann, "min_rows", path, 1)
    next_segment = _int(doc, "next_segment", path, 0, MAX_NEXT_SEGMENT)
    segs = doc.get("segments")
    if not isinstance(segs, list):
        raise _bad(path, "'segments' must be a list")
    segments, seen = [], set()
    for s in segs:
        name = _str(s, "name", path, SEGMENT_NAME.pattern[1:-1])
        if name in seen or int(name[4:]) >= next_segment:
            raise _bad(path, f"segment {name} is listed twice or not below next_segment")
        seen.add(name)
        rows = _int(s, "rows", path, 1, 1 << 40)
        files = s.get("files")
        expected = set(segment_files(locals_dtype))
        if not isinstance(files, dict) or set(files) != expected:
            raise _bad(path, f"segment {name} must list exactly the files {sorted(expected)}")
        files = {k: _file_entry(v, path, f"{name}/{k}") for k, v in files.items()}
        tomb = s.get("tombstones")
        if tomb is not None:
            tomb = {"file": _str(tomb, "file", path, TOMBSTONE_NAME.pattern[1:-1]),
                    "count": _int(tomb, "count", path, 1, rows), **_file_entry(tomb, path, f"{name} tombstones")}
            if not tomb["file"].startswith(name + "/"):
                raise _bad(path, f"segment {name}'s tombstones live in another segment's folder")
        ann_entry = s.get("ann")
        if ann_entry is not None:
            file = _str(ann_entry, "file", path, ANN_NAME.pattern[1:-1])
            if not file.startswith(name + "/") or _str(ann_entry, "method", path) not in ANN_METHODS \
                    or not file.endswith(f"ann-{ann_entry['method']}.faiss"):
                raise _bad(path, f"segment {name}'s ANN entry names another segment or method")
            params = ann_entry.get("params")
            wrong = check_params(ann_entry["method"], params)
            if wrong:
                raise _bad(path, f"segment {name}'s ANN entry: {wrong}")
            ann_entry = {"file": file, "method": ann_entry["method"], "params": dict(params),
                         **_file_entry(ann_entry, path, f"{name} ANN index")}
        thumbs = parse_thumbnails(s.get("thumbnails"), name, rows, lambda what: _bad(path, what))
        if thumbs is not None:
            thumbs["files"] = {k: _file_entry(v, path, f"{name}/{k}") for k, v in sorted(thumbs["files"].items())}
        segments.append(SegmentInfo(name, rows, files, tomb, ann_entry, _meta_entries(s.get("meta"), name, rows, path),
                                    thumbs))
    _check_field_types(segments, path)
    m = Manifest(bundle_id, _int(doc, "generation", path, 0), regions, dim, locals_dtype, tuple(segments),
                 method, min_rows, next_segment)
    # Derived counts are stored for people and C readers; they must agree with the segments.
    if doc.get("rows") != m.rows or doc.get("live") != m.live:
        raise _bad(path, f"rows/live ({doc.get('rows')!r}/{doc.get('live')!r}) disagree with the segments "
                         f"({m.rows}/{m.live})")
    return m


def _meta_entries(doc, name: str, rows: int, path: str):
    """A segment's metadata columns, checked: valid distinct field names in order, known types, exactly
    the files of each type with sizes and hashes, dictionary and list sizes in range."""
    if doc is None:
        return None
    if not isinstance(doc, list) or not 1 <= len(doc) <= MAX_GALLERY_FIELDS:
        raise _bad(path, f"segment {name}'s meta must be a list of 1..{MAX_GALLERY_FIELDS} columns")
    out, previous = [], None
    for i, col in enumerate(doc):
        field = _str(col, "name", path)
        type_ = _str(col, "type", path)
        if not FIELD_NAME.match(field) or field in RESERVED or (previous is not None and field <= previous):
            raise _bad(path, f"segment {name}'s metadata fields must be valid names in ascending order, got {field!r}")
        if type_ not in TYPES:
            raise _bad(path, f"segment {name}'s metadata field {field!r} has type {type_!r}, not one of {TYPES}")
        files = col.get("files")
        want = set(column_files(i, type_))
        if not isinstance(files, dict) or set(files) != want:
            raise _bad(path, f"segment {name}'s metadata field {field!r} must list exactly the files {sorted(want)}")
        entry = {"name": field, "type": type_,
                 "files": {k: _file_entry(v, path, f"{name}/{k}") for k, v in sorted(files.items())}}
        if type_ in ("string", "strings"):
            entry["distinct"] = _int(col, "distinct", path, 0, 1 << 40)
        if type_ == "strings":
            entry["total"] = _int(col, "total", path, 0, 1 << 40)
        extra = set(col) - {"name", "type", "files", "distinct", "total"}
        if extra or (type_ not in ("string", "strings") and ("distinct" in col or "total" in col)):
            raise _bad(path, f"segment {name}'s metadata field {field!r} has unexpected keys")
        out.append(entry)
        previous = field
    return tuple(out)


def _check_field_types(segments, path: str) -> None:
    """A metadata field has one type in the whole gallery: filters compare it one way."""
    seen = {}
    for s in segments:
        for col in s.meta or ():
            if seen.setdefault(col["name"], col["type"]) != col["type"]:
                raise _bad(path, f"metadata field {col['name']!r} is a {seen[col['name']]} in one segment and a "
                                 f"{col['type']} in {s.name}")


def field_schema(manifest: "Manifest") -> dict:
    """Metadata field -> type over the gallery's segments."""
    return {col["name"]: col["type"] for s in manifest.segments for col in (s.meta or ())}


def read_manifest(folder: str) -> tuple[Manifest, bytes]:
    path = os.path.join(folder, MANIFEST)
    if os.path.isfile(folder):
        raise DataError(f"{folder} is a file, not a gallery folder; a v1 .npz gallery loads with Gallery.load "
                        f"or converts with `kidrr gallery convert`")
    if not os.path.isdir(folder):
        raise DataError(f"gallery folder {folder} does not exist; create one with `kidrr gallery create`")
    try:
        with open_regular(path, what=f"gallery {folder}") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"{folder} is not a kidrr gallery ({MANIFEST} is missing); create one with "
                        f"`kidrr gallery create`") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror})") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _bad(path, f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    return parse_manifest(raw, path), raw


def check_bundle(manifest: Manifest, bundle_id: str | None, folder: str) -> None:
    if bundle_id is not None and manifest.bundle_id != bundle_id:
        raise BundleError(f"gallery {folder} was encoded by another bundle ({manifest.bundle_id[:12]}...), not this "
                          f"one ({bundle_id[:12]}...); re-encode the images with this bundle into a new gallery")
