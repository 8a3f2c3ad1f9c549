"""The evaluation split: the synthetic test set by default, or --data DIR (published precomputed layout)."""
from __future__ import annotations

import os

import numpy as np

from kidrr.data import CAPTIONS_PER_IMAGE, Split, load_split
from kidrr.errors import DataError
from kidrr.fileio import write_atomic


def load_test_split(data_dir: str | None) -> Split:
    if data_dir is None:
        from kidrr.synthetic import make_synthetic
        return make_synthetic("test")
    if not os.path.isdir(data_dir):
        raise DataError(f"--data {data_dir} is not a folder; give a folder with test_ims.npy and test_caps.txt")
    try:
        return load_split(data_dir, "test")
    except DataError as exc:
        raise DataError(f"--data {data_dir}: {exc}. Expected the published precomputed layout: test_ims.npy "
                        f"(N, R, F) or (5N, R, F) float and test_caps.txt ({CAPTIONS_PER_IMAGE} captions per "
                        f"image, in image order)") from exc


def check_matches_model(split: Split, model: dict, data_dir: str | None) -> None:
    feature_size = int(model["feature_size"])
    if split.feature_size != feature_size:
        source = f"--data {data_dir}" if data_dir else "the synthetic test set"
        raise DataError(f"{source} has {split.feature_size}-d region features but the model reads "
                        f"{feature_size}-d ones; use data from the feature extractor the model was trained on")


def materialise(split: Split, folder: str) -> str:
    """Write a split in the published layout so every worker process memory-maps the same arrays."""
    import io
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(split.images, dtype=np.float32), allow_pickle=False)
    write_atomic(os.path.join(folder, "test_ims.npy"), buf.getvalue())
    write_atomic(os.path.join(folder, "test_caps.txt"), ("\n".join(split.captions) + "\n").encode("utf-8"))
    return folder
