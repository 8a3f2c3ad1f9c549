"""A photo -> the small JPEG a gallery stores to show it (kidrr index; the web page shows these).

The photo goes through the decoder the indexing uses (kidrr.images.decode: file and pixel limits
checked from the header before any pixel is decoded, first frame, EXIF orientation applied, RGB),
so a file that could be indexed can be thumbnailed and a bomb is refused the same way. The JPEG is
encoded from the pixels alone: no EXIF, ICC profile, comment or other metadata of the original
(a GPS position must not leak through the service).
"""
from __future__ import annotations

import io

from PIL import Image

from .decode import MAX_PIXELS, decode_image

LONGEST_SIDE = 256
QUALITY = 80          # ~10-20 KB at 256 px; the grid shows them at 160-256 px


def thumbnail_of_pixels(pixels, longest_side: int = LONGEST_SIDE, quality: int = QUALITY) -> bytes:
    """(H, W, 3) uint8 RGB -> a baseline JPEG whose longest side is at most `longest_side`."""
    img = Image.fromarray(pixels, mode="RGB")
    img.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)      # no exif / icc_profile given: none written
    return buf.getvalue()


def make_thumbnail(source, name: str | None = None, max_pixels: int = MAX_PIXELS,
                   longest_side: int = LONGEST_SIDE) -> bytes:
    """A file path or its bytes -> thumbnail JPEG bytes; ImageError (with a reason) if it cannot be decoded."""
    return thumbnail_of_pixels(decode_image(source, max_pixels=max_pixels, name=name), longest_side)
