"""Hostile gallery files: the v1 .npz loader's typed errors, and property tests for both loaders.

Property: a damaged gallery (random byte flips, truncation, edited manifest fields) either raises a
typed kidrr error, or reads back exactly the original data, or `verify` names the damaged file.
Never another exception, never different data without a complaint.
"""
import io
import json
import os
import shutil
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gallery_helpers as gh
from kidrr.errors import BundleError, DataError, InputError, KidrrError
from kidrr.gallery import open_gallery, verify
from kidrr.runtime import Gallery

TAG = gh.BUNDLE_ID
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
FUZZ_FOLDER = settings(FUZZ, max_examples=30)      # each example copies and opens a whole gallery


def _v1_bytes(locals_=None, globals_=None, fmt="kidrr-gallery/1"):
    g, l, _ = gh.items(6)
    buf = io.BytesIO()
    np.savez(buf, format=np.array(fmt), bundle_id=np.array(TAG), locals=l if locals_ is None else locals_,
             globals=g if globals_ is None else globals_)
    return buf.getvalue(), l, g


# ---- v1 .npz: each defect a loader must refuse ----------------------------------------------------
def test_v1_loader_refuses_damaged_and_odd_files(tmp_path):
    raw, l, g = _v1_bytes()
    path = tmp_path / "g.npz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="not a kidrr gallery file, or a damaged one"):
        Gallery.load(str(path))
    flipped = bytearray(raw)
    info = zipfile.ZipFile(io.BytesIO(raw)).getinfo("locals.npy")
    flipped[info.header_offset + 30 + len("locals.npy") + 200] ^= 0x10     # inside the locals' data
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="CRC"):
        Gallery.load(str(path))
    np.save(tmp_path / "plain.npy", l)
    with pytest.raises(DataError, match="not a kidrr gallery file, or a damaged one"):
        Gallery.load(str(tmp_path / "plain.npy"))
    with pytest.raises(InputError, match="is a folder, not a .npz file"):
        Gallery.load(str(tmp_path))
    gh.make_gallery(tmp_path / "v2", n=4, batches=1)
    with pytest.raises(InputError, match="format-2 gallery folder: open it with kidrr.gallery.open_gallery"):
        Gallery.load(str(tmp_path / "v2"))


@pytest.mark.parametrize("edit,match", [
    ({"locals_": np.zeros((6, 3, 8), dtype=np.int64)}, "locals must be a 3-D float array, got int64"),
    ({"globals_": np.full((6, 8), np.nan, dtype=np.float32)}, r"items \[0, 1, 2, 3, 4\] hold NaN"),
    ({"globals_": np.zeros((5, 8), dtype=np.float32)}, "disagree"),
    ({"fmt": "kidrr-gallery/7"}, "is not kidrr-gallery/1"),
])
def test_v1_loader_refuses_wrong_contents(tmp_path, edit, match):
    path = tmp_path / "g.npz"
    path.write_bytes(_v1_bytes(**edit)[0])
    with pytest.raises(DataError, match=match):
        Gallery.load(str(path))


def test_v1_loader_checks_d_and_declared_sizes_before_allocating(tmp_path):
    path = tmp_path / "g.npz"
    path.write_bytes(_v1_bytes()[0])
    assert len(Gallery.load(str(path), bundle_id=TAG, dim=8)) == 6
    with pytest.raises(DataError, match="holds 8-d vectors but the model's embedding is 16-d"):
        Gallery.load(str(path), dim=16)
    with pytest.raises(BundleError, match="another bundle"):
        Gallery.load(str(path), bundle_id="f" * 64)
    # A member whose header declares (2^62 + 1, 1, 256) float32: refused from the header, no allocation.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (2**62 + 1, 1, 256)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, value in (("format", np.array("kidrr-gallery/1")), ("bundle_id", np.array(TAG)),
                            ("globals", np.zeros((1, 256), np.float32))):
            member = io.BytesIO()
            np.save(member, value)
            zf.writestr(name + ".npy", member.getvalue())
        zf.writestr("locals.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 1024)
    path.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="more than the .*-byte member holds"):
        Gallery.load(str(path))


@FUZZ
@given(data=st.data())
def test_v1_loader_property(data):
    raw, l, g = _v1_bytes()
    damaged = bytearray(raw)
    if data.draw(st.booleans()):
        damaged = damaged[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            damaged[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "g.npz")
        with open(path, "wb") as fh:
            fh.write(bytes(damaged))
        try:
            got = Gallery.load(path, bundle_id=TAG, dim=8)
        except KidrrError:
            return
        np.testing.assert_array_equal(got.locals, l)       # loaded: then it is exactly the original
        np.testing.assert_array_equal(got.globals, g)


# ---- format 2 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "g"
    g, l, ids = gh.make_gallery(folder, n=60, batches=2, locals_dtype="int8", ann_min_rows=25)
    from kidrr.gallery import GalleryWriter
    with GalleryWriter(str(folder)) as w:
        w.remove([ids[3], ids[40]])
    gal = open_gallery(str(folder))
    return str(folder), gal.ids(), gal.gather(np.arange(60)), json.loads(open(os.path.join(folder, "manifest.json")).read())


def _use(gal):
    """Everything a search touches; only typed errors may come out."""
    rows = np.arange(gal.manifest.rows)
    locs, globs = gal.gather(rows)
    labels = gal.labels(rows)
    for method in ("exact", "ann"):
        gal.first_stage = method
        gal.shortlist(np.ones((1, gal.dim), np.float32), min(5, len(gal)))
    return gal.ids(), (locs, globs), labels


def _check(folder, pristine, damaged_file=None):
    try:
        gal = open_gallery(folder, bundle_id=TAG, dim=8)
        ids, arrays, _ = _use(gal)
    except (DataError, BundleError, InputError):
        return
    problems = verify(gal)
    if damaged_file is not None:
        assert any(p.startswith(damaged_file) for p in problems), problems
    elif not problems:
        assert ids == pristine[1]
        np.testing.assert_array_equal(arrays[0], pristine[2][0])
        np.testing.assert_array_equal(arrays[1], pristine[2][1])


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 2**63) | st.floats(allow_nan=True)
                           | st.text(max_size=8), lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@FUZZ_FOLDER
@given(data=st.data())
def test_manifest_property(pristine, data):
    folder, _, _, doc = pristine
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "g")
        shutil.copytree(folder, copy)
        raw = json.dumps(doc, allow_nan=True).encode()
        if data.draw(st.booleans()):
            raw = bytearray(raw)
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        with open(os.path.join(copy, "manifest.json"), "wb") as fh:
            fh.write(bytes(raw))
        _check(copy, pristine)


@FUZZ_FOLDER
@given(data=st.data())
def test_segment_property(pristine, data):
    folder = pristine[0]
    files = sorted(os.path.relpath(os.path.join(dp, f), folder) for dp, _, fs in os.walk(folder) for f in fs
                   if f not in ("manifest.json", "writer.lock"))
    rel = data.draw(st.sampled_from(files))
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "g")
        shutil.copytree(folder, copy)
        path = os.path.join(copy, rel)
        raw = bytearray(open(path, "rb").read())
        if data.draw(st.booleans()):
            raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
        else:
            for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3, unique=True)):
                raw[at] ^= data.draw(st.integers(1, 255))
        with open(path, "wb") as fh:
            fh.write(bytes(raw))
        _check(copy, pristine, damaged_file=rel)


def _rehash_all(folder):
    """Record every listed file's size and sha256 as it is now (what a forger does after an edit)."""
    from kidrr.fileio import sha256_file
    doc = json.load(open(os.path.join(folder, "manifest.json")))
    for seg in doc["segments"]:
        entries = [(f"{seg['name']}/{k}", v) for k, v in seg["files"].items()]
        entries += [(x["file"], x) for x in (seg.get("tombstones"), seg.get("ann")) if x]
        for rel, entry in entries:
            path = os.path.join(folder, rel)
            if os.path.isfile(path) and not os.path.islink(path):
                entry.update(bytes=os.path.getsize(path), sha256=sha256_file(path))
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump(doc, fh)


@FUZZ_FOLDER
@given(data=st.data())
def test_member_kind_and_borrowed_file_property(pristine, data):
    """Any member (a file or a segment folder) swapped for a link to an identical copy, a FIFO or a
    folder; or another segment's id files or ANN index put in its place with their hashes recorded:
    a typed error, or verify names the problem; never a hang, never another segment's answers."""
    import signal
    folder = pristine[0]
    members = sorted(os.path.relpath(os.path.join(dp, x), folder) for dp, ds, fs in os.walk(folder) for x in fs + ds
                     if x != "writer.lock")
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "g")
        shutil.copytree(folder, copy)
        kind = data.draw(st.sampled_from(["link", "fifo", "folder", "borrowed ids", "borrowed index"]))
        if kind in ("link", "fifo", "folder"):
            rel = data.draw(st.sampled_from(members))
            path = os.path.join(copy, rel)
            moved = os.path.join(d, "moved")
            shutil.move(path, moved)
            if kind == "link":
                os.symlink(moved, path)
            elif kind == "fifo":
                os.mkfifo(path)
            else:
                os.mkdir(path)
        else:
            names = ["ids.utf8", "id_offsets.npy", "id_hashes.npy"] if kind == "borrowed ids" else ["ann-ivf.faiss"]
            for name in names:
                shutil.copy(os.path.join(copy, "seg-000001", name), os.path.join(copy, "seg-000000", name))
            _rehash_all(copy)
            rel = None
        old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"blocked ({kind})")))
        signal.alarm(20)
        try:
            try:
                gal = open_gallery(copy, bundle_id=TAG, dim=8)
                _use(gal)
            except (DataError, BundleError, InputError):
                return
            problems = verify(gal)
            assert problems, (kind, rel)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
