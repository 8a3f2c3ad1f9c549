"""Opening a bundle folder: the manifest, its format version, every file's sha256, the vocabulary.

Torch-free. The runtime trusts nothing in the folder that manifest.json does not vouch for
(docs/bundle.md); every refusal is a BundleError naming the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from kidrr.config import ModelConfig
from kidrr.errors import BundleError, CheckpointError, ConfigError
from kidrr.fileio import NotRegularFile, open_regular, sha256_file
from kidrr.identity import bundle_id
from kidrr.tokenizer import TOKENIZER_RULES, Vocabulary
from kidrr.wordpiece import MAX_TOKENIZER_BYTES, WordPieceTokenizer

MANIFEST = "manifest.json"
KNOWN_FORMATS = ("kidrr-bundle/1",)
GRAPHS = ("image_encoder", "text_encoder", "similarity")
IMAGE_GRAPHS = ("preprocess", "backbone")   # present when manifest["image"] is (docs/images.md)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. `identity` (kidrr.identity.bundle_id: what changes the numbers, not export
    timings or versions; the C ABI computes the same) tags galleries built from it, so a re-export
    keeps saved galleries valid."""
    path: str
    manifest: dict
    vocab: Vocabulary | WordPieceTokenizer
    identity: str

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def max_caption_len(self) -> int:
        return self.manifest["tokenizer"]["max_caption_len"]

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


MAX_MANIFEST_BYTES = 16 << 20   # a real manifest is a few kB; refuse to read a crafted giant


def _read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    try:
        if not os.path.isdir(folder):
            raise BundleError(f"bundle folder {folder} does not exist (or is not a folder); export one with "
                              f"`kidrr export onnx`")
        size = os.stat(path).st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is {size} bytes, more than any manifest ({MAX_MANIFEST_BYTES}); "
                              f"it is not a kidrr manifest, re-export the bundle")
        with open_regular(path, what=f"bundle {folder}", follow_symlinks=True) as fh:   # no FIFO can block it
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except NotRegularFile as exc:
        raise BundleError(f"{exc}; re-export the bundle") from None
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: {folder} is not a kidrr bundle (re-export it)") from None
    except PermissionError as exc:
        # Not "missing": a bundle made by another user with private modes reads like this.
        raise BundleError(f"cannot read {path} ({exc.strerror}); make the bundle readable to this user "
                          f"(chmod -R a+rX {folder}) or re-export it") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path} ({exc.strerror or exc}); check the folder") from exc
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{path} is not valid JSON ({str(exc)[:200]}); the bundle is corrupted, "
                          f"re-export it") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object, not {type(manifest).__name__}; re-export the bundle")
    return manifest


PRECISIONS = ("fp32", "fp16", "int8")
DTYPES = ("float32", "float16", "int64", "int32", "bool", "float64", "uint8")
_HEX = set("0123456789abcdef")


def _bad(path: str, what: str) -> BundleError:
    return BundleError(f"{path}: {what}; the manifest was edited or damaged, re-export the bundle")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_rel_path(rel, path: str, what: str) -> None:
    """A file name inside the bundle: relative, no '..', no absolute path (the runtime reads nothing else)."""
    if not isinstance(rel, str) or not rel:
        raise _bad(path, f"{what} must be a file name, got {rel!r}")
    parts = rel.replace("\\", "/").split("/")
    if os.path.isabs(rel) or ".." in parts or "\0" in rel:
        raise BundleError(f"{path}: {what} {rel!r} points outside the bundle folder; refusing it")


def _check_sha(digest, path: str, what: str) -> None:
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
        raise _bad(path, f"{what} must be a 64-digit lower-case hex sha256, got {str(digest)[:70]!r}")


def _check_io(values, path: str, what: str) -> None:
    if not isinstance(values, list) or not values:
        raise _bad(path, f"{what} must be a non-empty list")
    for v in values:
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            raise _bad(path, f"{what}: every entry needs a 'name' string, got {str(v)[:80]!r}")
        if v.get("dtype") not in DTYPES:
            raise _bad(path, f"{what} {v['name']}: dtype {v.get('dtype')!r} is not one of {DTYPES}")
        shape = v.get("shape")
        if not isinstance(shape, list) or not all((_is_int(d) and d >= 1) or (isinstance(d, str) and d)
                                                  for d in shape):
            raise _bad(path, f"{what} {v['name']}: shape {shape!r} must list sizes >= 1 or axis names")


def _check_graph(name: str, entry, path: str) -> None:
    if not isinstance(entry, dict):
        raise _bad(path, f"graph {name!r} must be an object with file/sha256/inputs/outputs")
    _check_rel_path(entry.get("file"), path, f"graph {name!r} file")
    _check_sha(entry.get("sha256"), path, f"graph {name!r} sha256")
    if entry.get("precision", "fp32") not in PRECISIONS:
        raise _bad(path, f"graph {name!r} precision {entry.get('precision')!r} is not one of {PRECISIONS}")
    _check_io(entry.get("inputs"), path, f"graph {name!r} inputs")
    _check_io(entry.get("outputs"), path, f"graph {name!r} outputs")


REQUIRED_MODEL_FIELDS = ("feature_size", "embed_size", "sim_size")


def _check_structure(manifest: dict, path: str) -> None:
    """Every field the runtime reads, with its type and range: one place, so none is read unchecked."""
    fmt = manifest.get("format")
    if fmt not in KNOWN_FORMATS:
        raise BundleError(f"{path}: bundle format {fmt!r} is unknown to this runtime (it reads {KNOWN_FORMATS}); "
                          f"re-export with a matching kidrr version")
    for key in ("model", "tokenizer", "graphs", "files"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{path}: manifest field {key!r} is missing or not an object; re-export the bundle")
    try:
        ModelConfig.from_dict(manifest["model"])
    except (ConfigError, TypeError) as exc:
        raise _bad(path, f"model config: {exc}") from exc
    # Read straight from the manifest by the runtime and the tools (a default would be a guess).
    missing = [k for k in REQUIRED_MODEL_FIELDS if k not in manifest["model"]]
    if missing:
        raise _bad(path, f"model config lacks {', '.join(missing)}")
    if manifest.get("precision") not in PRECISIONS:
        raise _bad(path, f"precision {manifest.get('precision')!r} is not one of {PRECISIONS}")
    tok = manifest["tokenizer"]
    if "kind" in tok:
        if tok["kind"] != WordPieceTokenizer.kind:
            raise BundleError(f"{path}: tokenizer kind {tok['kind']!r} is unknown to this runtime (it reads "
                              f"{WordPieceTokenizer.kind!r} and the basic {TOKENIZER_RULES})")
        _check_rel_path(tok.get("file"), path, "tokenizer file")
    else:
        rules = tok.get("rules")
        if rules != TOKENIZER_RULES:
            raise BundleError(f"{path}: tokenizer rules {rules!r} differ from this runtime's {TOKENIZER_RULES}")
        _check_rel_path(tok.get("vocab"), path, "tokenizer vocab")
    limit = tok.get("max_caption_len")
    if not _is_int(limit) or limit < 3:
        raise _bad(path, f"tokenizer max_caption_len must be an integer >= 3 (<start>, a word, <end>), got {limit!r}")
    for name in GRAPHS:
        if name not in manifest["graphs"]:
            raise BundleError(f"{path}: graph {name!r} has no file/sha256 entry; re-export the bundle")
    image = manifest.get("image")
    if image is not None:
        if not isinstance(image, dict) or not isinstance(image.get("backbone"), str):
            raise _bad(path, "field 'image' must be an object naming the backbone")
        mp = image.get("max_pixels")
        if not _is_int(mp) or mp < 1:
            raise _bad(path, f"image max_pixels must be an integer >= 1, got {mp!r}")
        for name in IMAGE_GRAPHS:
            if name not in manifest["graphs"]:
                raise BundleError(f"{path}: the bundle takes pixels but lists no {name!r} graph; re-export it")
    for name, entry in manifest["graphs"].items():
        _check_graph(name, entry, path)
    for rel, digest in manifest["files"].items():
        _check_rel_path(rel, path, "file")
        _check_sha(digest, path, f"sha256 of {rel}")


def check_graph_io(bundle: "Bundle", graph: str, actual: list) -> None:
    """Cross-check a loaded graph's real inputs [(name, dtype, shape)] (shape: ints, or str/None for a
    dynamic axis) against its manifest entry and the model config; BundleError on any mismatch, so a
    manifest edited to another size fails at load, not as a backend error on the first call."""
    entry = bundle.graph(graph)
    declared = {v["name"]: v for v in entry["inputs"]}
    got = {name: (dtype, list(shape)) for name, dtype, shape in actual}
    where = f"bundle {bundle.path}: graph {graph} ({entry['file']})"
    if sorted(got) != sorted(declared):
        raise BundleError(f"{where} has inputs {sorted(got)} but its manifest entry says {sorted(declared)}; "
                          f"re-export the bundle")
    model = bundle.model
    expected_last = {"features": model["feature_size"], "img_locals": model["embed_size"],
                     "img_global": model["embed_size"], "cap_locals": model["embed_size"],
                     "cap_global": model["embed_size"]}
    for name, (dtype, shape) in got.items():
        want = declared[name]
        if dtype != want["dtype"] or len(shape) != len(want["shape"]):
            raise BundleError(f"{where}: input {name} is {dtype} of rank {len(shape)}, the manifest says "
                              f"{want['dtype']} of rank {len(want['shape'])}; re-export the bundle")
        for axis, (real, said) in enumerate(zip(shape, want["shape"])):
            if _is_int(said) != _is_int(real) or (_is_int(said) and real != said):
                raise BundleError(f"{where}: input {name} axis {axis} is {real!r} in the graph but {said!r} in the "
                                  f"manifest; re-export the bundle")
        last = shape[-1] if shape else None
        if graph in ("image_encoder", "similarity") and name in expected_last and _is_int(last) \
                and last != expected_last[name]:
            raise BundleError(f"{where}: input {name} has size {last} on its last axis but the manifest's model "
                              f"says {expected_last[name]}; re-export the bundle")


def _files_to_verify(manifest: dict) -> dict:
    """relative path -> sha256 for every file the manifest vouches for."""
    files = {entry["file"]: entry["sha256"] for entry in manifest["graphs"].values()}
    files.update(manifest["files"])
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


def _load_tokenizer(folder: str, rel: str, wordpiece: bool):
    """The bundle's basic vocabulary, or the pretrained encoder's WordPiece file (size-checked first)."""
    if not wordpiece:
        return Vocabulary.load(os.path.join(folder, rel))
    path = os.path.join(folder, rel)
    try:
        with open_regular(path, what=f"bundle {folder}", follow_symlinks=True) as fh:
            if os.fstat(fh.fileno()).st_size > MAX_TOKENIZER_BYTES:
                raise CheckpointError(f"{path} is larger than any WordPiece tokenizer ({MAX_TOKENIZER_BYTES} bytes)")
            data = fh.read(MAX_TOKENIZER_BYTES + 1)
    except NotRegularFile as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from exc
    return WordPieceTokenizer(data)


def load_bundle(folder: str, verify: bool = True) -> Bundle:
    """Open and verify a bundle folder. verify=False skips the hashes (not the format check)."""
    folder = os.path.abspath(folder)
    manifest = _read_manifest(folder)
    path = os.path.join(folder, MANIFEST)
    _check_structure(manifest, path)
    tok = manifest["tokenizer"]
    vocab_rel = tok["file"] if "kind" in tok else tok["vocab"]
    files = _files_to_verify(manifest)
    if vocab_rel not in files:
        raise BundleError(f"{path}: the tokenizer file {vocab_rel} has no sha256 under 'files'; re-export the bundle")
    if verify:
        for rel, expected in sorted(files.items()):
            _verify_file(folder, rel, expected)
    try:
        vocab = _load_tokenizer(folder, vocab_rel, "kind" in tok)
    except CheckpointError as exc:
        raise BundleError(f"bundle file {vocab_rel}: {exc}") from exc
    size = manifest["model"]["vocab_size"] if "vocab_size" in manifest["model"] else len(vocab)
    if size != len(vocab):
        raise BundleError(f"bundle file {vocab_rel} has {len(vocab)} words but the manifest's model says "
                          f"vocab_size {size}; re-export the bundle")
    return Bundle(folder, manifest, vocab, bundle_id(manifest))
