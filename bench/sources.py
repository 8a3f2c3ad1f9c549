"""Which checkpoint and which bundles the bench runs: the shipped model by default, bundles cached.

Bundles exported here are cached under $KIDRR_CACHE (default ~/.cache/kidrr)/bundles/, keyed by the
checkpoint's id (weights + config + vocabulary, kidrr.identity), the precision, the kidrr version and a fingerprint of the exporter's
source (so a changed graph is never served from a stale bundle), and a second run reuses them.
Exporting needs torch, so it runs in a child process (export_job.py); this module stays torch-free.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import resources

from kidrr import __version__
from kidrr.errors import BundleError, CheckpointError
from kidrr.identity import CHECKPOINT_PARTS, checkpoint_id



def shipped_checkpoint_dir() -> str:
    # Same folder as kidrr.checkpoint.shipped_checkpoint(), without importing torch.
    return str(resources.files("kidrr") / "shipped")


def shipped_pixel_checkpoint_dir() -> str:
    # Same folder as kidrr.checkpoint.shipped_pixel_checkpoint(), without importing torch.
    return str(resources.files("kidrr") / "shipped_pixels")


def shipped_photo_checkpoint_dir() -> str:
    # Same folder as kidrr.checkpoint.shipped_photo_checkpoint(), without importing torch.
    return str(resources.files("kidrr") / "shipped_photos")


def cache_root() -> str:
    return os.path.abspath(os.environ.get("KIDRR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kidrr"))


def resolve_checkpoint(path: str | None) -> tuple[str, str]:
    """(folder, checkpoint id). None: the shipped checkpoint, which must exist (never trained here)."""
    folder = os.path.abspath(path) if path else shipped_checkpoint_dir()
    absent = [name for name in CHECKPOINT_PARTS if not os.path.isfile(os.path.join(folder, name))]
    if absent:
        if path is None:
            raise CheckpointError(f"the shipped checkpoint is missing ({folder} lacks {absent}): this kidrr "
                                  f"install has no trained model; pass --checkpoint DIR (model.safetensors, "
                                  f"config.json, vocab.json) or --bundle DIR")
        raise CheckpointError(f"--checkpoint {folder} has no {absent}; give a folder written by kidrr train "
                              f"(model.safetensors, config.json, vocab.json)")
    return folder, checkpoint_id(folder)


def bundle_manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise BundleError(f"--bundle {folder} is not a kidrr bundle ({path} is missing); export one with "
                          f"`kidrr export onnx`")
    try:
        with open(path) as fh:
            return json.load(fh)
    except ValueError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from exc


def check_bundle_source(folder: str, checkpoint_sha: str, checkpoint: str) -> dict:
    """The bundle's manifest; BundleError if it was exported from another checkpoint."""
    manifest = bundle_manifest(folder)
    source = manifest.get("source_checkpoint_sha256")
    if source != checkpoint_sha:
        raise BundleError(f"bundle {folder} was exported from another checkpoint (source_checkpoint_sha256 "
                          f"{str(source)[:12]}...) than {checkpoint} (weights + config + vocabulary id "
                          f"{checkpoint_sha[:12]}...); "
                          f"pass the matching --checkpoint, or drop --bundle to export one from this checkpoint")
    return manifest


def exporter_fingerprint() -> str:
    """sha256 of the exporter package's source files: any graph change gives a new cache key."""
    digest = hashlib.sha256()
    package = resources.files("kidrr.export")
    for name in sorted(p.name for p in package.iterdir() if p.name.endswith(".py")):
        digest.update(name.encode() + b"\0" + (package / name).read_bytes())
    return digest.hexdigest()[:12]


def cached_bundle_dir(checkpoint_sha: str, precision: str) -> str:
    return os.path.join(cache_root(), "bundles",
                        f"{checkpoint_sha[:16]}-{precision}-kidrr{__version__}-export{exporter_fingerprint()}")


def _is_current(folder: str, checkpoint_sha: str, precision: str) -> bool:
    try:
        manifest = bundle_manifest(folder)
    except BundleError:
        return False
    return manifest.get("source_checkpoint_sha256") == checkpoint_sha and manifest.get("precision") == precision


def export_cached(checkpoint: str, checkpoint_sha: str, precision: str, log=None) -> str:
    """The cached bundle for (checkpoint, precision), exported in a child process if missing."""
    folder = cached_bundle_dir(checkpoint_sha, precision)
    if _is_current(folder, checkpoint_sha, precision):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "kidrr.bench.export_job", checkpoint, folder, precision],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BundleError(f"exporting the {precision} bundle from {checkpoint} failed: {tail}")
    if log:
        log(f"exported {precision} bundle to {folder}" + (f" ({proc.stdout.strip()})" if proc.stdout.strip() else ""))
    return folder


def resolve_bundles(checkpoint: str | None, bundle: str | None, precisions: list, log=None):
    """({precision: bundle folder}, checkpoint folder or None, [(precision, reason)] unavailable).

    --bundle alone: that bundle's precision (others need a checkpoint to export from); the torch
    reference then uses the shipped checkpoint if it is the bundle's source, else is skipped.
    """
    bundles, missing = {}, []
    given = None
    if bundle:
        given = os.path.abspath(bundle)
        manifest = bundle_manifest(given)
        bundles[manifest.get("precision", "fp32")] = given
    try:
        ck_dir, ck_sha = resolve_checkpoint(checkpoint)
    except CheckpointError as exc:
        if not given or checkpoint:
            raise
        ck_dir, ck_sha = None, None
        no_ck = f"no checkpoint to export it from ({exc})"
    if given and ck_dir:
        if checkpoint:
            check_bundle_source(given, ck_sha, ck_dir)
        elif bundle_manifest(given).get("source_checkpoint_sha256") != ck_sha:
            ck_dir, ck_sha = None, None   # the shipped model is not this bundle's source
            no_ck = "the shipped checkpoint is not this bundle's source; pass --checkpoint"
    for precision in precisions:
        if precision in bundles:
            continue
        if ck_dir is None:
            missing.append((precision, no_ck))
        else:
            bundles[precision] = export_cached(ck_dir, ck_sha, precision, log)
    return bundles, ck_dir, missing
