"""Galleries as hostile files: links and FIFOs, foreign ANN indexes, duplicate and non-UTF-8 ids,
counters at their limits, and snapshots that outlive a compaction."""
import contextlib
import os
import shutil
import signal
from dataclasses import replace

import numpy as np
import pytest

import gallery_helpers as gh
from kidrr.errors import DataError, InputError
from kidrr.fileio import sha256_file
from kidrr.gallery import GalleryWriter, open_gallery, verify
from kidrr.gallery.layout import read_manifest
from kidrr.gallery.writer import _write_manifest


@contextlib.contextmanager
def deadline(seconds=10):
    """Fail (rather than hang the suite) if the block blocks, e.g. on a FIFO."""
    def boom(*_):
        raise TimeoutError("blocked")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def rehash(folder, seg_index, name):
    """Record a segment file's current size and sha256 in the manifest (a forger's edit)."""
    m = read_manifest(folder)[0]
    seg = m.segments[seg_index]
    path = os.path.join(folder, seg.name, name)
    entry = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    if name.startswith("ann-"):
        seg = replace(seg, ann={**seg.ann, **entry})
    else:
        seg = replace(seg, files={**seg.files, name: entry})
    segments = list(m.segments)
    segments[seg_index] = seg
    _write_manifest(folder, replace(m, segments=tuple(segments)), open)


def set_manifest(folder, **fields):
    _write_manifest(folder, replace(read_manifest(folder)[0], **fields), open)


# ---- links, FIFOs, folders ----------------------------------------------------------------------
def test_a_symlinked_member_is_refused_not_followed(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=20, batches=1)
    ids = os.path.join(folder, "seg-000000", "ids.utf8")
    outside = tmp_path / "outside.txt"
    shutil.copy(ids, outside)                     # same bytes: only the link itself is wrong
    os.unlink(ids)
    os.symlink(outside, ids)
    with pytest.raises(DataError, match="ids.utf8 is a symbolic link"):
        open_gallery(folder)
    with pytest.raises(DataError, match="symbolic link"):
        GalleryWriter(folder).remove(["photo-00001.jpg"])
    assert outside.exists()


def test_a_symlinked_segment_folder_is_refused_and_never_cleaned_through(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=20, batches=1)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(os.path.join(folder, "seg-000000"), elsewhere)
    os.symlink(elsewhere, os.path.join(folder, "seg-000000"))
    (elsewhere / "tombstones-000001.npy").write_bytes(b"the user's")    # a name a writer would clean
    with pytest.raises(DataError, match="seg-000000 is a symbolic link, not a folder"):
        open_gallery(folder)
    with pytest.raises(DataError, match="symbolic link"):
        with GalleryWriter(folder) as w:
            w.remove(["photo-00001.jpg"])
    assert (elsewhere / "tombstones-000001.npy").read_bytes() == b"the user's"


@pytest.mark.parametrize("member", ["manifest.json", "seg-000000/globals.npy", "seg-000000/ids.utf8"])
def test_a_fifo_in_a_gallery_is_refused_without_blocking(tmp_path, member):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=20, batches=1)
    os.unlink(os.path.join(folder, member))
    os.mkfifo(os.path.join(folder, member))
    with deadline(), pytest.raises(DataError, match="is a FIFO, not a regular file"):
        open_gallery(folder)


def test_a_folder_named_like_a_member_is_refused(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=20, batches=1)
    os.unlink(os.path.join(folder, "manifest.json"))
    os.mkdir(os.path.join(folder, "manifest.json"))
    with pytest.raises(DataError, match="manifest.json is a folder, not a regular file"):
        open_gallery(folder)


def test_verify_names_a_linked_ann_index(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=1200, batches=1, ann_min_rows=1000)
    gal = open_gallery(folder)
    ann = os.path.join(folder, "seg-000000", "ann-ivf.faiss")
    shutil.copy(ann, tmp_path / "copy.faiss")
    os.unlink(ann)
    os.symlink(tmp_path / "copy.faiss", ann)
    assert any("ann-ivf.faiss" in p and "symbolic link" in p for p in verify(gal))
    with pytest.raises(DataError, match="symbolic link"):
        open_gallery(folder)


# ---- ANN indexes against their segment --------------------------------------------------------
def test_another_segments_index_is_refused_though_its_hash_is_recorded(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=2400, batches=2, ann_min_rows=1000)    # two segments of 1200
    shutil.copy(os.path.join(folder, "seg-000001", "ann-ivf.faiss"), os.path.join(folder, "seg-000000", "ann-ivf.faiss"))
    rehash(folder, 0, "ann-ivf.faiss")
    gal = open_gallery(folder)
    gal.first_stage = "ann"
    with pytest.raises(DataError, match="does not belong to this segment"):
        gal.shortlist(g[:2], 10)
    assert any("does not belong" in p for p in verify(gal))


def test_an_index_of_another_size_or_method_is_refused(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=2200, batches=2, ann_min_rows=1000)    # 1100 and 1100 rows
    with GalleryWriter(folder) as w:
        w.add(*gh.items(1000, seed=1, start=5000))                               # a third, of 1000
    shutil.copy(os.path.join(folder, "seg-000002", "ann-ivf.faiss"), os.path.join(folder, "seg-000000", "ann-ivf.faiss"))
    rehash(folder, 0, "ann-ivf.faiss")
    gal = open_gallery(folder)
    gal.first_stage = "ann"
    with pytest.raises(DataError, match="holds 1000 vectors.*the segment 1100"):
        gal.shortlist(g[:2], 10)
    # An HNSW index where the manifest says IVF (renamed and re-recorded as hnsw).
    from kidrr.gallery import first_stage
    import faiss
    index, params = first_stage.build_index(g[:1100], "ivf")
    m = read_manifest(folder)[0]
    seg = m.segments[1]
    hnsw, hparams = first_stage.build_index(g[1100:2200], "hnsw")
    os.unlink(os.path.join(folder, seg.ann["file"]))
    path = os.path.join(folder, seg.name, "ann-hnsw.faiss")
    faiss.write_index(index, path)                                # an IVF index under the HNSW name
    seg = replace(seg, ann={"file": f"{seg.name}/ann-hnsw.faiss", "method": "hnsw", "params": hparams,
                            "bytes": os.path.getsize(path), "sha256": sha256_file(path)})
    _write_manifest(folder, replace(m, segments=(m.segments[0], seg, m.segments[2])), open)
    gal = open_gallery(folder)
    gal.first_stage = "ann"
    with pytest.raises(DataError, match="IndexIVFFlat, the manifest says hnsw"):
        gal._index(gal.segments[1])


@pytest.mark.parametrize("params", [{}, {"nlist": 0}, {"nlist": 16, "M": 3}, {"nlist": True}])
def test_bad_ann_params_are_a_typed_error(tmp_path, params):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=1200, batches=1, ann_min_rows=1000)
    raw = open(os.path.join(folder, "manifest.json")).read()
    import json
    doc = json.loads(raw)
    doc["segments"][0]["ann"]["params"] = params
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump(doc, fh)
    with pytest.raises(DataError, match="ivf params must be"):
        open_gallery(folder)


def test_wrong_ivf_params_are_refused_at_first_use(tmp_path):
    folder = str(tmp_path / "g")
    g, _, _ = gh.make_gallery(folder, n=1200, batches=1, ann_min_rows=1000)
    m = read_manifest(folder)[0]
    seg = m.segments[0]
    seg = replace(seg, ann={**seg.ann, "params": {"nlist": seg.ann["params"]["nlist"] + 1}})
    _write_manifest(folder, replace(m, segments=(seg,)), open)
    gal = open_gallery(folder)
    gal.first_stage = "ann"
    with pytest.raises(DataError, match="its parameters are"):
        gal.shortlist(g[:1], 5)


# ---- ids -----------------------------------------------------------------------------------------
def two_segments_with_the_same_ids(tmp_path):
    """A forged gallery: seg-000001 is a copy of seg-000000, recorded as such in the manifest."""
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=20, batches=2)
    shutil.rmtree(os.path.join(folder, "seg-000001"))
    shutil.copytree(os.path.join(folder, "seg-000000"), os.path.join(folder, "seg-000001"))
    m = read_manifest(folder)[0]
    _write_manifest(folder, replace(m, segments=(m.segments[0], replace(m.segments[1], files=m.segments[0].files))),
                    open)
    return folder, g, ids


def test_duplicate_ids_are_found_by_verify_and_refused_by_readers_and_writers(tmp_path):
    folder, g, ids = two_segments_with_the_same_ids(tmp_path)
    gal = open_gallery(folder)
    assert any("is live twice" in p for p in verify(gal))
    with pytest.raises(DataError, match="live twice"):
        gal.find(["photo-00003.jpg"])
    with pytest.raises(DataError, match="live on two rows"):
        gal.labels(np.array([3, 13]))                           # an answer naming one id twice
    with GalleryWriter(folder) as w:
        with pytest.raises(DataError, match="live twice"):
            w.remove(["photo-00003.jpg"])                        # never "removed" with a copy left live
    assert read_manifest(folder)[0].generation == 2


def test_a_scrambled_id_table_is_refused_before_add(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=20, batches=1)
    path = os.path.join(folder, "seg-000000", "id_hashes.npy")
    raw = bytearray(open(path, "rb").read())
    table = np.frombuffer(bytes(raw[128:]), dtype="<u8").reshape(-1, 2).copy()
    table[:, 1] = np.roll(table[:, 1], 1)                       # hashes point at the wrong rows
    raw[128:] = table.tobytes()
    open(path, "wb").write(bytes(raw))
    rehash(folder, 0, "id_hashes.npy")
    gal = open_gallery(folder)
    assert any("does not match its row's id" in p for p in verify(gal))
    with GalleryWriter(folder) as w:
        with pytest.raises(DataError, match=r"lookup table is damaged\); nothing was changed"):
            w.add(g[:1], l[:1], [ids[0]])                       # already live: must not go in twice
    assert read_manifest(folder)[0].generation == 1


def test_ids_that_are_not_utf8_fail_verify_and_are_a_typed_error(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=20, batches=1)
    path = os.path.join(folder, "seg-000000", "ids.utf8")
    raw = bytearray(open(path, "rb").read())
    raw[0] = 0xFF                                               # same length, not UTF-8
    open(path, "wb").write(bytes(raw))
    rehash(folder, 0, "ids.utf8")
    gal = open_gallery(folder)
    assert any("is not UTF-8" in p for p in verify(gal))
    with pytest.raises(DataError, match="not UTF-8"):
        gal.ids()
    # Valid UTF-8 as a whole, but split inside a character: "...jp\xc3" + "\xa9hoto..." (an é cut in two).
    raw = bytearray(open(path, "rb").read())
    raw[0] = ord("p")
    end = len("photo-00000.jpg")
    raw[end - 1], raw[end] = 0xC3, 0xA9
    open(path, "wb").write(bytes(raw))
    rehash(folder, 0, "ids.utf8")
    assert any("id 0 is not UTF-8" in p or "id 1 is not UTF-8" in p for p in verify(open_gallery(folder)))


def test_remove_without_ids_is_refused_and_commits_nothing(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=10, batches=1)
    with GalleryWriter(folder) as w:
        with pytest.raises(InputError, match="nothing to remove"):
            w.remove([])
    assert read_manifest(folder)[0].generation == 1


# ---- counters at their limits --------------------------------------------------------------------
def test_generations_past_six_digits_keep_the_gallery_readable(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=10, batches=1)
    set_manifest(folder, generation=999_999)
    for i, item in enumerate(["photo-00001.jpg", "photo-00002.jpg", "photo-00003.jpg"]):
        with GalleryWriter(folder) as w:
            assert w.remove([item]) == 9 - i
        gal = open_gallery(folder)
        assert len(gal) == 9 - i and verify(gal) == []
    assert read_manifest(folder)[0].generation == 1_000_002


def test_segment_numbers_at_the_limit(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=10, batches=1)
    os.rename(os.path.join(folder, "seg-000000"), os.path.join(folder, "seg-999997"))
    m = read_manifest(folder)[0]
    set_manifest(folder, next_segment=999_998, segments=(replace(m.segments[0], name="seg-999997"),))
    more = gh.items(4, seed=3, start=100)
    with GalleryWriter(folder) as w:
        w.add(*more)                                            # seg-999998, next_segment 999,999
        before = open(os.path.join(folder, "manifest.json"), "rb").read()
        with pytest.raises(DataError, match="used every segment number"):
            w.add(*gh.items(2, seed=4, start=200))
        assert open(os.path.join(folder, "manifest.json"), "rb").read() == before
        assert w.compact() == 14                                # renumbered: the lowest free name
    gal = open_gallery(folder)
    assert [s.name for s in gal.segments] == ["seg-000000"] and verify(gal) == []
    with GalleryWriter(folder) as w:
        w.add(*gh.items(2, seed=4, start=200))
    assert len(open_gallery(folder)) == 16


# ---- snapshots and compaction --------------------------------------------------------------------
def test_a_snapshot_searches_its_ann_index_after_compaction_removed_it(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=2400, batches=2, ann_min_rows=1000)
    old = open_gallery(folder)
    old.first_stage = "ann"
    with GalleryWriter(folder) as w:
        w.remove(ids[:5])
        w.compact()
    assert not os.path.exists(os.path.join(folder, "seg-000000"))
    rows = old.shortlist(g[:3], 10)                             # the index was read lazily, after the unlink
    assert all(len(r) == 10 for r in rows)
    assert ids[0] in old.labels(rows[0])
