"""Photos in: decoding, the preprocessing graph, the backbone, kidrr-features."""
import io
import json
import os
import struct
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from image_files import photo_folder, scene, write_tsv
from kidrr.errors import DataError, ImageError
from kidrr.images.decode import decode_image
from kidrr.images.preprocess import Preprocessor, preprocessing_graph
from kidrr.images.spec import BACKBONES


# ---- decoding --------------------------------------------------------------------------------
def _save(img, tmp_path, name, **kw):
    path = os.path.join(tmp_path, name)
    img.save(path, **kw)
    return path


def test_modes_become_rgb(tmp_path):
    gray = Image.new("L", (6, 4), 77)
    assert (decode_image(_save(gray, tmp_path, "g.png")) == 77).all()
    pal = Image.new("P", (5, 5), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image(_save(pal, tmp_path, "p.png"))[0, 0].tolist() == [10, 200, 30]
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 64))      # a quarter opaque red on white
    expected = [round(200 * 64 / 255 + 255 * (1 - 64 / 255)), round(255 * (1 - 64 / 255)), round(255 * (1 - 64 / 255))]
    assert np.abs(decode_image(_save(rgba, tmp_path, "a.png"))[1, 1].astype(int) - expected).max() <= 1
    clear_pal = Image.new("P", (3, 3), 0)
    clear_pal.putpalette([9, 9, 9] + [0] * 765)
    clear_pal.info["transparency"] = 0                      # a fully transparent palette entry: white
    assert (decode_image(_save(clear_pal, tmp_path, "t.png", transparency=0)) == 255).all()
    cmyk = Image.new("CMYK", (4, 4), (255, 0, 0, 0))        # pure cyan
    assert decode_image(_save(cmyk, tmp_path, "c.jpg", quality=100))[2, 2].tolist() == pytest.approx([0, 255, 255], abs=3)
    sixteen = Image.fromarray(np.array([[65535, 32896], [0, 257]], dtype=np.uint16))
    out = decode_image(_save(sixteen, tmp_path, "s16.png"))
    assert out[..., 0].tolist() == [[255, 128], [0, 1]] and out.dtype == np.uint8 and out.shape == (2, 2, 3)


def test_exif_orientation_and_animated_gif(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 8, 8))                   # red marker top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6                                        # "rotate 90 CW to display"
    out = decode_image(_save(img, tmp_path, "o.jpg", exif=exif, quality=95))
    assert out.shape == (40, 20, 3)                         # displayed upright: 20 wide, 40 tall
    assert out[2, 17, 0] > 200 and out[2, 2, 0] < 60        # the marker is now top-right
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 10, 10), (10, 250, 10))]
    gif = os.path.join(tmp_path, "anim.gif")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(gif).n_frames == 2
    first = decode_image(gif)
    assert first[4, 4, 0] > 200 and first[4, 4, 1] < 60


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height and whose data is one empty deflate block."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                 + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case,reason", [
    ("text.jpg", "not-an-image"), ("truncated.jpg", "corrupt"), ("photo.heic", "unsupported-format"),
    ("drawing.svg", "unsupported-format"), ("svg-as.png", "not-an-image"), ("empty.png", "empty"),
    ("huge-header.png", "too-large"), ("over-limit.png", "too-large"),
])
def test_bad_files_raise_typed_errors(tmp_path, case, reason):
    path = os.path.join(tmp_path, case)
    kw = {}
    if case == "text.jpg":
        open(path, "w").write("this is not a JPEG")
    elif case == "truncated.jpg":
        buf = io.BytesIO()
        scene(200, 150, 1).save(buf, format="JPEG", quality=90)
        open(path, "wb").write(buf.getvalue()[:len(buf.getvalue()) // 2])
    elif case in ("photo.heic",):
        open(path, "wb").write(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    elif case in ("drawing.svg", "svg-as.png"):
        open(path, "w").write('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    elif case == "empty.png":
        open(path, "wb").close()
    elif case == "huge-header.png":
        _png_header_only(path, 30000, 30000)               # 900 MP claimed; refused before any decoding
    elif case == "over-limit.png":
        scene(120, 100, 2).save(path)
        kw["max_pixels"] = 100 * 100
    with pytest.raises(ImageError) as info:
        decode_image(path, **kw)
    assert info.value.reason == reason
    assert case in str(info.value)


def test_one_pixel_image_is_a_flat_picture(tmp_path):
    path = _save(Image.new("RGB", (1, 1), (12, 34, 56)), tmp_path, "dot.png")
    pre = Preprocessor(preprocessing_graph("efficientnet-lite0"))
    out = pre(decode_image(path))
    expected = (np.array([12, 34, 56], np.float32) - 127) / 128
    assert out.shape == (3, 224, 224)
    assert np.abs(out - expected[:, None, None]).max() < 1e-6


# ---- preprocessing graph vs an independent reference ------------------------------------------
def _triangle_weights(n_in, n_out):
    """Pillow's BILINEAR resampling matrix (Resample.c precompute_coeffs), written from its source."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = np.arange(lo, hi)
        w = np.clip(1 - np.abs((x - centre + 0.5) / support), 0, None)
        weights[i, lo:hi] = w / w.sum()
    return weights


@pytest.mark.parametrize("height,width", [(97, 130), (480, 640), (30, 500), (224, 224), (1, 7)])
def test_preprocess_graph_is_pillow_bilinear_on_floats(height, width):
    rng = np.random.default_rng(height * width)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)   # noise: the hardest case
    graph_out = Preprocessor(preprocessing_graph("efficientnet-lite0"))(pixels)
    rows, cols = _triangle_weights(height, 224), _triangle_weights(width, 224)
    ref = np.stack([rows @ pixels[..., c].astype(np.float64) @ cols.T for c in range(3)])
    ref = (ref - 127.0) / 128.0
    assert np.abs(graph_out - ref).max() < 0.01 / 128       # within 0.01 grey levels
    pil = np.stack([np.asarray(Image.fromarray(pixels[..., c].astype(np.float32), mode="F")
                               .resize((224, 224), Image.BILINEAR)) for c in range(3)])
    assert np.abs(graph_out - (pil - 127) / 128).max() < 0.01 / 128


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_preprocess_refuses_bad_arrays(bad):
    with pytest.raises(ImageError):
        Preprocessor(preprocessing_graph("efficientnet-lite0"))(bad)


# ---- the backbone --------------------------------------------------------------------------------
def test_every_backbone_grid_matches_its_spec():
    """The package's own size arithmetic (what its static 'same' padding is built from) agrees with
    the spec table for Lite1/Lite2 (Lite0 is run against the package in test_images_bundle.py)."""
    from kidrr.backbone import build_network
    for name, spec in BACKBONES.items():
        net = build_network(name)
        assert list(net.feature_output_image_size) == [spec.grid, spec.grid], name
        assert net._conv_head.out_channels == spec.feature_size, name
        assert spec.regions == spec.grid ** 2


# ---- kidrr features ----------------------------------------------------------------------------------
def _features_job(tmp_path):
    folder = os.path.join(tmp_path, "photos")
    names = photo_folder(folder, 7, seed=3)
    open(os.path.join(folder, "broken.jpg"), "w").write("not a jpeg")
    tsv = os.path.join(tmp_path, "caps.tsv")
    write_tsv(tsv, names[:3] + ["broken.jpg", "ghost.jpg"] + names[3:])
    with open(tsv, "a") as fh:
        fh.write("photo01.jpg\tone caption too many for photo01\n")   # a sixth caption: first five kept
    return folder, tsv, names


def test_kidrr_features_resumes_and_skips(tmp_path, in_backbone_cache):
    import torch
    from kidrr.backbone import load_backbone
    from kidrr.data import load_split
    from kidrr.images.features import extract_features
    folder, tsv, names = _features_job(tmp_path)
    out = os.path.join(tmp_path, "data")
    partial = extract_features(folder, tsv, out, "train", batch_size=3, progress=False, stop_after=1)
    assert partial["interrupted"]
    assert not os.path.exists(os.path.join(out, "train_ims.npy"))          # nothing looks complete
    assert not os.path.exists(os.path.join(out, "train_caps.txt"))
    record = extract_features(folder, tsv, out, "train", batch_size=3, progress=False)
    ims = np.load(os.path.join(out, "train_ims.npy"))
    assert ims.dtype == np.float16 and ims.shape == (7, 49, 1280)         # no row for broken / ghost
    ids = open(os.path.join(out, "train_ids.txt")).read().split()
    assert ids == names
    caps = open(os.path.join(out, "train_caps.txt")).read().splitlines()
    assert len(caps) == 35 and caps[5] == "picture photo01 caption 0" and "too many" not in " ".join(caps)
    assert {s["file"]: s["reason"] for s in record["skipped"]} == {"broken.jpg": "not-an-image", "ghost.jpg": "missing"}
    assert sorted(os.listdir(out)) == ["train_caps.txt", "train_features.json", "train_ids.txt", "train_ims.npy",
                                       "train_skipped.tsv"]                 # no partial files left
    # rows written before and after the interrupt equal the backbone run now on those files
    pre = Preprocessor(preprocessing_graph("efficientnet-lite0"))
    with torch.no_grad():
        direct = load_backbone("efficientnet-lite0")(torch.from_numpy(
            pre.batch([decode_image(os.path.join(folder, names[i])) for i in (0, 5)]))).numpy()
    assert np.abs(ims[[0, 5]].astype(np.float32) - direct).max() <= 2e-3 * max(1.0, np.abs(direct).max())
    split = load_split(out, "train")
    assert len(split.images) == 7 and split.feature_size == 1280


def test_kidrr_features_cli_exit_codes(tmp_path, in_backbone_cache):
    from click.testing import CliRunner
    from kidrr.images.features import main
    folder, tsv, names = _features_job(tmp_path)
    runner = CliRunner()
    strict = runner.invoke(main, ["--images", folder, "--captions", tsv, "--out", str(tmp_path / "s"), "--strict"])
    assert strict.exit_code == 2 and "ghost.jpg" in strict.output      # the first bad entry: a missing file
    assert not os.path.exists(tmp_path / "s" / "train_ims.npy")
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(main, ["--images", str(empty), "--captions", tsv, "--out", str(tmp_path / "n")])
    assert none.exit_code == 2 and "no usable image" in none.output


def test_published_caption_layout_and_duplicates(tmp_path):
    from kidrr.images.batch import SkipReport
    from kidrr.images.caption_files import read_caption_file
    from kidrr.images.features import plan_images
    folder = os.path.join(tmp_path, "photos")
    names = photo_folder(folder, 2)
    caps = os.path.join(tmp_path, "dev_caps.txt")
    open(caps, "w").write("".join(f"c{i}\n" for i in range(15)))
    with pytest.raises(DataError, match="dev_ids.txt"):
        read_caption_file(caps)
    open(os.path.join(tmp_path, "dev_ids.txt"), "w").write(f"{names[0]}\n{names[1]}\n{names[0]}\n")
    report = SkipReport()
    plan = plan_images(folder, read_caption_file(caps), report)
    assert [p[0] for p in plan] == names and plan[1][2] == ["c5", "c6", "c7", "c8", "c9"]
    assert report.skipped[0][:2] == (names[0], "duplicate")
    open(os.path.join(tmp_path, "dev_ids.txt"), "w").write(f"{names[0]}\n")
    with pytest.raises(DataError, match="5 captions per image"):
        read_caption_file(caps)
    open(os.path.join(tmp_path, "bad.tsv"), "w").write("a.jpg\tcap\nno tab here\n")
    with pytest.raises(DataError, match="line 2"):
        read_caption_file(os.path.join(tmp_path, "bad.tsv"))


def test_training_carries_the_features_record(features_data, tmp_path):
    from kidrr.checkpoint import load_config
    from kidrr.train import run
    run(features_data, os.path.join(tmp_path, "run"), "small",
        model_set=("embed_size=32", "sim_size=16", "knowledge_nodes=2", "kgid_steps=1", "rgr_steps=1"),
        train_set=("batch_size=4",), epochs=1)
    cfg = load_config(os.path.join(tmp_path, "run", "last"))
    with open(os.path.join(features_data, "train_features.json")) as fh:
        record = json.load(fh)
    assert cfg.feature_size == 1280
    assert cfg.image_backbone["backbone"] == "efficientnet-lite0"
    assert cfg.image_backbone["weights_sha256"] == record["weights_sha256"]
    assert cfg.image_backbone["preprocessing"] == record["preprocessing"]
