"""Item metadata: small JSON objects checked as hostile input, stored column by column per segment.

An item's metadata is a flat JSON object of at most MAX_ITEM_BYTES: strings, finite numbers,
booleans, lists of strings, and dates (ISO-8601 strings such as "2019-07-04" or
"2019-07-04T10:30:00", no time zone: EXIF has none). Each field becomes one column per segment,
so a filter compares arrays and never parses JSON per item at query time:

    string   codes int32 (rows,), -1 absent, into a dictionary (UTF-8 blob + int64 offsets)
    strings  offsets int64 (rows + 1,) into codes int32 (total,), into a dictionary as above
    number   values float64 (rows,), NaN absent
    date     values float64 (rows,): seconds since 1970-01-01T00:00:00 (naive), NaN absent
    bool     values int8 (rows,), -1 absent, 0 / 1

A field has one type in the whole gallery (the manifest parser refuses segments that disagree).
The files are part of the segment: named by the manifest with their sha256, written before the
manifest switch like every other segment file, checked by verify. Spec: docs/gallery.md.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re

import numpy as np

from kidrr.errors import DataError, InputError

MAX_ITEM_BYTES = 4096          # one item's metadata as compact JSON
MAX_FIELDS = 64                # per item
MAX_GALLERY_FIELDS = 256       # distinct fields in one gallery (the manifest lists each per segment)
MAX_STRING_BYTES = 1024
MAX_LIST_ITEMS = 64
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
RESERVED = {"and", "or", "not"}     # the filter language's words
TYPES = ("string", "strings", "number", "date", "bool")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?$")
EPOCH = dt.datetime(1970, 1, 1)


def column_files(index: int, type_: str) -> tuple:
    """File names of field number `index` of a segment (its position in the segment's sorted field list)."""
    p = f"meta-{index:03d}-"
    if type_ == "string":
        return (p + "codes.npy", p + "dict.utf8", p + "dict_offsets.npy")
    if type_ == "strings":
        return (p + "offsets.npy", p + "codes.npy", p + "dict.utf8", p + "dict_offsets.npy")
    return (p + "values.npy",)


def column_spec(name: str, type_: str, rows: int, distinct: int, total: int):
    """(dtype, shape) of a column's .npy file `name` (a file of column_files)."""
    kind = name.split("-", 2)[2]
    if kind == "codes.npy":
        return np.dtype("<i4"), (rows if type_ == "string" else total,)
    if kind == "offsets.npy":
        return np.dtype("<i8"), (rows + 1,)
    if kind == "dict_offsets.npy":
        return np.dtype("<i8"), (distinct + 1,)
    return (np.dtype("|i1") if type_ == "bool" else np.dtype("<f8")), (rows,)


def check_field_name(name, where: str) -> str:
    if not isinstance(name, str) or not FIELD_NAME.match(name) or name in RESERVED:
        raise InputError(f"{where}: field name {str(name)[:80]!r} must be 1-64 characters (letters, digits, _ . -, "
                         f"starting with a letter or _), and not {sorted(RESERVED)}")
    return name


def parse_date(text: str) -> float | None:
    """Seconds since 1970-01-01 (naive) of an ISO date or date-time string; None if it is not one."""
    if not DATE.match(text):
        return None
    try:
        return (dt.datetime.fromisoformat(text.replace(" ", "T")) - EPOCH).total_seconds()
    except ValueError:
        return None


def format_date(seconds: float) -> str:
    t = EPOCH + dt.timedelta(seconds=float(seconds))
    return t.strftime("%Y-%m-%d") if t.time() == dt.time() else t.isoformat(timespec="seconds")


def check_item(meta, where: str) -> dict:
    """One item's metadata, checked: a flat object of bounded size with values of the allowed types.
    Returns it without None values (None means absent)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InputError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    if len(meta) > MAX_FIELDS:
        raise InputError(f"{where}: {len(meta)} metadata fields, at most {MAX_FIELDS}")
    out = {}
    for key, value in meta.items():
        check_field_name(key, where)
        if value is None:
            continue
        if isinstance(value, bool):
            pass
        elif isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > 1e300:
                raise InputError(f"{where}: field {key!r} is {value!r}; numbers must be finite")
            value = float(value) if isinstance(value, float) else int(value)
        elif isinstance(value, str):
            _check_string(value, key, where)
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST_ITEMS or not all(isinstance(v, str) for v in value):
                raise InputError(f"{where}: field {key!r} must be a list of at most {MAX_LIST_ITEMS} strings")
            for v in value:
                _check_string(v, key, where)
            value = list(dict.fromkeys(value))       # a tag listed twice is the tag once
            if not value:
                continue
        else:
            raise InputError(f"{where}: field {key!r} holds a {type(value).__name__}; metadata values are strings, "
                             f"numbers, booleans or lists of strings (no nested objects)")
        out[key] = value
    size = len(json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_ITEM_BYTES:
        raise InputError(f"{where}: metadata is {size} bytes as JSON, at most {MAX_ITEM_BYTES}")
    return out


def _check_string(value: str, key: str, where: str) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(f"{where}: field {key!r} is not valid Unicode (lone surrogate)") from None
    if size > MAX_STRING_BYTES or "\0" in value:
        raise InputError(f"{where}: field {key!r} must be a string of at most {MAX_STRING_BYTES} UTF-8 bytes "
                         f"without NUL")


def value_type(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "strings"
    return "date" if parse_date(value) is not None else "string"


def field_types(values: list, known: str | None, field: str) -> str:
    """The type of a field from its (non-None) values in one segment and its type in the gallery."""
    kinds = {value_type(v) for v in values}
    if kinds <= {"date", "string"} and kinds:
        # A field is a date when every value is one (and the gallery agrees); otherwise text.
        kinds = {"date"} if kinds == {"date"} and known in (None, "date") else {"string"}
    if len(kinds) > 1:
        raise InputError(f"metadata field {field!r} mixes types {sorted(kinds)}; one field has one type")
    kind = kinds.pop() if kinds else known
    if known is not None and kind != known:
        raise InputError(f"metadata field {field!r} is a {known} in this gallery; these items give a {kind}")
    return kind


class ColumnBuilder:
    """Collects one segment's metadata a batch at a time; write() stores the columns at finish."""

    def __init__(self, schema: dict):
        self.schema = dict(schema)        # field -> type already in the gallery
        self.rows = 0
        self.values: dict = {}            # field -> {row: value}

    def add(self, metas: list) -> None:
        for i, meta in enumerate(metas):
            for key, value in meta.items():
                self.values.setdefault(key, {})[self.rows + i] = value
        self.rows += len(metas)
        if len(set(self.schema) | set(self.values)) > MAX_GALLERY_FIELDS:
            raise InputError(f"more than {MAX_GALLERY_FIELDS} distinct metadata fields in one gallery")

    def columns(self) -> list:
        """[(field, type, {file name: array or bytes}, distinct, total)] sorted by field name."""
        out = []
        for index, field in enumerate(sorted(self.values)):
            given = self.values[field]
            type_ = field_types(list(given.values()), self.schema.get(field), field)
            out.append((field, type_, *self._arrays(index, type_, given)))
        return out

    def _arrays(self, index: int, type_: str, given: dict):
        names = column_files(index, type_)
        rows = np.fromiter(given.keys(), dtype=np.int64, count=len(given))
        if type_ in ("number", "date", "bool"):
            if type_ == "bool":
                col = np.full(self.rows, -1, dtype="i1")
                col[rows] = [int(v) for v in given.values()]
            else:
                col = np.full(self.rows, np.nan, dtype="<f8")
                col[rows] = [parse_date(v) if type_ == "date" else float(v) for v in given.values()]
            return {names[0]: col}, 0, 0
        lists = [[v] if type_ == "string" else v for v in given.values()]
        words = sorted({w for values in lists for w in values})
        code = {w: i for i, w in enumerate(words)}
        encoded = [w.encode("utf-8") for w in words]
        dict_offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded], dtype=np.int64)]).astype("<i8")
        files = {names[-2]: b"".join(encoded), names[-1]: dict_offsets}
        if type_ == "string":
            codes = np.full(self.rows, -1, dtype="<i4")
            codes[rows] = [code[v[0]] for v in lists]
            files[names[0]] = codes
            return files, len(words), 0
        counts = np.zeros(self.rows, dtype=np.int64)
        counts[rows] = [len(v) for v in lists]
        flat = np.empty(int(counts.sum()), dtype="<i4")
        at = np.concatenate([[0], np.cumsum(counts)])
        for r, values in zip(rows.tolist(), lists):
            flat[at[r]:at[r] + len(values)] = [code[w] for w in values]
        files[names[0]] = at.astype("<i8")
        files[names[1]] = flat
        return files, len(words), len(flat)


class Column:
    """One field of one segment, memory-mapped; decoded lazily and checked on first use."""

    def __init__(self, field: str, type_: str, rows: int, arrays: dict, label: str):
        self.field, self.type, self.rows, self.label = field, type_, rows, label
        self.arrays = arrays             # kind ("codes", "offsets", "dict", "dict_offsets", "values") -> map
        self._dict = None

    def words(self) -> dict:
        """The dictionary as {UTF-8 bytes: code}, built (and checked) once per snapshot."""
        if self._dict is None:
            blob, offs = bytes(self.arrays["dict"]), np.asarray(self.arrays["dict_offsets"])
            if len(offs) == 0 or offs[0] != 0 or offs[-1] != len(blob) or (np.diff(offs) < 0).any():
                raise DataError(f"{self.label}: dictionary offsets are damaged; run `kidrr gallery verify`")
            bounds = offs.tolist()
            words = {blob[a:b]: i for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}
            codes = np.asarray(self.arrays["codes"])
            if len(words) != len(bounds) - 1 or (len(codes) and (codes.min() < -1 or codes.max() >= len(words)
                                                                  or (self.type == "strings" and codes.min() < 0))):
                raise DataError(f"{self.label}: dictionary or codes are damaged; run `kidrr gallery verify`")
            if self.type == "strings":
                o = np.asarray(self.arrays["offsets"])
                if o[0] != 0 or o[-1] != len(codes) or (np.diff(o) < 0).any():
                    raise DataError(f"{self.label}: list offsets are damaged; run `kidrr gallery verify`")
            self._dict = words
        return self._dict

    def text(self, code: int) -> str:
        offs = self.arrays["dict_offsets"]
        raw = bytes(self.arrays["dict"][int(offs[code]):int(offs[code + 1])])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{self.label}: a dictionary entry is not UTF-8; run `kidrr gallery verify`") from None

    def value(self, row: int):
        """The field's value at a segment row, or None when absent."""
        if self.type in ("string", "strings"):
            self.words()
            if self.type == "string":
                c = int(self.arrays["codes"][row])
                return None if c < 0 else self.text(c)
            o = self.arrays["offsets"]
            codes = self.arrays["codes"][int(o[row]):int(o[row + 1])]
            return [self.text(int(c)) for c in codes] or None
        v = self.arrays["values"][row]
        if self.type == "bool":
            return None if v < 0 else bool(v)
        if np.isnan(v):
            return None
        if self.type == "date":
            return format_date(v)
        return int(v) if float(v).is_integer() and abs(v) < 2 ** 53 else float(v)

    def problems(self) -> list:
        """What verify reports: damaged structure, text that is not UTF-8, values out of their domain."""
        try:
            if self.type in ("string", "strings"):
                words = self.words()
                for raw in words:
                    raw.decode("utf-8")
            else:
                v = np.asarray(self.arrays["values"])
                if self.type == "bool" and len(v) and (v.min() < -1 or v.max() > 1):
                    return [f"{self.label}: booleans outside -1/0/1"]
                if self.type != "bool" and np.isinf(v).any():
                    return [f"{self.label}: an infinite value"]
        except DataError as exc:
            return [str(exc)]
        except UnicodeDecodeError:
            return [f"{self.label}: a dictionary entry is not UTF-8"]
        return []


def write_columns(folder: str, builder: ColumnBuilder, write_file) -> list | None:
    """Write a segment's metadata columns into its staging folder: the manifest's "meta" list, or None
    when no item has metadata. write_file(path, array_or_bytes) -> {"bytes", "sha256"}."""
    columns = builder.columns()
    if not columns:
        return None
    entries = []
    for field, type_, files, distinct, total in columns:
        table = {name: write_file(os.path.join(folder, name), data) for name, data in sorted(files.items())}
        entry = {"name": field, "type": type_, "files": table}
        if type_ in ("string", "strings"):
            entry["distinct"] = distinct
        if type_ == "strings":
            entry["total"] = total
        entries.append(entry)
    return entries
