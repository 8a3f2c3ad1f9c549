"""Identities that pair artefacts with what made them (torch-free: the runtime and the bench use them).

checkpoint_id: weights + config + vocabulary. A bundle, a cached export or the torch backend is
paired with a checkpoint by all three, since a changed config.json (another activation, lambda, ...)
or vocabulary changes the numbers as surely as changed weights do.

bundle_id: only what changes the numbers a bundle computes: its format, model config, tokenizer,
precision, each graph's bytes (sha256) and I/O contract, and the other files' bytes. Not export
timings, exporter versions or the verification report, so re-exporting the same checkpoint (with
any exporter version that writes the same graphs) gives the same identity and saved galleries stay
valid. The C ABI computes the same value (runtime/cpp/src/manifest.cpp identity_text).
"""
from __future__ import annotations

import hashlib
import json
import os

from .fileio import sha256_file

CHECKPOINT_ID = "kidrr-checkpoint-id/1"
CHECKPOINT_PARTS = ("model.safetensors", "config.json", "vocab.json")
GRAPH_KEYS = ("file", "sha256", "opset", "precision", "inputs", "outputs", "kidrr_functions")
BUNDLE_KEYS = ("format", "model", "tokenizer", "precision", "files")


def checkpoint_id(folder: str) -> str:
    """sha256 over the sha256 of the checkpoint's weights, config.json and vocab.json."""
    digest = hashlib.sha256(CHECKPOINT_ID.encode())
    for name in CHECKPOINT_PARTS:
        digest.update(b"\0" + name.encode() + b"\0" + sha256_file(os.path.join(folder, name)).encode())
    return digest.hexdigest()


def bundle_id(manifest: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, ASCII escapes) of the manifest's
    number-changing fields; absent fields count as null. `manifest` is a validated one."""
    graphs = {name: {k: entry.get(k) for k in GRAPH_KEYS} for name, entry in manifest["graphs"].items()}
    core = {k: manifest.get(k) for k in BUNDLE_KEYS}
    core["graphs"] = graphs
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
