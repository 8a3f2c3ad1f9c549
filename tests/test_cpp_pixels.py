"""Photos in through the C ABI (C side): RGB8 pixels (height, width, stride)
through the bundle's preprocess.onnx + backbone.onnx, JPEGs decoded in C++ with libjpeg-turbo.

The reference is the Python side on the same files: kidrr.images.decode (Pillow) for the pixels,
then the bundle's preprocessing graph (kidrr.images.preprocess) and backbone.onnx through ONNX
Runtime. Pixels must be identical; features equal within 1e-5 (the bound kidrr holds).
"""
import os

import numpy as np
import pytest

import test_cpp_support as cpp
from image_files import scene


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i, (w, h, mode) in enumerate([(320, 240, "RGB"), (97, 151, "RGB"), (64, 48, "L")]):
        path = str(folder / f"photo{i}.jpg")
        scene(w, h, seed=40 + i).convert(mode).save(path, quality=88)   # 4:2:0 chroma: fancy upsampling matters
        paths.append(path)
    return paths


def _python_features(bundle_dir, pixels):
    import onnxruntime as ort
    from kidrr.images.preprocess import Preprocessor
    pre = Preprocessor(os.path.join(bundle_dir, "preprocess.onnx"), threads=1)
    session = ort.InferenceSession(os.path.join(bundle_dir, "backbone.onnx"), providers=["CPUExecutionProvider"])
    images = pre(pixels)
    images = images[None] if images.ndim == 3 else images   # one (1, 3, S, S) batch, as the C side runs it
    return session.run(None, {session.get_inputs()[0].name: images})[0][0]


def test_cpp_pixels_and_features_equal_python(built, pixel_bundle, jpegs, tmp_path):
    from kidrr.images.decode import decode_image
    bundle_dir = pixel_bundle[0]
    worst = 0.0
    for path in jpegs:
        raw = tmp_path / "pixels.raw"
        proc = cpp.run([os.path.join(built, "kidrr_tool"), "features", bundle_dir, path, str(raw)])
        assert proc.returncode == 0, proc.stderr
        head, values = proc.stdout.splitlines()
        h, w, regions, fsize = map(int, head.split())
        want_pixels = decode_image(path)
        assert want_pixels.shape == (h, w, 3)
        got_pixels = np.fromfile(raw, dtype=np.uint8).reshape(h, w, 3)
        np.testing.assert_array_equal(got_pixels, want_pixels, err_msg=f"{path}: libjpeg-turbo vs Pillow pixels")
        got = np.array(values.split(), dtype=np.float32).reshape(regions, fsize)
        want = _python_features(bundle_dir, want_pixels)
        assert want.shape == got.shape and float(np.abs(want).max()) > 1e-3  # real features, not zeros
        worst = max(worst, float(np.abs(got - want).max()))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=path)
    print(f"\nC++ vs Python features: max |diff| {worst:.2e} over {len(jpegs)} JPEGs")


def test_kidrr_index_writes_a_gallery_python_reads(built, pixel_bundle, jpegs, tmp_path):
    """kidrr_index BUNDLE IMAGE_DIR OUT: a format-2 folder that kidrr.gallery opens and verifies,
    with the file names as ids, whose vectors equal the Python runtime's encode_image_files of the
    same files (within 1e-5); a file that is not a JPEG is skipped and named (exit 1)."""
    import shutil
    from kidrr.gallery import open_gallery, verify
    from kidrr.runtime import open_bundle
    images = tmp_path / "photos"
    images.mkdir()
    for p in jpegs:
        shutil.copy(p, images / os.path.basename(p))
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "photos.gallery"
    proc = cpp.run([os.path.join(built, "kidrr_index"), pixel_bundle[0], str(images), str(out)])
    assert proc.returncode == 1 and "skipped broken.jpg" in proc.stderr, proc.stdout + proc.stderr
    proc2 = cpp.run([os.path.join(built, "kidrr_index"), pixel_bundle[0], str(images), str(out)])
    assert proc2.returncode == 2 and "already exists" in proc2.stderr  # never overwrites
    names = sorted(os.path.basename(p) for p in jpegs)
    exact = tmp_path / "photos-fp32.gallery"
    proc3 = cpp.run([os.path.join(built, "kidrr_index"), "--locals-dtype", "fp32", pixel_bundle[0], str(images), str(exact)])
    assert proc3.returncode == 1, proc3.stdout + proc3.stderr
    with open_bundle(pixel_bundle[0], threads=1) as rt:
        disk, disk32 = open_gallery(str(out), bundle_id=rt.bundle_id), open_gallery(str(exact), bundle_id=rt.bundle_id)
        assert verify(disk) == [] and verify(disk32) == [] and disk.ids() == names == disk32.ids()
        assert (disk.manifest.locals_dtype, disk32.manifest.locals_dtype) == ("fp16", "fp32")   # fp16: the default
        want = rt.encode_image_files([str(images / n) for n in names], names=names)
        locs, globs = disk32.gather(np.arange(len(names)))
        np.testing.assert_allclose(globs, want.globals, atol=1e-5, rtol=0)
        np.testing.assert_allclose(locs, want.locals, atol=1e-5, rtol=0)
        # The fp16 folder holds exactly numpy's rounding of the same (deterministic) C++ locals.
        halves = np.asarray(disk.segments[0].locals)
        np.testing.assert_array_equal(halves.view("<u2"), locs.astype(np.float16).view("<u2"))
        caption = "a red circle"
        got = cpp.run([os.path.join(built, "kidrr_search"), pixel_bundle[0], str(out), caption, "-k", "3"])
        hits = [line.split("\t") for line in got.stdout.splitlines() if not line.startswith("#")]
        ref = rt.search_text(caption, 3, gallery=want)
        assert [h[3][3:] for h in hits] == [label for label, _ in ref], got.stdout


def test_kidrr_index_turns_exif_orientations_upright_and_names_skips(built, pixel_bundle, tmp_path):
    """Phone photos carry their rotation in EXIF: kidrr_index must turn them upright exactly as the
    Python runtime does (Pillow's exif_transpose), or its features would silently differ. CMYK and
    over-limit JPEGs are skipped with their reason, never encoded."""
    from PIL import Image
    from kidrr.gallery import open_gallery
    from kidrr.runtime import open_bundle
    images = tmp_path / "photos"
    images.mkdir()
    names = []
    for orientation in range(1, 9):      # a non-square picture: every orientation gives other pixels
        exif = Image.Exif()
        exif[0x0112] = orientation
        name = f"o{orientation}.jpg"
        scene(120, 72, seed=60).save(images / name, quality=90, exif=exif.tobytes())   # one picture, 8 ways
        names.append(name)
    Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(images / "z_cmyk.jpg")
    out = tmp_path / "oriented.gallery"        # fp32 locals: compared with Python's at 1e-5
    proc = cpp.run([os.path.join(built, "kidrr_index"), "--locals-dtype", "fp32", pixel_bundle[0], str(images), str(out)])
    assert proc.returncode == 1 and "skipped z_cmyk.jpg: a CMYK JPEG" in proc.stderr, proc.stdout + proc.stderr
    with open_bundle(pixel_bundle[0], threads=1) as rt:
        disk = open_gallery(str(out), bundle_id=rt.bundle_id)
        assert disk.ids() == names
        want = rt.encode_image_files([str(images / n) for n in names], names=names)
        locs, globs = disk.gather(np.arange(len(names)))
        np.testing.assert_allclose(globs, want.globals, atol=1e-5, rtol=0)
        np.testing.assert_allclose(locs, want.locals, atol=1e-5, rtol=0)
        # and the orientation mattered: the upright and the rotated copies of one picture differ
        assert min(float(np.abs(globs[0] - globs[i]).max()) for i in range(1, 8)) > 1e-3
