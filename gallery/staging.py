"""Staged segments: finished segments written by many workers, adopted into a gallery by its one writer.

A distributed job (kidrr.photos.ray_index) cannot have every worker take the gallery's writer lock.
Instead each worker writes whole segments with the same code the local writer uses (write_segment)
into `<gallery>/staged/`, first as `.tmp-<key>-<random>/`, then renamed to `<key>/` once every file
and its record `staged.json` are fsynced: a folder named by a bare key is complete. The key is a
hash of the bundle and the photo ids the segment was made from, so a block that Ray retries after a
worker died lands on the same name and is written (and committed) once. The one writer (the job's
driver, holding the lock) checks a staged segment's files against its record, checks its ids are
new, and adopts it with GalleryWriter.adopt (a rename into `seg-NNNNNN` and one manifest swap).
Everything here deletes only names it makes: `staged/`, `<key>/`, `.tmp-<key>-*`, `probe-*`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid

import numpy as np

from kidrr.errors import DataError, InputError
from kidrr.fileio import open_regular, sha256_file, write_atomic

from .layout import NPY_HEADER_BYTES, Manifest, SegmentInfo, parse_manifest
from .segment_io import fsync_dir

STAGED = "staged"
RECORD = "staged.json"
KEY = re.compile(r"^[0-9a-f]{32}$")
TMP = re.compile(r"^\.tmp-[0-9a-f]{32}-[0-9a-f]{8}$")
PROBE = re.compile(r"^probe-[0-9a-f]{16}(-[0-9a-f]{1,64})?$")
MAX_RECORD_BYTES = 16 << 20


def staged_folder(gallery: str) -> str:
    return os.path.join(gallery, STAGED)


def content_key(bundle_id: str, ids) -> str:
    """The name of the segment made from these photo ids by this bundle: the same block retried -> the
    same key; any other block -> another key."""
    h = hashlib.sha256(bundle_id.encode() + b"\0")
    for name in sorted(ids):
        h.update(name.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:32]


def make_staged_folder(gallery: str) -> str:
    """`<gallery>/staged`, made if missing; refused if it is a link or not a folder (kidrr owns it)."""
    path = staged_folder(gallery)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path} exists and is not a folder (a link or a file); kidrr stages segments "
                             f"there: move it away, then run again") from None
    return path


def stage_segment(gallery: str, key: str, manifest: Manifest, rows: int, batches, record: dict) -> bool:
    """Worker side: write one segment of `rows` items as staged/<key>. False when a segment of that key is
    already staged (a retried block): nothing is written twice."""
    from .writer import write_segment
    folder = staged_folder(gallery)
    final = os.path.join(folder, key)
    if os.path.isfile(os.path.join(final, RECORD)):
        return False
    tmp = os.path.join(folder, f".tmp-{key}-{uuid.uuid4().hex[:8]}")
    try:
        info = write_segment(tmp, "seg-000000", manifest, rows, batches)   # a full disk: no half segment left
        doc = dict(record, key=key, bundle_id=manifest.bundle_id, segment=_segment_doc(info))
        write_atomic(os.path.join(tmp, RECORD), json.dumps(doc, sort_keys=True).encode())
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if os.path.isfile(os.path.join(final, RECORD)):   # another attempt of this block got there first
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            raise
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _segment_doc(info: SegmentInfo) -> dict:
    return {"name": info.name, "rows": info.rows, "files": info.files, "tombstones": None, "ann": info.ann,
            **({"meta": list(info.meta)} if info.meta else {}),
            **({"thumbnails": info.thumbnails} if info.thumbnails else {})}


def staged_keys(gallery: str) -> list:
    """Keys of the complete staged segments (sorted: a resumed job adopts them in a stable order)."""
    folder = staged_folder(gallery)
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if KEY.match(n) and os.path.isdir(os.path.join(folder, n))
                  and not os.path.islink(os.path.join(folder, n)))


def read_staged(gallery: str, key: str, manifest: Manifest) -> tuple[SegmentInfo, list, dict]:
    """(SegmentInfo, ids, record) of staged/<key>, every file checked against its record (size and
    sha256) and the record against the gallery's manifest; DataError saying what is wrong otherwise."""
    folder = os.path.join(staged_folder(gallery), key)
    path = os.path.join(folder, RECORD)
    try:
        with open_regular(path, what=f"staged segment {folder}") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_RECORD_BYTES:
                raise DataError(f"{path} is larger than any staged record")
            record = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read ({exc})") from exc
    if not isinstance(record, dict) or record.get("key") != key or record.get("bundle_id") != manifest.bundle_id:
        raise DataError(f"{path} is not the record of segment {key} of this gallery's bundle")
    # The staged segment checked exactly as a committed one would be: the manifest parser on the gallery's
    # manifest with this segment appended (field types across segments included).
    seg = record.get("segment")
    if not isinstance(seg, dict) or not isinstance(seg.get("rows"), int):
        raise DataError(f"{path} does not describe a segment")
    name = f"seg-{manifest.next_segment:06d}"      # checked under the name it would be committed as
    seg = dict(seg, name=name)
    if isinstance(seg.get("ann"), dict) and isinstance(seg["ann"].get("file"), str):
        seg["ann"] = dict(seg["ann"], file=f"{name}/{seg['ann']['file'].rpartition('/')[2]}")
    doc = json.loads(manifest.to_json())
    doc["segments"].append(seg)
    doc["next_segment"] = manifest.next_segment + 1
    doc["rows"], doc["live"] = manifest.rows + seg["rows"], manifest.live + seg["rows"]
    try:
        info = parse_manifest(json.dumps(doc).encode(), path).segments[-1]
    except DataError as exc:
        raise DataError(f"{path} does not describe a segment of this gallery ({exc})") from exc
    entries = dict(info.files)
    for col in info.meta or ():
        entries.update(col["files"])
    if info.thumbnails:
        entries.update(info.thumbnails["files"])
    if info.ann:
        entries[os.path.basename(info.ann["file"])] = info.ann
    for rel, entry in entries.items():
        p = os.path.join(folder, rel)
        if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) != entry["bytes"] \
                or sha256_file(p) != entry["sha256"]:
            raise DataError(f"staged segment {folder}: {rel} is missing or differs from its record")
    return info, _read_ids(folder, info.rows), record


def _read_ids(folder: str, rows: int) -> list:
    offsets = np.fromfile(os.path.join(folder, "id_offsets.npy"), dtype="<i8", offset=NPY_HEADER_BYTES)
    with open(os.path.join(folder, "ids.utf8"), "rb") as fh:
        data = fh.read()
    if len(offsets) != rows + 1 or offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) <= 0):
        raise DataError(f"staged segment {folder}: its id table does not match its ids")
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets[:-1], offsets[1:])]


def remove_staged(gallery: str, key: str) -> None:
    if KEY.match(key):
        shutil.rmtree(os.path.join(staged_folder(gallery), key), ignore_errors=True)


def adopt_staged(writer, keys, log=None) -> dict:
    """Driver side, holding the writer: adopt the staged segments `keys` with one manifest swap. A
    segment whose photos are all in the gallery already is a double (removed); one that fails its
    check is removed (its photos were not committed: a rerun encodes them again). Returns
    {"adopted": [(key, segment name, rows)], "doubles": [key], "broken": [(key, why)]}."""
    gallery = writer.folder
    out = {"adopted": [], "doubles": [], "broken": []}
    current = writer._open_checked() if writer.manifest.segments else None
    take, seen = [], set()
    for key in dict.fromkeys(keys):     # each key once, in order
        try:
            info, ids, _ = read_staged(gallery, key, writer.manifest)
        except DataError as exc:
            out["broken"].append((key, str(exc)))
            remove_staged(gallery, key)
            continue
        found = set(current.find(ids)) if current is not None else set()
        found |= seen.intersection(ids)
        if len(found) == len(ids):
            out["doubles"].append(key)
            remove_staged(gallery, key)
            continue
        if found:
            raise DataError(f"staged segment {key} holds {len(found)} photo(s) already in gallery {gallery} and "
                            f"{len(ids) - len(found)} new one(s); the gallery is unchanged. Remove "
                            f"{staged_folder(gallery)} and index again")
        seen.update(ids)
        take.append((key, info))
    if take:
        names = writer.adopt([(os.path.join(staged_folder(gallery), k), i) for k, i in take])
        out["adopted"] = [(k, n, i.rows) for (k, i), n in zip(take, names)]
    if log:
        for key, why in out["broken"]:
            log(f"removed staged segment {key}: {why}")
    return out


def remove_orphans(gallery: str) -> int:
    """Unfinished attempts (`.tmp-<key>-*`) and probe files: only call while no worker writes here."""
    folder = staged_folder(gallery)
    n = 0
    if not os.path.isdir(folder):
        return 0
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if TMP.match(name) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            n += 1
        elif PROBE.match(name) and os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    return n


def drop_staging(gallery: str) -> None:
    """The end of a job (done or failed): remove every staged name kidrr made, then the folder if empty."""
    folder = staged_folder(gallery)
    if not os.path.isdir(folder) or os.path.islink(folder):
        return
    remove_orphans(gallery)
    for key in staged_keys(gallery):
        remove_staged(gallery, key)
    try:
        os.rmdir(folder)
    except OSError:
        pass    # something kidrr did not make is in there: left alone


__all__ = ["STAGED", "content_key", "make_staged_folder", "stage_segment", "staged_keys", "read_staged",
           "adopt_staged", "remove_orphans", "drop_staging"]
