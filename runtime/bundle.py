"""Opening a bundle folder: the manifest, its format version, every file's sha256, the vocabulary.

Torch-free. The runtime trusts nothing in the folder that manifest.json does not vouch for
(docs/bundle.md); every refusal is a BundleError naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from kidrr.errors import BundleError, CheckpointError
from kidrr.fileio import sha256_file
from kidrr.tokenizer import TOKENIZER_RULES, Vocabulary

MANIFEST = "manifest.json"
KNOWN_FORMATS = ("kidrr-bundle/1",)
GRAPHS = ("image_encoder", "text_encoder", "similarity")
IMAGE_GRAPHS = ("preprocess", "backbone")   # present when manifest["image"] is (docs/images.md)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. `identity` (sha256 of manifest.json) tags galleries built from it."""
    path: str
    manifest: dict
    vocab: Vocabulary
    identity: str

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    @property
    def max_caption_len(self) -> int:
        return int(self.manifest["tokenizer"].get("max_caption_len", self.model.get("max_caption_len", 64)))

    def graph(self, name: str) -> dict:
        return self.manifest["graphs"][name]

    def graph_path(self, name: str) -> str:
        return os.path.join(self.path, self.graph(name)["file"])

    @property
    def image(self) -> dict | None:
        """manifest["image"] (backbone, preprocessing, max_pixels) when the bundle takes pixels, else None."""
        return self.manifest.get("image")

    @property
    def takes_pixels(self) -> bool:
        return self.image is not None


def _read_manifest(folder: str) -> tuple[dict, bytes]:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise BundleError(f"bundle folder {folder} does not exist; export one with `kidrr-export onnx`")
    if not os.path.exists(path):
        raise BundleError(f"{path} is missing: {folder} is not a kidrr bundle (re-export it)")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is corrupted, re-export it") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object; re-export the bundle")
    return manifest, raw


def _check_structure(manifest: dict, path: str) -> None:
    fmt = manifest.get("format")
    if fmt not in KNOWN_FORMATS:
        raise BundleError(f"{path}: bundle format {fmt!r} is unknown to this runtime (it reads {KNOWN_FORMATS}); "
                          f"re-export with a matching kidrr version")
    for key in ("model", "tokenizer", "graphs"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{path}: manifest field {key!r} is missing or not an object; re-export the bundle")
    for name in GRAPHS:
        entry = manifest["graphs"].get(name)
        if not isinstance(entry, dict) or not entry.get("file") or not entry.get("sha256"):
            raise BundleError(f"{path}: graph {name!r} has no file/sha256 entry; re-export the bundle")
    image = manifest.get("image")
    if image is not None:
        if not isinstance(image, dict) or not isinstance(image.get("backbone"), str):
            raise BundleError(f"{path}: manifest field 'image' must be an object naming the backbone; re-export")
        for name in IMAGE_GRAPHS:
            entry = manifest["graphs"].get(name)
            if not isinstance(entry, dict) or not entry.get("file") or not entry.get("sha256"):
                raise BundleError(f"{path}: the bundle takes pixels but graph {name!r} has no file/sha256 entry; "
                                  f"re-export the bundle")
    rules = manifest["tokenizer"].get("rules")
    if rules != TOKENIZER_RULES:
        raise BundleError(f"{path}: tokenizer rules {rules!r} differ from this runtime's {TOKENIZER_RULES}")


def _files_to_verify(manifest: dict) -> dict:
    """relative path -> sha256 for every file the manifest vouches for."""
    files = {entry["file"]: entry["sha256"] for entry in manifest["graphs"].values()
             if isinstance(entry, dict) and entry.get("file")}
    files.update(manifest.get("files") or {})
    return files


def _verify_file(folder: str, rel: str, expected: str) -> None:
    full = os.path.realpath(os.path.join(folder, rel))
    if not full.startswith(os.path.realpath(folder) + os.sep):
        raise BundleError(f"manifest names {rel!r}, outside the bundle folder; refusing it")
    if not os.path.isfile(full):
        raise BundleError(f"bundle file {rel} is missing from {folder}; re-export the bundle")
    actual = sha256_file(full)
    if actual != expected:
        raise BundleError(f"bundle file {rel} does not match its sha256 in {MANIFEST} "
                          f"(expected {expected[:12]}..., found {actual[:12]}...): it was edited or "
                          f"corrupted after export; re-export the bundle")


def load_bundle(folder: str, verify: bool = True) -> Bundle:
    """Open and verify a bundle folder. verify=False skips the hashes (not the format check)."""
    folder = os.path.abspath(folder)
    manifest, raw = _read_manifest(folder)
    path = os.path.join(folder, MANIFEST)
    _check_structure(manifest, path)
    vocab_rel = manifest["tokenizer"].get("vocab", "vocab.json")
    files = _files_to_verify(manifest)
    if vocab_rel not in files:
        raise BundleError(f"{path}: the vocabulary {vocab_rel} has no sha256 under 'files'; re-export the bundle")
    if verify:
        for rel, expected in sorted(files.items()):
            _verify_file(folder, rel, expected)
    try:
        vocab = Vocabulary.load(os.path.join(folder, vocab_rel))
    except CheckpointError as exc:
        raise BundleError(f"bundle file {vocab_rel}: {exc}") from exc
    size = manifest["model"].get("vocab_size")
    if size is not None and size != len(vocab):
        raise BundleError(f"bundle file {vocab_rel} has {len(vocab)} words but the manifest's model says "
                          f"vocab_size {size}; re-export the bundle")
    return Bundle(folder, manifest, vocab, hashlib.sha256(raw).hexdigest())
