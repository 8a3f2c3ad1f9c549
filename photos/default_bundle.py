"""The bundle kidrr-index / kidrr-search use without --bundle: the shipped pixel model, exported once
into the cache the way kidrr-bench caches its bundles (kidrr.bench.sources)."""
from __future__ import annotations

import os

from kidrr.errors import BundleError, CheckpointError


def shipped_pixel_bundle(log=None) -> str:
    """Folder of the cached fp32 bundle of the shipped pixel checkpoint (exported on first use)."""
    from kidrr.bench.sources import export_cached, resolve_checkpoint, shipped_pixel_checkpoint_dir
    folder = shipped_pixel_checkpoint_dir()
    if not os.path.isdir(folder):
        raise BundleError(f"this kidrr has no shipped pixel model ({folder} is missing); pass --bundle with a bundle "
                          f"exported from a checkpoint trained on kidrr-features output")
    try:
        ck_dir, ck_sha = resolve_checkpoint(folder)
    except CheckpointError as exc:
        raise BundleError(f"the shipped pixel model cannot be used ({exc}); pass --bundle") from exc
    return export_cached(ck_dir, ck_sha, "fp32", log=log)


def resolve_bundle(bundle: str | None, log=None) -> str:
    return bundle if bundle else shipped_pixel_bundle(log)
