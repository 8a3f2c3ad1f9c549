"""Identities that pair artefacts with what made them (torch-free: the runtime and the bench use them).

checkpoint_id: weights + config + vocabulary. A bundle, a cached export or the torch backend is
paired with a checkpoint by all three, since a changed config.json (another activation, lambda, ...)
or vocabulary changes the numbers as surely as changed weights do.

A bundle's identity is the sha256 of its manifest.json (runtime/bundle.py and the C ABI); the
exporter keeps that file free of timings and reports, so a re-export reproduces it.
"""
from __future__ import annotations

import hashlib
import os

from .fileio import sha256_file

CHECKPOINT_ID = "kidrr-checkpoint-id/1"
CHECKPOINT_PARTS = ("model.safetensors", "config.json", "vocab.json")


def checkpoint_id(folder: str) -> str:
    """sha256 over the sha256 of the checkpoint's weights, config.json and vocab.json."""
    digest = hashlib.sha256(CHECKPOINT_ID.encode())
    for name in CHECKPOINT_PARTS:
        digest.update(b"\0" + name.encode() + b"\0" + sha256_file(os.path.join(folder, name)).encode())
    return digest.hexdigest()

