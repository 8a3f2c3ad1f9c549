"""Thumbnails inside gallery segments: written by kidrr index, carried by remove / compact, checked by
verify, refused when damaged or not JPEG (docs/gallery.md, docs/web.md)."""
import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import gallery_helpers as gh
from kidrr.errors import DataError, InputError
from kidrr.gallery import GalleryWriter, open_gallery, verify
from kidrr.gallery.cli import main as gallery_main
from kidrr.images.thumbnail import make_thumbnail


def _rows(gal, ids):
    found = gal.find(ids)
    return [found[i] for i in ids]


def test_thumbnails_round_trip_through_remove_and_compact(tmp_path):
    folder = str(tmp_path / "g")
    _, _, ids = gh.make_gallery(folder, n=30, batches=3, thumbnails=True, metadata=True)
    want = dict(zip(ids, gh.item_thumbs(30)))
    gal = open_gallery(folder)
    assert gal.has_thumbnails and verify(gal) == []
    assert gal.thumbnails(_rows(gal, ids)) == [want[i] for i in ids]
    with GalleryWriter(folder) as w:
        w.remove(ids[3:9])
        kept = [i for i in ids if i not in ids[3:9]]
        assert open_gallery(folder).thumbnails(_rows(open_gallery(folder), kept)) == [want[i] for i in kept]
        w.compact()
    gal = open_gallery(folder)
    assert len(gal.segments) == 1 and verify(gal) == []
    assert gal.thumbnails(_rows(gal, kept)) == [want[i] for i in kept]
    assert gal.manifest.segments[0].thumbnails["count"] == sum(want[i] is not None for i in kept)
    info = CliRunner().invoke(gallery_main, ["info", folder, "--json"])
    assert json.loads(info.output)["thumbnails"] == gal.manifest.segments[0].thumbnails["count"]


def test_a_gallery_without_thumbnails_has_no_thumbnail_files(tmp_path):
    folder = str(tmp_path / "g")
    _, _, ids = gh.make_gallery(folder, n=10, batches=1)
    gal = open_gallery(folder)
    assert not gal.has_thumbnails and gal.thumbnails(_rows(gal, ids[:2])) == [None, None]
    assert not any("thumbnail" in f for f in os.listdir(os.path.join(folder, gal.segments[0].name)))
    assert "thumbnails" not in json.load(open(os.path.join(folder, "manifest.json")))["segments"][0]


@pytest.mark.parametrize("bad,match", [([b"GIF89a" + b"\0" * 20], "must be a JPEG"),
                                       ([b"\xff\xd8\xff" + b"\0" * (300 << 10)], "at most"),
                                       (["not bytes"], "must be bytes"),
                                       ([b"\xff\xd8\xff\xe0", None], "list of 1")])
def test_bad_thumbnails_are_refused_before_anything_is_written(tmp_path, bad, match):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=10, batches=1)
    before = (open(os.path.join(folder, "manifest.json"), "rb").read(), sorted(os.listdir(folder)))
    g, l, ids = gh.items(1, start=100)
    with GalleryWriter(folder) as w, pytest.raises(InputError, match=match):
        w.add(g, l, ids, thumbnails=bad)
    assert (open(os.path.join(folder, "manifest.json"), "rb").read(), sorted(os.listdir(folder))) == before


def test_verify_and_readers_catch_damaged_thumbnails(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=12, batches=1, thumbnails=True)
    seg = os.path.join(folder, open_gallery(folder).segments[0].name)
    blob = os.path.join(seg, "thumbnails.jpgs")
    data = bytearray(open(blob, "rb").read())
    data[0] ^= 0xFF                                      # the first JPEG no longer starts with SOI
    open(blob, "wb").write(bytes(data))
    problems = verify(open_gallery(folder))
    assert any("thumbnails.jpgs: sha256 mismatch" in p for p in problems)
    with pytest.raises(DataError, match="not a JPEG"):
        open_gallery(folder).thumbnails([0])
    open(blob, "wb").write(bytes(data[:-5]))             # truncated: refused at open
    with pytest.raises(DataError, match="thumbnails.jpgs is .* bytes"):
        open_gallery(folder)
    os.unlink(blob)
    os.symlink("/etc/passwd", blob)                      # a link where a segment file belongs: never followed
    with pytest.raises(DataError):
        open_gallery(folder)
    assert any("thumbnails.jpgs" in p for p in verify_problems(folder))


def verify_problems(folder):
    try:
        return verify(open_gallery(folder))
    except DataError as exc:
        return [str(exc)]


def test_a_manifest_with_a_bad_thumbnails_entry_is_refused(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=6, batches=1, thumbnails=True)
    path = os.path.join(folder, "manifest.json")
    doc = json.load(open(path))
    for bad in ({"count": 0, "files": doc["segments"][0]["thumbnails"]["files"]},
                {"count": 2, "files": {"../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}},
                "yes"):
        doc["segments"][0]["thumbnails"] = bad
        open(path, "w").write(json.dumps(doc))
        with pytest.raises(DataError, match="thumbnails"):
            open_gallery(folder)


def _jpeg_with_exif(width, height, orientation):
    img = Image.new("RGB", (width, height), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, width // 4, height))     # a blue band on the left: shows the rotation
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "SecretCam"                               # Make: must not survive into the thumbnail
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_make_thumbnail_applies_orientation_bounds_the_side_and_strips_metadata(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_with_exif(600, 300, 6))           # 6: shown rotated 90 degrees clockwise
    thumb = make_thumbnail(str(path))
    img = Image.open(io.BytesIO(thumb))
    assert img.format == "JPEG" and img.size == (128, 256)   # displayed 300 x 600, longest side 256
    assert not img.getexif() and "exif" not in img.info and "icc_profile" not in img.info
    assert b"SecretCam" not in thumb
    top = np.asarray(img.convert("RGB"))[:20].mean(axis=(0, 1))
    assert top[2] > top[0]                                   # the band is on top after rotating clockwise
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 20), (0, 255, 0)).save(small)
    assert Image.open(io.BytesIO(make_thumbnail(str(small)))).size == (40, 20)   # never enlarged


def test_make_thumbnail_refuses_bombs_and_corrupt_files(tmp_path):
    from kidrr.errors import ImageError
    bomb = tmp_path / "bomb.png"
    Image.new("1", (6000, 5000)).save(bomb)                  # 30 MP in a few KB
    with pytest.raises(ImageError, match="over the limit") as err:
        make_thumbnail(str(bomb), max_pixels=24_000_000)
    assert err.value.reason == "too-large"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    with pytest.raises(ImageError):
        make_thumbnail(str(bad))


def test_kidrr_index_stores_thumbnails_unless_told_not_to(pixel_bundle, tmp_path):
    from image_files import photo_folder
    from kidrr.photos.index import main as index_main
    images = tmp_path / "album"
    images.mkdir()
    names = photo_folder(str(images), 3, seed=5)
    (images / "turned.jpg").write_bytes(_jpeg_with_exif(600, 300, 6))
    bomb = images / "bomb.png"
    Image.new("1", (21000, 20000)).save(bomb)                # over the indexing limit: skipped and reported
    runs = {}
    for flag in ([], ["--no-thumbnails"]):
        out = str(tmp_path / f"g{len(flag)}")
        result = CliRunner().invoke(index_main, ["--bundle", pixel_bundle[0], "--images", str(images), "--out", out,
                                                 "--threads", "2", *flag])
        assert result.exit_code == 1 and "bomb.png" in result.output, result.output
        runs[bool(flag)] = open_gallery(out)
    gal = runs[False]
    ids = sorted(names + ["turned.jpg"])
    assert sorted(gal.ids()) == ids and verify(gal) == []
    thumbs = dict(zip(ids, gal.thumbnails(_rows(gal, ids))))
    assert thumbs["turned.jpg"] == make_thumbnail(str(images / "turned.jpg"))
    assert Image.open(io.BytesIO(thumbs["turned.jpg"])).size == (128, 256)
    assert all(max(Image.open(io.BytesIO(t)).size) <= 256 for t in thumbs.values())
    assert json.load(open(os.path.join(gal.folder, "kidrr-index.json")))["thumbnails"] == 4
    assert not runs[True].has_thumbnails
