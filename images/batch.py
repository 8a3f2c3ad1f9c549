"""Many image files at once (torch-free): finding them, decoding a batch, and the skip report.

Batch indexing (kidrr features, kidrr index, Retriever.encode_image_files) never stops at a bad file
unless asked to (strict): the file is left out, with its reason, and no row is written for it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from kidrr.errors import DataError, ImageError

from .decode import IMAGE_SUFFIXES, KNOWN_UNSUPPORTED, MAX_PIXELS, decode_image


@dataclass
class SkipReport:
    """Files left out of a batch job: (name, reason tag, message), in the order met."""
    skipped: list = field(default_factory=list)

    def add(self, name: str, reason: str, message: str) -> None:
        self.skipped.append((name, reason, message))

    def __len__(self) -> int:
        return len(self.skipped)

    def counts(self) -> dict:
        out: dict = {}
        for _, reason, _ in self.skipped:
            out[reason] = out.get(reason, 0) + 1
        return out

    def to_json(self) -> list:
        return [{"file": n, "reason": r, "message": m} for n, r, m in self.skipped]

    def tsv(self) -> str:
        return "".join(f"{n}\t{r}\t{m}\n" for n, r, m in self.skipped)

    def print_summary(self, total: int, kept: int, stream=None, limit: int = 20) -> None:
        stream = stream or sys.stderr
        for name, reason, message in self.skipped[:limit]:
            print(f"  skipped {name}: [{reason}] {message}", file=stream)
        if len(self.skipped) > limit:
            print(f"  ... and {len(self.skipped) - limit} more", file=stream)
        by_reason = ", ".join(f"{r} {c}" for r, c in sorted(self.counts().items()))
        print(f"{kept} of {total} images kept, {len(self.skipped)} skipped" + (f" ({by_reason})" if by_reason else ""),
              file=stream)


def shown_name(name: str) -> str:
    """A file name as text that can be printed and written to JSON: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def list_image_files(folder: str, report: SkipReport | None = None) -> tuple[list, int]:
    """(sorted relative paths of candidate images under folder, number of other files ignored).

    Candidates are files with an image suffix, plus formats we know we cannot decode (HEIC, SVG...)
    so that they are reported rather than silently missing. Hidden files and folders are ignored.
    A path that is not UTF-8 cannot be an id: it goes to report (reason bad-name) and is left out.
    """
    if not os.path.isdir(folder):
        raise DataError(f"image folder {folder} does not exist or is not a folder")
    found, ignored = [], 0
    wanted = IMAGE_SUFFIXES + tuple(KNOWN_UNSUPPORTED)
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(wanted):
                rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    if report is not None:
                        report.add(shown_name(rel), "bad-name", "the file name is not UTF-8, so it cannot be an id; "
                                   "rename the file")
                    continue
                found.append(rel)
            else:
                ignored += 1
    if not found and not (report is not None and len(report)):
        raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                        f"{ignored} other file(s) were ignored")
    return found, ignored


def unique_names(names, report: SkipReport) -> list:
    """Indices of the first occurrence of every name; later duplicates go to the report."""
    seen, keep = set(), []
    for i, name in enumerate(names):
        if name in seen:
            report.add(name, "duplicate", "the same file name appears again; kept the first")
        else:
            seen.add(name)
            keep.append(i)
    return keep


def decode_batch(sources, names, preprocessor, report: SkipReport, strict: bool = False,
                 max_pixels: int = MAX_PIXELS):
    """Decode and preprocess a batch: ((k, 3, S, S) float32 or None, the k names kept).

    A file that fails goes to the report (strict: the ImageError is raised instead).
    """
    arrays, kept = [], []
    for source, name in zip(sources, names):
        try:
            pixels = source if isinstance(source, np.ndarray) else decode_image(source, max_pixels, name=name)
            arrays.append(preprocessor(pixels, name))
            kept.append(name)
        except ImageError as exc:
            if strict:
                raise
            report.add(name, exc.reason, str(exc))
    return (np.stack(arrays) if arrays else None), kept
