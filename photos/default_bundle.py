"""The bundle kidrr index / kidrr search / kidrr serve use without --bundle: the shipped real-photo
model (kidrr/shipped_photos: EfficientNet-Lite0 + all-MiniLM-L6-v2 + KIDRR heads trained on Flickr8k
photos), exported once into the cache the way kidrr bench caches its bundles (kidrr.bench.sources).
The pixel-synthetic model (kidrr/shipped_pixels) stays for `kidrr search --demo`."""
from __future__ import annotations

import os

from kidrr.errors import BundleError, CheckpointError


def _shipped_bundle(folder: str, what: str, log=None) -> str:
    from kidrr.bench.sources import export_cached, resolve_checkpoint
    if not os.path.isdir(folder):
        raise BundleError(f"this kidrr has no shipped {what} ({folder} is missing); pass --bundle with a bundle "
                          f"exported from a checkpoint trained on kidrr features output")
    try:
        ck_dir, ck_sha = resolve_checkpoint(folder)
    except CheckpointError as exc:
        raise BundleError(f"the shipped {what} cannot be used ({exc}); pass --bundle") from exc
    if log:
        log(f"using the shipped {what} (exported into the cache on first use, about a minute)")
    return export_cached(ck_dir, ck_sha, "fp32", log=log)


def shipped_pixel_bundle(log=None) -> str:
    """Cached fp32 bundle of the shipped pixel-synthetic model (the --demo's model)."""
    from kidrr.bench.sources import shipped_pixel_checkpoint_dir
    return _shipped_bundle(shipped_pixel_checkpoint_dir(), "pixel-synthetic model", log)


def shipped_photo_bundle(log=None) -> str:
    """Cached fp32 bundle of the shipped real-photo model (the default for real photos)."""
    from kidrr.bench.sources import shipped_photo_checkpoint_dir
    return _shipped_bundle(shipped_photo_checkpoint_dir(), "real-photo model", log)


def resolve_bundle(bundle: str | None, log=None) -> str:
    return bundle if bundle else shipped_photo_bundle(log)
