"""Property tests (hypothesis) for the Python loaders of user files: the bundle manifest, the vocabulary,
a checkpoint's config.json and train_state.json, and caption files. Whatever the file holds, the
loader returns a well-formed object or raises its own typed error (BundleError, CheckpointError,
DataError) - never another exception, never a half-checked object.

derandomize=True: CI runs the same examples every time (a failure reproduces); examples per test
are EXAMPLES, sized to keep the file to seconds. A longer, random run:
KIDRR_FUZZ_EXAMPLES=2000 KIDRR_FUZZ_RANDOM=1 python -m pytest -q tests/test_hardening_fuzz.py
"""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kidrr.checkpoint import load_config, read_train_state, save_checkpoint
from kidrr.config import ModelConfig, TrainConfig
from kidrr.data import load_split
from kidrr.errors import BundleError, CheckpointError, DataError
from kidrr.export.bundle import export_bundle
from kidrr.runtime.bundle import PRECISIONS, load_bundle
from kidrr.tokenizer import SPECIALS, Vocabulary
from test_hardening_files import QUIET, _tiny_model

EXAMPLES = int(os.environ.get("KIDRR_FUZZ_EXAMPLES", "60"))   # CI: 60 per loader, within the suite budget
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("KIDRR_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Any JSON value, small enough to write per example.
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
                    | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
# Values that look like the real ones: right type, wrong range, or nearly right.
NEAR = st.sampled_from([0, -1, 1, 2.5, "12", "", None, True, [], {}, "fp32", "int4", "../x", "/etc/passwd",
                        "0" * 64, 64, 2**62, float("inf")])


def _paths(obj, prefix=()):
    """Every path to a value inside a JSON object."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, path, value, delete):
    doc = json.loads(json.dumps(doc))
    if not path:
        return value
    target = doc
    for k in path[:-1]:
        target = target[k]
    if delete and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("fz")
    model, vocab = _tiny_model()
    save_checkpoint(str(root / "ck"), model, vocab)
    export_bundle(str(root / "ck"), str(root / "bundle"), **QUIET)
    return str(root / "bundle"), str(root / "ck")


def _check_loaded_bundle(b):
    """What the runtime reads from a bundle it accepted has the type it uses."""
    assert b.precision in PRECISIONS
    assert isinstance(b.max_caption_len, int) and b.max_caption_len >= 3
    ModelConfig.from_dict(b.model)
    for name in ("image_encoder", "text_encoder", "similarity"):
        assert os.path.isfile(b.graph_path(name))
    assert len(b.identity) == 64


@SETTINGS
@given(data=st.data(), value=st.one_of(JSON, NEAR), delete=st.booleans())
def test_manifest_loader(bundle, tmp_path_factory, data, value, delete):
    src = bundle[0]
    copy = str(tmp_path_factory.getbasetemp() / "fz-manifest")
    if not os.path.isdir(copy):
        shutil.copytree(src, copy)
    manifest = json.load(open(os.path.join(src, "manifest.json")))
    path = data.draw(st.sampled_from(list(_paths(manifest))))
    with open(os.path.join(copy, "manifest.json"), "w") as fh:
        json.dump(_mutate(manifest, path, value, delete), fh)
    try:
        b = load_bundle(copy)
    except BundleError:
        return
    _check_loaded_bundle(b)


@SETTINGS
@given(raw=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_manifest_loader_on_any_bytes(bundle, tmp_path_factory, raw):
    copy = str(tmp_path_factory.getbasetemp() / "fz-bytes")
    if not os.path.isdir(copy):
        shutil.copytree(bundle[0], copy)
    with open(os.path.join(copy, "manifest.json"), "wb") as fh:
        fh.write(raw)
    with pytest.raises(BundleError):
        load_bundle(copy)   # nothing random is a whole valid manifest


WORD = st.text(min_size=1, max_size=6)


@SETTINGS
@given(doc=st.one_of(JSON, st.fixed_dictionaries(
    {"format": st.sampled_from(["kidrr-vocab/1", "x"]), "tokenizer": st.sampled_from(["kidrr-basic/1", "y"]),
     "words": st.one_of(st.lists(WORD, max_size=8).map(lambda w: list(SPECIALS) + w), JSON)})))
def test_vocabulary_loader(tmp_path_factory, doc):
    path = str(tmp_path_factory.getbasetemp() / "fz-vocab.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    try:
        vocab = Vocabulary.load(path)
    except CheckpointError:
        return
    assert vocab.words[:4] == list(SPECIALS) and len(set(vocab.words)) == len(vocab)
    assert all(isinstance(w, str) and w for w in vocab.words)
    vocab.encode("a dog")   # usable


MODEL_FIELDS = ModelConfig().to_dict()


@SETTINGS
@given(doc=st.one_of(JSON, st.builds(
    lambda fmt, model: {"format": fmt, "model": model}, st.sampled_from(["kidrr-checkpoint/1", "other"]),
    st.one_of(JSON, st.dictionaries(st.sampled_from(sorted(MODEL_FIELDS) + ["bogus"]), st.one_of(JSON, NEAR),
                                    max_size=6)))))
def test_checkpoint_config_loader(tmp_path_factory, doc):
    folder = tmp_path_factory.getbasetemp() / "fz-config"
    folder.mkdir(exist_ok=True)
    with open(folder / "config.json", "w") as fh:
        json.dump(doc, fh)
    try:
        cfg = load_config(str(folder))
    except CheckpointError:
        return
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg   # accepted means every field passes its rule


TRAIN_STATE = {"epoch": 1, "best_rsum": 10.0, "history": [], "train_config": TrainConfig().to_dict(),
               "optimizer": {"param_groups": [], "scalars": {}}}


@SETTINGS
@given(data=st.data(), value=st.one_of(JSON, NEAR), delete=st.booleans())
def test_train_state_loader(tmp_path_factory, data, value, delete):
    folder = tmp_path_factory.getbasetemp() / "fz-state"
    folder.mkdir(exist_ok=True)
    path = data.draw(st.sampled_from(list(_paths(TRAIN_STATE))))
    with open(folder / "train_state.json", "w") as fh:
        json.dump(_mutate(TRAIN_STATE, path, value, delete), fh)
    try:
        state, tcfg = read_train_state(str(folder))
    except CheckpointError:
        return
    assert isinstance(state["epoch"], int) and state["epoch"] >= 0 and isinstance(state["history"], list)
    assert TrainConfig.from_dict(tcfg.to_dict()) == tcfg


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=300),
                     st.lists(st.text(max_size=20), min_size=0, max_size=12).map(lambda c: "\n".join(c).encode()),
                     st.lists(st.text(alphabet="ab \t\r\u2028\x00", max_size=6), max_size=12)
                     .map(lambda c: "\n".join(c).encode())))
def test_caption_file_loader(tmp_path_factory, raw):
    folder = tmp_path_factory.getbasetemp() / "fz-caps"
    folder.mkdir(exist_ok=True)
    n = 2
    np.save(folder / "test_ims.npy", np.zeros((n, 3, 4), np.float32))
    (folder / "test_caps.txt").write_bytes(raw)
    try:
        split = load_split(str(folder), "test")
    except DataError:
        return
    assert len(split.captions) == 5 * len(split.images)
    assert all(isinstance(c, str) and c.strip() and "\n" not in c for c in split.captions)
