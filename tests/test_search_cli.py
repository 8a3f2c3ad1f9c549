"""kidrr index metadata (EXIF + sidecar), kidrr search --like / --like-id / --where / --dedup,
kidrr-gallery add --metadata / duplicates: what users type, and what they get for bad input."""
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from image_files import photo_folder, scene
from kidrr.gallery import open_gallery
from kidrr.cli import load_verb
from kidrr.photos.index import main as index_main
from kidrr.photos.search import main as search_main

gallery_main = load_verb("gallery")    # with its add / search shortcuts


@pytest.fixture(scope="module")
def album(tmp_path_factory, pixel_bundle):
    """A folder: 4 photos, one with EXIF, one exact copy in a sub-folder; indexed with a sidecar."""
    root = tmp_path_factory.mktemp("album")
    images = root / "photos"
    names = photo_folder(str(images), 4, seed=3)
    exif = Image.Exif()
    exif[271], exif[272], exif[306] = "Canon", "EOS 5D", "2019:07:04 10:30:00"
    scene(64, 48, 77).save(images / "exif.jpg", exif=exif, quality=90)
    (images / "trip").mkdir()
    shutil.copy(images / names[0], images / "trip" / "copy.png")
    sidecar = root / "meta.csv"
    sidecar.write_text("file,album,year\n" + f"{names[0]},beach,2019\n{names[1]},city,2020\nexif.jpg,beach,2018\n",
                       encoding="utf-8")
    out = str(root / "g")
    result = CliRunner().invoke(index_main, ["--bundle", pixel_bundle[0], "--images", str(images), "--out", out,
                                             "--threads", "2", "--metadata", str(sidecar)])
    assert result.exit_code == 0, result.output
    return str(images), out, names


def _search(*args):
    result = CliRunner().invoke(search_main, [*args, "--json"])
    return result.exit_code, (json.loads(result.output) if result.exit_code == 0 else result.output)


def test_index_records_exif_folder_size_and_the_sidecar(album):
    images, out, names = album
    gal = open_gallery(out)
    meta = dict(zip(gal.ids(), gal.metadata(np.arange(len(gal)))))
    assert meta["exif.jpg"] == {"album": "beach", "camera": "Canon EOS 5D", "taken": "2019-07-04T10:30:00",
                                "width": 64, "height": 48, "year": 2018}
    assert meta["trip/copy.png"]["folder"] == "trip" and "album" not in meta["trip/copy.png"]
    assert meta[names[1]]["album"] == "city" and meta[names[1]]["year"] == 2020
    assert gal.fields["taken"] == "date" and gal.fields["year"] == "number"


def test_search_by_photo_by_id_with_filters_and_dedup(album):
    images, out, names = album
    code, doc = _search("--gallery", out, "--like", os.path.join(images, names[0]), "-k", "3")
    assert code == 0, doc
    top = [h["file"] for h in doc["results"]]
    assert set(top[:2]) == {names[0], "trip/copy.png"} and doc["results"][0]["score"] == pytest.approx(1, abs=1e-3)
    code, doc = _search("--gallery", out, "--like-id", names[0], "-k", "2")
    assert code == 0 and doc["results"][0]["file"] == "trip/copy.png" and names[0] not in {
        h["file"] for h in doc["results"]}
    code, doc = _search("--gallery", out, "--like", os.path.join(images, names[0]), "-k", "3", "--dedup")
    files = [h["file"] for h in doc["results"]]
    assert code == 0 and len(files) == 3 and not {names[0], "trip/copy.png"} <= set(files)
    code, doc = _search("a red circle", "--gallery", out, "-k", "5", "--where", '{"album": "beach"}')
    assert code == 0 and sorted(h["file"] for h in doc["results"]) == sorted([names[0], "exif.jpg"])
    assert all(h["metadata"]["album"] == "beach" for h in doc["results"])
    code, doc = _search("a red circle", "--gallery", out, "-k", "5", "--where",
                        '{"taken": {"gte": "2019-01-01"}, "camera": {"in": ["Canon EOS 5D"]}}')
    assert code == 0 and [h["file"] for h in doc["results"]] == ["exif.jpg"]


@pytest.mark.parametrize("args,message", [
    (["--like-id", "nope.jpg"], "no item 'nope.jpg'"),
    (["--where", '{"albun": "beach"}', "a dog"], "no metadata field 'albun'"),
    (["--where", '{"album": {"gte": 3}}', "a dog"], "ranges"),
    (["--where", "{album: beach}", "a dog"], "not valid JSON"),
    (["--like", "missing.jpg"], "no such photo"),
    (["a dog", "--like-id", "x"], "give one of"),
])
def test_bad_search_input_is_a_message(album, args, message):
    _, out, _ = album
    result = CliRunner().invoke(search_main, ["--gallery", out, *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_bad_sidecars_are_refused_before_anything_is_written(album, tmp_path, pixel_bundle):
    images, _, names = album
    cases = {"missing.csv": (b"file,album\nnot-there.jpg,beach\n", "not files in"),
             "latin1.csv": ("file,album\n" + names[0] + ",caf\xe9\n").encode("latin-1"),
             "nested.jsonl": (json.dumps({"file": names[0], "x": {"y": 1}}).encode(), "no nested objects"),
             "huge.jsonl": (json.dumps({"file": names[0], "x": "y" * 10_000_000}).encode(), "at most"),
             "deep.jsonl": (b'{"file": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not a JSON object"),
             "nofile.csv": (b"name,album\na,b\n", "`file`")}
    for name, content in cases.items():
        data, message = content if isinstance(content, tuple) else (content, "not UTF-8")
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"g-{name}"
        result = CliRunner().invoke(index_main, ["--bundle", pixel_bundle[0], "--images", images, "--out", str(out),
                                                 "--metadata", str(tmp_path / name)])
        assert result.exit_code == 2 and message in result.output, (name, result.output)
        assert not out.exists()


def test_gallery_add_metadata_and_duplicates(tmp_path):
    import gallery_helpers as gh
    from kidrr.gallery import create_gallery
    folder = str(tmp_path / "g")
    create_gallery(folder, gh.BUNDLE_ID, 3, 8, "fp32")
    g, l, ids = gh.items(30, seed=2)
    g[20:25] = g[:5] + 1e-3                  # five near-copies
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    for name, arr in (("g.npy", g), ("l.npy", l)):
        np.save(tmp_path / name, arr)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"file": i, "n": k, "tags": ["a", "b"][:k % 3]})
                                                for k, i in enumerate(ids)) + "\n")
    run = CliRunner().invoke
    base = ["add", folder, "--globals", str(tmp_path / "g.npy"), "--locals", str(tmp_path / "l.npy"),
            "--ids", str(tmp_path / "ids.txt")]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"file": "other.jpg", "n": 1}) + "\n")
    bad = run(gallery_main, base + ["--metadata", str(tmp_path / "bad.jsonl")])
    assert bad.exit_code == 2 and "not in the --ids file" in bad.output and len(open_gallery(folder)) == 0
    result = run(gallery_main, base + ["--metadata", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 0, result.output
    gal = open_gallery(folder)
    assert gal.metadata([7]) == [{"n": 7, "tags": ["a"]}]
    dup = run(gallery_main, ["duplicates", folder, "--json", "--threshold", "0.999"])
    assert dup.exit_code == 0, dup.output
    assert json.loads(dup.stdout)["groups"] == [[ids[i], ids[i + 20]] for i in range(5)]
    info = run(gallery_main, ["info", folder, "--json"])
    assert json.loads(info.stdout)["fields"] == {"n": "number", "tags": "strings"}
