"""Kidrr-index / kidrr search: a photo folder with bad files in, ranked file names out."""
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from image_files import photo_folder
from kidrr.images.decode import decode_image
from kidrr.photos.index import main as index_main
from kidrr.photos.search import main as search_main
from kidrr.runtime import open_bundle


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("album")
    good = photo_folder(str(root), 4, seed=21)
    (root / "trip").mkdir()
    Image.new("L", (50, 40), 90).save(root / "trip" / "gray.png")
    frames = [Image.new("RGB", (20, 20), c) for c in ((200, 0, 0), (0, 0, 200))]
    frames[0].save(root / "trip" / "anim.gif", save_all=True, append_images=frames[1:])
    open(root / "corrupt.jpg", "wb").write(b"\xff\xd8\xff\xe0 garbage")
    open(root / "phone.heic", "wb").write(b"\x00\x00\x00\x18ftypheic")
    open(root / "notes.txt", "w").write("not a photo, ignored")
    return str(root), sorted(good + ["trip/gray.png", "trip/anim.gif"])


def _index(bundle, images, out, *extra):
    return CliRunner().invoke(index_main, ["--bundle", bundle, "--images", images, "--out", out, "--threads", "2",
                                           *extra])


def test_index_skips_bad_files_and_search_finds_the_bundle(pixel_bundle, folder, tmp_path):
    from kidrr.gallery import open_gallery
    bundle, _ = pixel_bundle
    images, good = folder
    out = str(tmp_path / "album.gallery")
    result = _index(bundle, images, out)
    assert result.exit_code == 1, result.output                # some files were skipped
    assert "6 of 8 images kept, 2 skipped" in result.output
    gallery = open_gallery(out)
    assert sorted(gallery.ids()) == good                       # no row for corrupt.jpg / phone.heic
    record = json.load(open(os.path.join(out, "kidrr-index.json")))
    assert {s["file"]: s["reason"] for s in record["skipped"]} == {"corrupt.jpg": "corrupt",
                                                                   "phone.heic": "unsupported-format"}
    # kidrr search with no --bundle: the gallery's record names it
    found = CliRunner().invoke(search_main, ["a red circle", "--gallery", out, "-k", "6", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output)["results"]
    assert [h["rank"] for h in hits] == list(range(1, 7)) and sorted(h["file"] for h in hits) == good
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    # reference: the same files encoded in memory (fp32 locals; the gallery stores fp16)
    with open_bundle(bundle, threads=2) as rt:
        ref = rt.encode_pixels([decode_image(os.path.join(images, f)) for f in good], names=good)
        expected = dict(zip(good, rt.score(ref, ["a red circle"])[:, 0].tolist()))
    for h in hits:
        assert h["score"] == pytest.approx(expected[h["file"]], abs=2e-3)
        assert h["path"] == os.path.join(images, h["file"])
    table = CliRunner().invoke(search_main, ["a red circle", "--gallery", out, "-k", "2"])
    assert table.exit_code == 0 and table.output.splitlines()[0].split()[-1] == hits[0]["file"]


def test_append_strict_empty_and_npz(pixel_bundle, folder, tmp_path):
    bundle, _ = pixel_bundle
    images, good = folder
    strict = _index(bundle, images, str(tmp_path / "s.gallery"), "--strict")
    assert strict.exit_code == 2 and "corrupt.jpg" in strict.output
    empty = tmp_path / "empty"
    empty.mkdir()
    open(empty / "readme.txt", "w").write("x")
    none = _index(bundle, str(empty), str(tmp_path / "e.gallery"))
    assert none.exit_code == 2 and "no image files" in none.output
    assert not os.path.exists(tmp_path / "e.gallery")
    # --append indexes only what is new
    part = tmp_path / "part"
    shutil.copytree(images, part)
    os.unlink(part / "corrupt.jpg")
    os.unlink(part / "phone.heic")
    moved = part / good[0]
    hold = tmp_path / "held.png"
    shutil.move(str(moved), str(hold))
    out = str(tmp_path / "grow.gallery")
    assert _index(bundle, str(part), out).exit_code == 0
    shutil.move(str(hold), str(moved))
    again = _index(bundle, str(part), out, "--append")
    assert again.exit_code == 0 and "indexed 1 images" in again.output and "(5 were already there)" in again.output
    from kidrr.gallery import open_gallery
    assert sorted(open_gallery(out).ids()) == good
    # a .npz gallery (v1 with names) is searched the same way
    npz = str(tmp_path / "album.npz")
    assert _index(bundle, str(part), npz).exit_code == 0
    hits = json.loads(CliRunner().invoke(search_main, ["a red circle", "--gallery", npz, "--json"]).output)["results"]
    assert sorted(h["file"] for h in hits) == good


def test_search_refuses_a_changed_bundle(pixel_bundle, folder, tmp_path):
    bundle, _ = pixel_bundle
    images, _ = folder
    out = str(tmp_path / "g.gallery")
    _index(bundle, images, out)
    sidecar = os.path.join(out, "kidrr-index.json")
    record = json.load(open(sidecar))
    record["bundle_id"] = "0" * 64
    open(sidecar, "w").write(json.dumps(record))
    result = CliRunner().invoke(search_main, ["a dog", "--gallery", out])
    assert result.exit_code == 2 and "has changed since" in result.output
    record["bundle"] = str(tmp_path / "gone")
    open(sidecar, "w").write(json.dumps(record))
    result = CliRunner().invoke(search_main, ["a dog", "--gallery", out])
    assert result.exit_code == 2 and "no longer exists" in result.output


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(pixel_bundle, folder, tmp_path):
    bundle, _ = pixel_bundle
    images, good = folder
    album = tmp_path / "album"
    album.mkdir()
    shutil.copy(os.path.join(images, good[0]), album / "ok.png")
    shutil.copy(os.path.join(images, good[0]), os.fsencode(str(album)) + b"/caf\xe9.png")   # Latin-1 name
    out = str(tmp_path / "g")
    result = _index(bundle, str(album), out)
    assert result.exit_code == 1, result.output
    from kidrr.gallery import open_gallery
    assert open_gallery(out).ids() == ["ok.png"]
    record = json.load(open(os.path.join(out, "kidrr-index.json")))
    assert record["skipped"][0]["file"] == "caf\\xe9.png" and record["skipped"][0]["reason"] == "bad-name"


def test_a_failed_first_chunk_leaves_no_gallery_and_bad_outs_are_messages(pixel_bundle, folder, tmp_path):
    bundle, _ = pixel_bundle
    images, good = folder
    out = str(tmp_path / "s.gallery")
    strict = _index(bundle, images, out, "--strict")
    assert strict.exit_code == 2 and "corrupt.jpg" in strict.output
    assert not os.path.exists(out)                             # a rerun needs no new path
    assert _index(bundle, images, out).exit_code == 1
    again = _index(bundle, images, out)                         # an existing gallery: the hint is --append
    assert again.exit_code == 2 and "--append" in again.output
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (str(afile / "g"), "/proc/kidrr-g", str(afile / "g.npz")):
        result = _index(bundle, images, bad)
        assert result.exit_code == 2 and "Traceback" not in result.output and result.exception is None \
            or isinstance(result.exception, SystemExit), (bad, result.output)
        assert "error:" in result.output, (bad, result.output)
