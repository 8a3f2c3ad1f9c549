"""Image-caption splits: the published precomputed layout, memory-mapped (torch-free).

Layout: `{split}_ims.npy` (N, R, F) or (5N, R, F) float, and `{split}_caps.txt` with 5 captions per
image in image order. With 5N rows the images repeat 5x; we keep a strided view of every fifth
row, so a 30,000 x 36 x 2048 array is mapped once and never copied.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import DataError, InputError
from .fileio import read_text_lines

CAPTIONS_PER_IMAGE = 5


@dataclass
class Split:
    """images (N, R, F) array-like (possibly a memmap); captions: 5 per image, in image order."""
    name: str
    images: np.ndarray
    captions: list

    def __post_init__(self):
        if self.images.ndim != 3:
            raise DataError(f"{self.name}: image features must be (N, R, F), got shape {self.images.shape}")
        n, m = len(self.images), len(self.captions)
        if n == 0 or m != CAPTIONS_PER_IMAGE * n:
            raise DataError(f"{self.name}: {n} images need {CAPTIONS_PER_IMAGE * n} captions "
                            f"({CAPTIONS_PER_IMAGE} per image, in image order), found {m}")

    @property
    def caption_image(self) -> np.ndarray:
        """Index of each caption's image."""
        return np.arange(len(self.captions)) // CAPTIONS_PER_IMAGE

    @property
    def regions(self) -> int:
        return self.images.shape[1]

    @property
    def feature_size(self) -> int:
        return self.images.shape[2]

    def subset(self, n_images: int, start: int = 0) -> "Split":
        """The first n_images images (from start) with their captions."""
        stop = min(start + n_images, len(self.images))
        return Split(self.name, self.images[start:stop],
                     self.captions[CAPTIONS_PER_IMAGE * start:CAPTIONS_PER_IMAGE * stop])


def check_features(features: np.ndarray, what: str = "image features", feature_size: int | None = None) -> np.ndarray:
    """float32 (n, R, F) view of features; InputError on a wrong shape, dtype or non-finite value."""
    if features is None:
        raise InputError(f"{what} are missing (None); give a float array (images, regions, features)")
    try:
        arr = np.asarray(features)
    except (ValueError, TypeError) as exc:   # a ragged list of lists
        raise InputError(f"{what} must be one rectangular array (images, regions, features): {exc}") from None
    if arr.ndim != 3:
        raise InputError(f"{what} must be a 3-D array (images, regions, features), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{what} must be floating point, got dtype {arr.dtype}")
    if feature_size is not None and arr.shape[2] != feature_size:
        raise InputError(f"{what} have feature size {arr.shape[2]} but the model expects {feature_size}; "
                         f"use features from the extractor the model was trained on")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what} are empty (shape {arr.shape}); give at least one image with one region")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr).all(axis=(1, 2))
    if not finite.all():
        bad = np.flatnonzero(~finite)[:5].tolist()
        raise InputError(f"{what} hold NaN or inf values (first bad rows {bad}); clean the features first")
    return arr


def load_split(folder: str, split: str) -> Split:
    """Load `{split}_ims.npy` (memory-mapped) and `{split}_caps.txt` from folder."""
    ims_path = os.path.join(folder, f"{split}_ims.npy")
    caps_path = os.path.join(folder, f"{split}_caps.txt")
    for path in (ims_path, caps_path):
        if not os.path.exists(path):
            raise DataError(f"{path} is missing; a data folder needs {split}_ims.npy and {split}_caps.txt "
                            f"(the published precomputed layout)")
    try:
        images = np.load(ims_path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{ims_path} is not a plain .npy array ({exc})") from exc
    if images.ndim != 3 or not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{ims_path} must hold a float (N, R, F) array, got {images.dtype} {images.shape}")
    captions = read_text_lines(caps_path, "caption file")
    empty = [i + 1 for i, c in enumerate(captions) if not c.strip()]
    if empty:
        raise DataError(f"{caps_path} has empty caption lines (first: line {empty[0]}, {len(empty)} in all); "
                        f"every image needs {CAPTIONS_PER_IMAGE} non-empty captions")
    if len(images) == len(captions) and len(images) % CAPTIONS_PER_IMAGE == 0:
        images = images[::CAPTIONS_PER_IMAGE]  # images repeated 5x: a strided view, no copy
    return Split(split, images, captions)
