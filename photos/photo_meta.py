"""What a photo file says about itself, as gallery metadata: capture time, camera, size, folder.

Read from the file's header and EXIF block only (Pillow opens lazily; no pixel is decoded). A file
whose EXIF is missing or unreadable simply has fewer fields: metadata never stops indexing.
"""
from __future__ import annotations

import os
import warnings

from kidrr.gallery.metadata import MAX_STRING_BYTES, parse_date

EXIF_IFD = 0x8769
DATETIME_ORIGINAL, DATETIME = 36867, 306
MAKE, MODEL = 271, 272
ORIENTATION = 274


def photo_metadata(path: str, name: str) -> dict:
    """{"taken": ISO date-time, "camera": "Make Model", "width", "height" (as displayed), "folder"}:
    the fields this photo has. name: its id (path relative to the indexed folder)."""
    from PIL import Image
    meta: dict = {}
    folder = os.path.dirname(name)
    if folder:
        meta["folder"] = folder
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size
                exif = img.getexif()
                sub = exif.get_ifd(EXIF_IFD) if exif else {}
                taken = _text(sub.get(DATETIME_ORIGINAL) or exif.get(DATETIME))
                camera = " ".join(x for x in (_text(exif.get(MAKE)), _text(exif.get(MODEL))) if x)
                if exif.get(ORIENTATION) in (5, 6, 7, 8):       # shown rotated by a quarter turn
                    width, height = height, width
    except Exception:      # noqa: BLE001 - a header Pillow cannot read: the decoder reports that file
        return meta
    meta["width"], meta["height"] = int(width), int(height)
    if taken and len(taken) >= 19:
        # EXIF writes "2019:07:04 10:30:00" (no time zone)
        iso = taken[:10].replace(":", "-") + "T" + taken[11:19]
        if parse_date(iso) is not None:
            meta["taken"] = iso
    if camera:
        meta["camera"] = camera[:200]
    return meta


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    value = value.replace("\0", "").strip()
    return value if len(value.encode("utf-8")) <= MAX_STRING_BYTES else ""
