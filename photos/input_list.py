"""`kidrr index --list FILE`: the photos to index named by a file instead of found in a folder.

FILE is one of
  - a text file: one path a line (UTF-8; blank lines ignored);
  - a CSV file (`.csv`) with a `path` column; its other columns are item metadata, read and checked
    exactly as a `--metadata` sidecar (kidrr.gallery.sidecar);
  - a Parquet file (`.parquet`, needs pyarrow) with a string `path` column; other columns are item
    metadata (dates and times become ISO strings), checked the same way.
Relative paths are relative to FILE's folder; absolute paths are taken as they are. Ids are the
paths relative to the root: `--images` when given, else FILE's folder (a fixed root keeps ids stable
when a later list adds photos from other folders, so `--append` works). A path outside the root, a
missing path or a second mention of the same photo is reported and skipped; links and non-regular
files then go through the decoder exactly as in folder mode (a link to a photo is indexed under the
link's path, anything that is not a regular file is reported).
"""
from __future__ import annotations

import datetime as _dt
import os

from kidrr.errors import InputError
from kidrr.fileio import open_regular

MAX_LIST_BYTES = 1 << 30
PATH_COLUMN = "path"


def read_input_list(list_file: str, root: str | None, report) -> tuple[str, list, dict | None]:
    """(root, ids in list order, {id: metadata} or None when the list carries no metadata columns)."""
    try:
        size = os.path.getsize(list_file)
    except OSError as exc:
        raise InputError(f"cannot read --list {list_file} ({exc.strerror or exc})") from None
    if size > MAX_LIST_BYTES:
        raise InputError(f"--list {list_file} is larger than {MAX_LIST_BYTES >> 20} MiB; split it into several jobs")
    base = os.path.dirname(os.path.abspath(list_file))
    root = os.path.abspath(root) if root is not None else base
    if not os.path.isdir(root):
        raise InputError(f"--images {root} (the root the listed paths are relative to) is not a folder")
    lower = list_file.lower()
    if lower.endswith(".parquet"):
        entries = _parquet(list_file)
    else:
        text = _text(list_file)
        if lower.endswith(".csv"):
            from kidrr.gallery.sidecar import _csv
            entries = list(_csv(text, list_file, key=PATH_COLUMN).items())
        else:
            entries = [(line.strip(), {}) for line in text.splitlines() if line.strip()]
    if not entries:
        raise InputError(f"--list {list_file} names no photos")
    ids, meta = [], {}
    for raw, fields in entries:
        path = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(base, raw))
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
            report.add(raw, "outside-folder", f"{path} is not inside the root {root} (ids are paths relative to "
                                              f"it); pass --images with a folder that holds every listed photo")
        elif rel in meta:
            report.add(rel, "duplicate", "the list names this photo again; kept the first")
        elif not os.path.lexists(path):
            report.add(rel, "missing", f"the list names it but {path} does not exist")
        else:
            ids.append(rel)
            meta[rel] = fields
    return root, ids, (meta if any(meta.values()) else None)


def _text(list_file: str) -> str:
    with open_regular(list_file, follow_symlinks=True, what="the --list file") as fh:
        raw = fh.read(MAX_LIST_BYTES + 1)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"--list {list_file} is not UTF-8 (line {line}); save it as UTF-8") from None


def _parquet(list_file: str) -> list:
    from kidrr.gallery.metadata import check_item
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("a Parquet --list needs pyarrow: pip install 'kidrr[ray]' (or pip install pyarrow), "
                         "or give a CSV or text list") from None
    try:
        with open_regular(list_file, follow_symlinks=True, what="the --list file") as fh:
            table = pq.read_table(fh)
    except InputError:
        raise
    except Exception as exc:      # pyarrow raises its own error types for a damaged file
        raise InputError(f"--list {list_file} is not a readable Parquet file ({str(exc)[:200]})") from None
    if PATH_COLUMN not in table.column_names:
        raise InputError(f"--list {list_file}: no `{PATH_COLUMN}` column (columns: {table.column_names[:10]})")
    paths = table.column(PATH_COLUMN).to_pylist()
    others = [c for c in table.column_names if c != PATH_COLUMN]
    columns = {c: table.column(c).to_pylist() for c in others}
    entries, seen = [], set()
    for i, raw in enumerate(paths):
        where = f"{list_file} row {i + 1}"
        if not isinstance(raw, str) or not raw.strip():
            raise InputError(f"{where}: `{PATH_COLUMN}` must be a non-empty string (the photo's path)")
        if raw in seen:
            raise InputError(f"{where}: {raw!r} is listed twice")
        seen.add(raw)
        fields = {c: _plain(columns[c][i]) for c in others}
        entries.append((raw.strip(), check_item(fields, where)))
    return entries


def _plain(value):
    """Parquet dates and times as the ISO strings kidrr's metadata recognises; everything else as read."""
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return value
