"""Bad input and broken bundles: typed errors with messages that say what was wrong."""
import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest

import test_runtime_helpers as helpers
from kidrr.errors import BackendUnavailable, BundleError, DataError, InputError
from kidrr.optional import tensorrt_missing
from kidrr.runtime import CaptionTruncatedWarning, Gallery, load_bundle, open_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime_err")
    return helpers.make_bundle(helpers.small_checkpoint(root / "ckpt"), root / "bundle")


@pytest.fixture(scope="module")
def rt(bundle):
    with open_bundle(bundle, threads=1) as r:
        yield r


@pytest.fixture
def copy(bundle, tmp_path):
    dst = str(tmp_path / "b")
    shutil.copytree(bundle, dst)
    return dst


@pytest.mark.parametrize("name", ["similarity.onnx", "vocab.json", "text_encoder.onnx"])
def test_missing_or_corrupted_file_named(copy, name):
    path = os.path.join(copy, name)
    with open(path, "r+b") as fh:   # flip one byte in the middle
        fh.seek(os.path.getsize(path) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=f"{name}.*sha256"):
        load_bundle(copy)
    os.unlink(path)
    with pytest.raises(BundleError, match=f"{name} is missing"):
        open_bundle(copy)


def test_unknown_format_and_missing_manifest(copy, tmp_path):
    path = os.path.join(copy, "manifest.json")
    manifest = json.load(open(path))
    manifest["format"] = "kidrr-bundle/99"
    json.dump(manifest, open(path, "w"))
    with pytest.raises(BundleError, match="kidrr-bundle/99.*unknown"):
        load_bundle(copy)
    open(path, "w").write("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)
    os.unlink(path)
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(str(tmp_path / "nowhere"))


def test_backends_unknown_or_absent(bundle):
    with pytest.raises(InputError, match="unknown backend"):
        open_bundle(bundle, backend="tpu")
    if tensorrt_missing() is None:
        pytest.skip("the real tensorrt is installed here")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        open_bundle(bundle, backend="trt")


@pytest.mark.parametrize("features,match", [
    (np.zeros((3, 24), np.float32), "3-D"),
    (np.zeros((2, 5, 23), np.float32), "feature size 23"),
    (np.zeros((2, 5, 24), np.int32), "floating point"),
    (np.zeros((0, 5, 24), np.float32), "empty"),
])
def test_bad_feature_arrays(rt, features, match):
    with pytest.raises(InputError, match=match):
        rt.encode_images(features)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(rt, bad):
    feats = helpers.random_features(4)
    feats[2, 1, 3] = bad
    with pytest.raises(InputError, match=r"NaN or inf.*\[2\]"):
        rt.encode_images(feats)


@pytest.mark.parametrize("captions,match", [
    ([], "no captions"),
    ("a dog", "one string"),
    (["a dog", "   "], "caption 1.*empty"),
    (["a dog", 3], "strings"),
    (["zebra quokka xylophone"], "no word the model knows"),
])
def test_bad_captions(rt, captions, match):
    with pytest.raises(InputError, match=match):
        rt.encode_texts(captions)


def test_overlong_caption_refused_or_truncated(rt):
    long = "a dog " * 20
    with pytest.raises(InputError, match="max_caption_len 12"):
        rt.encode_texts(["a dog", long])
    with pytest.warns(CaptionTruncatedWarning, match="1 caption"):
        index = rt.encode_texts(["a dog", long], on_long="truncate")
    assert index.lengths.max() == 12


def test_bad_k_and_empty_gallery(rt):
    gallery = rt.encode_images(helpers.random_features(4))
    for k in (0, -1, 5):
        with pytest.raises(InputError, match="k must be in 1..4"):
            rt.search_text("a dog", k, gallery=gallery)
    with pytest.raises(InputError, match="integer"):
        rt.search_text("a dog", 2.5, gallery=gallery)
    with pytest.raises(InputError, match="k'=1 is smaller than k=2"):
        rt.search_text("a dog", 2, gallery=gallery, shortlist=1)
    empty = Gallery(np.zeros((0, 5, 32), np.float32), np.zeros((0, 32), np.float32), rt.bundle_id)
    with pytest.raises(InputError, match="empty"):
        rt.search_text("a dog", 1, gallery=empty)
    with pytest.raises(InputError, match="empty"):
        rt.score(empty, ["a dog"])
    with pytest.raises(InputError, match="no caption index"):
        open_bundle(rt.bundle.path).search_image(helpers.random_features(1)[0], 1)


def test_corrupted_gallery_file(rt, tmp_path):
    path = tmp_path / "g.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a kidrr gallery"):
        rt.load_gallery(str(path))
    with pytest.raises(InputError, match="does not exist"):
        rt.load_gallery(str(tmp_path / "none.npz"))


def test_thread_count_must_be_valid(bundle):
    with pytest.raises(InputError, match="threads"):
        open_bundle(bundle, threads=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_bundle(bundle, threads=1).close()


def test_tensorrt_stubs_alone_are_not_tensorrt(tmp_path, monkeypatch):
    # tensorrt-stubs installs tensorrt/*.pyi without __init__.py: `import tensorrt` then succeeds as an
    # empty namespace package, which must not count as TensorRT.
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    reason = tensorrt_missing()
    assert reason is not None and "stubs" in reason
    from kidrr.optional import import_tensorrt
    with pytest.raises(BackendUnavailable, match="stubs"):
        import_tensorrt()
