"""One command from a v1 .npz gallery (items known by position) to a format-2 folder."""
from __future__ import annotations

from kidrr.runtime.gallery import Gallery

from .writer import GalleryWriter, create_gallery

CONVERT_BATCH = 8192


def convert_v1(npz_path: str, folder: str, locals_dtype: str = "fp16", ann: str = "ivf", bundle_id: str | None = None,
               progress: bool = False, **create_options) -> int:
    """Items keep their v1 position as id ("0", "1", ...); returns the item count."""
    old = Gallery.load(npz_path, bundle_id=bundle_id)
    create_gallery(folder, old.bundle_id, old.locals.shape[1], old.globals.shape[1], locals_dtype, ann,
                   **create_options)
    n = len(old)
    with GalleryWriter(folder, progress=progress) as w:
        w.add_batches(((old.globals[i:i + CONVERT_BATCH], old.locals[i:i + CONVERT_BATCH],
                        [str(j) for j in range(i, min(n, i + CONVERT_BATCH))]) for i in range(0, n, CONVERT_BATCH)),
                      rows=n)
    return n
