"""kidrr index --list: the photos named by a text, CSV or Parquet file (ids relative to the root, metadata
columns checked as a sidecar's), what is skipped and what is refused. The Ray engine with a list is in
test_ray_index.py."""
from __future__ import annotations

import os

import numpy as np
import pytest

from image_files import photo_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("list-album")
    photo_folder(str(root / "a"), 3, seed=11)
    photo_folder(str(root / "b"), 2, seed=12)
    os.symlink(root / "a" / "photo00.png", root / "a" / "link.png")
    os.mkfifo(root / "a" / "pipe.png")
    return root


def _gallery(out):
    from kidrr.gallery import open_gallery, verify
    g = open_gallery(out)
    assert verify(g) == []
    return dict(zip(g.ids(), g.metadata(np.arange(len(g)))))


def test_text_list_ids_relative_to_the_lists_folder_links_and_pipes_as_in_folder_mode(photos, pixel_bundle):
    from kidrr.photos.index import index_folder
    lst = photos / "todo.txt"
    lst.write_text("a/photo00.png\n\n./a/photo01.jpg\n" + str(photos / "b" / "photo01.jpg") + "\n"
                   "a/link.png\na/pipe.png\na/photo00.png\na/gone.png\n../escape.png\n")
    record = index_folder(pixel_bundle[0], None, str(photos / "g1"), threads=1, progress=False,
                          list_file=str(lst), exif=False)
    assert sorted(_gallery(str(photos / "g1"))) == ["a/link.png", "a/photo00.png", "a/photo01.jpg", "b/photo01.jpg"]
    assert {s["file"]: s["reason"] for s in record["skipped"]} == {
        "a/pipe.png": "unreadable", "a/photo00.png": "duplicate", "a/gone.png": "missing",
        "../escape.png": "outside-folder"}
    assert record["images"] == str(photos) and record["list"] == str(lst)


def test_csv_and_parquet_lists_carry_metadata_under_a_given_root(photos, pixel_bundle, tmp_path):
    from kidrr.photos.index import index_folder
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "l.csv").write_text(f"path,album,year\n{photos}/a/photo02.png,beach,2019\n"
                                 f"{photos}/b/photo00.png,,2020\n")
    index_folder(pixel_bundle[0], str(photos), str(tmp_path / "csv"), threads=1, progress=False,
                 list_file=str(lists / "l.csv"), exif=False)
    assert _gallery(str(tmp_path / "csv")) == {"a/photo02.png": {"album": "beach", "year": 2019},
                                               "b/photo00.png": {"year": 2020}}
    pa = pytest.importorskip("pyarrow")
    import datetime
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"path": [f"{photos}/b/photo01.jpg"], "tags": [["sea", "sun"]],
                             "taken": [datetime.date(2021, 5, 3)]}), str(lists / "l.parquet"))
    index_folder(pixel_bundle[0], str(photos), str(tmp_path / "csv"), threads=1, progress=False, append=True,
                 list_file=str(lists / "l.parquet"), exif=False)
    got = _gallery(str(tmp_path / "csv"))
    assert len(got) == 3 and got["b/photo01.jpg"]["tags"] == ["sea", "sun"] and "taken" in got["b/photo01.jpg"]


@pytest.mark.parametrize("name, text, message", [
    ("m.csv", "file,album\nx.png,beach\n", "one of them `path`"),
    ("m.csv", "path,album\na/photo00.png,beach\na/photo00.png,sea\n", "listed twice"),
    ("m.csv", "path,bad name!\na/photo00.png,x\n", "bad name"),
    ("empty.txt", "\n\n", "names no photos"),
    ("bad.parquet", "not parquet", "not a readable Parquet file"),
])
def test_bad_lists_are_refused_before_anything_is_written(photos, pixel_bundle, tmp_path, name, text, message):
    from kidrr.errors import InputError
    from kidrr.photos.index import index_folder
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    lst = photos / name
    lst.write_text(text)
    try:
        with pytest.raises(InputError, match=message):
            index_folder(pixel_bundle[0], None, str(tmp_path / "g"), threads=1, progress=False, list_file=str(lst))
    finally:
        lst.unlink()
    assert not os.path.exists(tmp_path / "g")


def test_cli_list_with_metadata_columns_and_a_sidecar_is_one_source_too_many(photos, pixel_bundle, tmp_path):
    from click.testing import CliRunner
    from kidrr.photos.index import main
    (tmp_path / "l.csv").write_text(f"path,album\n{photos}/a/photo00.png,beach\n")
    (tmp_path / "m.csv").write_text("file,album\na/photo00.png,sea\n")
    result = CliRunner().invoke(main, ["--bundle", pixel_bundle[0], "--images", str(photos), "--list",
                                       str(tmp_path / "l.csv"), "--metadata", str(tmp_path / "m.csv"),
                                       "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and "in one of them" in result.output
    no_input = CliRunner().invoke(main, ["--bundle", pixel_bundle[0], "--out", str(tmp_path / "g")])
    assert no_input.exit_code == 2 and "--images" in no_input.output and "--list" in no_input.output
