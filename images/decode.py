"""Image files -> RGB8 arrays (H, W, 3) uint8 with Pillow; torch-free (the runtime decodes with it).

What is done to every file, in this order (docs/images.md): size of the file and of the image header
checked before any pixel is decoded (MAX_PIXELS), the first frame of an animation, EXIF orientation
applied, then the mode mapped to RGB: grayscale and palette expanded, alpha (RGBA, LA, palette
transparency) composited on white, CMYK converted, 16-bit samples scaled to 8 bits (x / 257, rounded).
Every failure is an ImageError with a short `reason` for the skip reports of batch indexing.
"""
from __future__ import annotations

import io
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kidrr.errors import ImageError

# 20,000 x 20,000 is allowed; decoding it needs about 20 bytes a pixel at peak (Pillow's RGBX copy,
# the array, the float copy the resize reads): 8 GB. Past this, a clear error instead of an OOM.
MAX_PIXELS = 20000 * 20000
MAX_FILE_BYTES = 1 << 30            # no image format needs a 1 GiB file for 400 MP of 8-bit RGB
MIN_SIDE = 1                        # a 1 x 1 image is a flat colour: valid, the resize defines it
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "MPO")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".mpo")
# Formats people have in photo folders that Pillow cannot decode here: named, so the message can say so.
KNOWN_UNSUPPORTED = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".svg": "SVG", ".svgz": "SVG",
                     ".raw": "camera RAW", ".cr2": "camera RAW", ".nef": "camera RAW", ".dng": "camera RAW"}

# Pillow's own decompression-bomb guard is one process-wide number (Image.MAX_IMAGE_PIXELS) set
# lower than our limit; we lift it only around Image.open (header parsing) and check the size ourselves.
_PILLOW_LIMIT_LOCK = threading.Lock()


def _open(source, name: str) -> Image.Image:
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(source)
        except UnidentifiedImageError as exc:
            raise ImageError(f"{name} is not an image Pillow can read (corrupt, or not an image file); "
                             f"remove it or convert it to JPEG/PNG", reason="not-an-image", path=name) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{name}: the image header is corrupt ({exc}); re-save or remove the file",
                             reason="corrupt", path=name) from exc
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_size(img: Image.Image, name: str, max_pixels: int) -> None:
    width, height = img.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"{name} is {width} x {height} pixels: empty", reason="empty", path=name)
    if width * height > max_pixels:
        raise ImageError(f"{name} is {width} x {height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} (decoding it would need about "
                         f"{20 * width * height / 1e9:.0f} GB); downscale it first", reason="too-large", path=name)


def _sixteen_bit_to_uint8(img: Image.Image) -> Image.Image:
    """'I;16*' / 'I' (16-bit grayscale PNG/TIFF) -> 'L', scaled x / 257 and rounded (65535 -> 255)."""
    values = np.asarray(img).astype(np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"image mode {img.mode} holds values outside 0..65535; convert it to 8-bit RGB",
                         reason="unsupported-mode")
    return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_to_uint8(img).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    if img.mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGB"):
        return img.convert("RGB")
    raise ImageError(f"{name}: image mode {img.mode!r} (e.g. floating-point TIFF) is not supported; "
                     f"convert it to 8- or 16-bit RGB or grayscale", reason="unsupported-mode", path=name)


def decode_image(source, max_pixels: int = MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """A file path or the file's bytes -> C-contiguous (H, W, 3) uint8 RGB; ImageError if unusable."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "image bytes"
        if len(source) > MAX_FILE_BYTES:
            raise ImageError(f"{name}: {len(source)} bytes is over the {MAX_FILE_BYTES} byte limit",
                             reason="too-large", path=name)
        if len(source) == 0:
            raise ImageError(f"{name} is empty (0 bytes)", reason="empty", path=name)
        stream = io.BytesIO(bytes(source))
    else:
        path = os.fspath(source)
        name = name or path
        suffix = os.path.splitext(path)[1].lower()
        if suffix in KNOWN_UNSUPPORTED:
            raise ImageError(f"{name}: {KNOWN_UNSUPPORTED[suffix]} images are not supported (Pillow cannot decode "
                             f"them here); convert to JPEG or PNG", reason="unsupported-format", path=name)
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise ImageError(f"{name} cannot be read ({exc.strerror})", reason="unreadable", path=name) from exc
        if not os.path.isfile(path):
            raise ImageError(f"{name} is not a regular file", reason="unreadable", path=name)
        if size == 0:
            raise ImageError(f"{name} is empty (0 bytes)", reason="empty", path=name)
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{name}: {size} bytes is over the {MAX_FILE_BYTES} byte limit", reason="too-large",
                             path=name)
        stream = path
    img = _open(stream, name)
    try:
        if img.format not in FORMATS:
            raise ImageError(f"{name}: format {img.format} is not supported; use one of {', '.join(FORMATS)}",
                             reason="unsupported-format", path=name)
        _check_size(img, name, max_pixels)
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)                      # animations: the first frame
        try:
            img.load()
            oriented = ImageOps.exif_transpose(img)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(f"{name} is truncated or corrupt ({exc}); re-save or remove the file",
                             reason="corrupt", path=name) from exc
        rgb = _to_rgb(oriented, name)
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    except Image.DecompressionBombError as exc:   # not reached with the limit lifted; kept for safety
        raise ImageError(f"{name}: {exc}", reason="too-large", path=name) from exc
    finally:
        img.close()


def check_pixels(pixels, name: str = "pixels", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An RGB8 array from a caller (encode_pixels): (H, W, 3) uint8, within the pixel limit."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ImageError(f"{name} must be uint8 RGB (0..255), got dtype {arr.dtype}", reason="bad-array")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"{name} must have shape (height, width, 3) RGB, got {arr.shape}", reason="bad-array")
    if arr.shape[0] < MIN_SIDE or arr.shape[1] < MIN_SIDE:
        raise ImageError(f"{name} is empty: shape {arr.shape}", reason="empty")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageError(f"{name} has {arr.shape[0] * arr.shape[1]:,} pixels, over the limit of {max_pixels:,}",
                         reason="too-large")
    return np.ascontiguousarray(arr)
