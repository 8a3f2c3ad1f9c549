"""Caption files for kidrr features: which image has which five captions (torch-free).

Two layouts are read:
- the published one: `{split}_caps.txt` with 5 captions per image in image order, and the image
  file names, one a line, in `{split}_ids.txt` next to it (or given with --ids);
- a two-column TSV: `file name<TAB>caption` per line, any number of lines per image, any order
  (an image's captions keep their order; images are taken in order of first appearance).
"""
from __future__ import annotations

import os

from kidrr.data import CAPTIONS_PER_IMAGE
from kidrr.errors import DataError
from kidrr.fileio import read_text_lines

MAX_CAPTION_FILE_BYTES = 1 << 30


def _read_lines(path: str) -> list:
    return read_text_lines(path, "caption file", MAX_CAPTION_FILE_BYTES)


def _is_tsv(path: str, lines: list) -> bool:
    if path.lower().endswith((".tsv", ".tab")):
        return True
    return bool(lines) and all("\t" in line for line in lines[:20] if line.strip())


def read_caption_file(path: str, ids_path: str | None = None) -> list:
    """[(file name, [captions])] in image order. DataError on a malformed file (with the line)."""
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"caption file {path} is empty")
    if _is_tsv(path, lines):
        return _read_tsv(path, lines)
    return _read_published(path, lines, ids_path)


def _read_tsv(path: str, lines: list) -> list:
    groups: dict = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataError(f"{path} line {number} has no TAB: a TSV caption file needs "
                            f"'file name<TAB>caption' on every line")
        name, caption = line.split("\t", 1)
        name, caption = name.strip(), caption.strip()
        if not name:
            raise DataError(f"{path} line {number} has an empty file name")
        groups.setdefault(name, []).append(caption)
    return list(groups.items())


def _read_published(path: str, lines: list, ids_path: str | None) -> list:
    if ids_path is None:
        if not path.endswith("_caps.txt"):
            raise DataError(f"{path}: a caption file in the published layout ({{split}}_caps.txt) needs the image "
                            f"names in {{split}}_ids.txt; pass --ids, or use a 'file name<TAB>caption' TSV")
        ids_path = path[:-len("_caps.txt")] + "_ids.txt"
    if not os.path.isfile(ids_path):
        raise DataError(f"{ids_path} is missing: {path} lists captions only, the image file names (one a line, "
                        f"in the same order) must be in it; or use a 'file name<TAB>caption' TSV")
    names = [n.strip() for n in _read_lines(ids_path)]
    if len(lines) != CAPTIONS_PER_IMAGE * len(names):
        raise DataError(f"{path} has {len(lines)} caption lines but {ids_path} names {len(names)} images: the "
                        f"published layout needs exactly {CAPTIONS_PER_IMAGE} captions per image, in image order")
    return [(name, lines[CAPTIONS_PER_IMAGE * i:CAPTIONS_PER_IMAGE * (i + 1)]) for i, name in enumerate(names)]


def safe_relative(name: str) -> bool:
    """A caption file may only name files inside the image folder."""
    if not name or os.path.isabs(name) or "\\" in name or "\0" in name:
        return False
    return ".." not in name.split("/")
