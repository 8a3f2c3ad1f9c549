"""Metadata sidecar files: CSV with a `file` column, or JSON Lines objects with a `file` key.

    file,album,year           {"file": "trip/a.jpg", "album": "beach", "tags": ["sea", "sun"]}
    trip/a.jpg,beach,2019     {"file": "trip/b.jpg", "year": 2019}

CSV cells are text; a column whose every non-empty cell is a number is a number column, one of only
true/false a boolean column (lists need JSON Lines). Empty cells are absent fields. Dates are
recognised in both forms (ISO strings, kidrr.gallery.metadata). Values are checked as any
metadata is (bounded, typed); the file must be UTF-8.
"""
from __future__ import annotations

import csv
import io
import json
import re

from kidrr.errors import InputError
from kidrr.fileio import open_regular

from .metadata import check_item

MAX_SIDECAR_BYTES = 1 << 30
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def read_sidecar(path: str) -> dict:
    """{file: checked metadata dict}; InputError naming the line for anything unusable."""
    try:
        with open_regular(path, follow_symlinks=True, what="the metadata file") as fh:
            raw = fh.read(MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"metadata file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read metadata file {path} ({exc.strerror or exc})") from exc
    if len(raw) > MAX_SIDECAR_BYTES:
        raise InputError(f"metadata file {path} is larger than {MAX_SIDECAR_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"metadata file {path} is not UTF-8 (line {line}); save it as UTF-8") from None
    if path.lower().endswith(".csv"):
        return _csv(text, path)
    if path.lower().endswith((".jsonl", ".ndjson")):
        return _jsonl(text, path)
    raise InputError(f"metadata file {path}: name it .csv (a `file` column) or .jsonl (objects with a `file` key)")


def _add(out: dict, name, meta, where: str, key: str = "file") -> None:
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: `{key}` must be a non-empty string (the photo's path in the folder)")
    if name in out:
        raise InputError(f"{where}: {name!r} is listed twice")
    out[name] = check_item(meta, where)


def _jsonl(text: str, path: str) -> dict:
    out: dict = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{where}: not a JSON object ({str(exc)[:80]})") from None
        if not isinstance(doc, dict) or "file" not in doc:
            raise InputError(f"{where}: each line is a JSON object with a \"file\" key")
        name = doc.pop("file")
        _add(out, name, doc, where)
    return out


def _csv(text: str, path: str, key: str = "file") -> dict:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows or key not in [h.strip() for h in rows[0]]:
        raise InputError(f"{path}: the first line must name the columns, one of them `{key}`")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise InputError(f"{path}: a column is named twice in the header")
    for number, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise InputError(f"{path} line {number}: {len(row)} cells, the header has {len(header)}")
    body = rows[1:]
    convert = {}
    for c, name in enumerate(header):
        cells = [r[c].strip() for r in body if r[c].strip()]
        if cells and all(NUMBER.match(x) for x in cells):
            convert[name] = lambda x: float(x) if any(ch in x for ch in ".eE") else int(x)
        elif cells and all(x.lower() in ("true", "false") for x in cells):
            convert[name] = lambda x: x.lower() == "true"
        else:
            convert[name] = lambda x: x
    file_col = header.index(key)
    out: dict = {}
    for number, row in enumerate(body, 2):
        meta = {name: convert[name](cell.strip()) for c, (name, cell) in enumerate(zip(header, row))
                if c != file_col and cell.strip()}
        _add(out, row[file_col].strip(), meta, f"{path} line {number}", key)
    return out


def metadata_for(names: list, sidecar: dict | None, given: list | None = None) -> list | None:
    """Per name: the recorded metadata (given, e.g. from EXIF) updated by the sidecar's entry."""
    if sidecar is None and given is None:
        return None
    out = []
    for i, name in enumerate(names):
        meta = dict(given[i]) if given is not None else {}
        meta.update((sidecar or {}).get(name, {}))
        out.append(meta)
    return out


def check_names(sidecar: dict, known, path: str, what: str) -> None:
    """InputError when the sidecar names files that are not among the known ones (a typo would
    otherwise lose that file's metadata silently)."""
    unknown = [n for n in sidecar if n not in known]
    if unknown:
        raise InputError(f"metadata file {path} names {len(unknown)} file(s) that are not {what}: "
                         f"{unknown[:5]}; fix the paths (relative to the folder) or remove those lines")
