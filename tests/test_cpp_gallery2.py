"""The C ABI on format-2 gallery folders (kidrr.gallery, docs/gallery.md): memory-mapped, searched in
place, with the Python reader's checks. The reference is Python on the same folder: the Python
reader (kidrr.gallery.open_gallery) reads every live row, the Python runtime searches them
(Retriever.search_text on an in-memory Gallery of those rows, exact or two-stage), and the reader
names the hits: same ids, scores within 1e-5.
"""
import json
import os

import numpy as np
import pytest

import test_cpp_support as cpp
from kidrr.gallery import GalleryWriter, create_gallery, open_gallery
from test_cpp_runtime import EMBED, bundle, features, retriever  # noqa: F401 (fixtures)

REGIONS = 4
QUERY = "a dog runs on the grass"


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


def _make(retriever, folder, locals_dtype, removed=("img-3", "café-7"), thumbnails=False):  # noqa: F811
    """Two segments (9 + 7 items, ids with non-ASCII), then removals (a tombstone file); with
    thumbnails, each segment also holds a JPEG per item (most of them)."""
    import gallery_helpers as gh
    create_gallery(str(folder), retriever.bundle_id, regions=REGIONS, dim=EMBED, locals_dtype=locals_dtype)
    with GalleryWriter(str(folder)) as w:
        for seed, (lo, hi) in enumerate([(0, 9), (9, 16)]):
            g = retriever.encode_images(features(hi - lo, REGIONS, seed=20 + seed))
            w.add(g.globals, g.locals, [("café-%d" if i % 7 == 0 else "img-%d") % i for i in range(lo, hi)],
                  thumbnails=gh.item_thumbs(hi - lo, start=lo) if thumbnails else None)
        if removed:
            w.remove(list(removed))
    return str(folder)


def _python_search(retriever, folder, k, shortlist):  # noqa: F811
    from kidrr.runtime.gallery import Gallery
    disk = open_gallery(folder, bundle_id=retriever.bundle_id)
    tiles = list(disk.tiles(1000))
    rows = np.concatenate([t[0] for t in tiles])
    live = Gallery(np.concatenate([t[1] for t in tiles]), np.concatenate([t[2] for t in tiles]), disk.bundle_id)
    hits = retriever.search_text(QUERY, k, gallery=live, shortlist=shortlist or None)
    return list(zip(disk.labels(rows[[i for i, _ in hits]]), [s for _, s in hits]))


def _search(built, bundle_dir, gallery, k=None, shortlist=0):
    args = [os.path.join(built, "kidrr_search"), bundle_dir, gallery, QUERY]
    if k:
        args += ["-k", str(k)]
    if shortlist:
        args += ["--shortlist", str(shortlist)]
    return cpp.run(args)


def _hits(proc):
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if not line.startswith("#")]
    return [(r[3][3:], float(r[2].split()[1])) for r in rows]


@pytest.mark.parametrize("locals_dtype", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("k,shortlist", [(5, 0), (3, 6), (14, 0)])
def test_search_on_format2_gallery_matches_python(built, bundle, retriever, tmp_path, locals_dtype, k, shortlist):  # noqa: F811
    folder = _make(retriever, tmp_path / "g", locals_dtype)
    want = _python_search(retriever, folder, k, shortlist)
    got = _hits(_search(built, bundle[0], folder, k, shortlist))
    assert [i for i, _ in got] == [i for i, _ in want]
    assert not {"img-3", "café-7"} & {i for i, _ in got}  # removed items never come back
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5, rtol=0)
    assert len({s for _, s in got}) > 1  # scores differ: the comparison is not vacuous


def test_a_gallery_with_thumbnails_searches_as_python_searches_it(built, bundle, retriever, tmp_path):  # noqa: F811
    # The C reader ignores the segments' "thumbnails" entries (and their files) and answers the same.
    folder = _make(retriever, tmp_path / "g", "fp16", thumbnails=True)
    assert json.load(open(os.path.join(folder, "manifest.json")))["segments"][0]["thumbnails"]["count"] == 8
    got = _hits(_search(built, bundle[0], folder, k=5))
    want = _python_search(retriever, folder, 5, 0)
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5, rtol=0)


def test_k_beyond_the_live_items_is_refused(built, bundle, retriever, tmp_path):  # noqa: F811
    folder = _make(retriever, tmp_path / "g", "fp16")   # 16 rows, 14 live
    proc = _search(built, bundle[0], folder, k=15)
    assert proc.returncode == 1 and "larger than the gallery (14 images)" in proc.stderr, proc.stderr


def _python_refuses(folder, retriever, search=False):  # noqa: F811
    """The Python reader refuses the folder at open, or (search=True) when its rows are read."""
    from kidrr.errors import DataError
    with pytest.raises(DataError):
        g = open_gallery(folder, bundle_id=retriever.bundle_id)
        if search:
            list(g.tiles(1000))


def test_damaged_galleries_are_refused_as_python_refuses_them(built, bundle, retriever, tmp_path):  # noqa: F811
    cases = {}
    folder = _make(retriever, tmp_path / "truncated", "fp16")
    path = os.path.join(folder, "seg-000000", "locals.npy")
    os.truncate(path, os.path.getsize(path) - 1)
    cases["truncated"] = (folder, False, "bytes")
    folder = _make(retriever, tmp_path / "rows", "fp32")
    m = json.load(open(os.path.join(folder, "manifest.json")))
    m["segments"][0]["rows"] += 1
    json.dump(m, open(os.path.join(folder, "manifest.json"), "w"))
    cases["rows edited"] = (folder, False, "manifest is damaged")
    folder = _make(retriever, tmp_path / "shape", "fp32")
    path = os.path.join(folder, "seg-000001", "globals.npy")
    data = open(path, "rb").read()
    assert b"(7, %d)" % EMBED in data[:128]
    open(path, "wb").write(data.replace(b"(7, %d)" % EMBED, b"(8, %d)" % EMBED, 1))  # header claims 8 rows
    cases["header shape"] = (folder, False, "another shape")
    folder = _make(retriever, tmp_path / "tomb", "int8")
    tomb = [f for f in os.listdir(os.path.join(folder, "seg-000000")) if f.startswith("tombstones")][0]
    path = os.path.join(folder, "seg-000000", tomb)
    data = bytearray(open(path, "rb").read())
    data[-8] ^= 1
    open(path, "wb").write(bytes(data))
    cases["tombstones"] = (folder, False, "sha256")
    folder = _make(retriever, tmp_path / "nan", "fp32")
    path = os.path.join(folder, "seg-000000", "locals.npy")
    data = bytearray(open(path, "rb").read())
    data[128 + 4 * 5: 128 + 4 * 6] = np.float32(np.nan).tobytes()  # a stored value; the size is unchanged
    open(path, "wb").write(bytes(data))
    cases["nan"] = (folder, True, "NaN or inf")
    for name, (folder, at_search, message) in cases.items():
        _python_refuses(folder, retriever, search=at_search)
        proc = _search(built, bundle[0], folder)
        assert proc.returncode == 1 and message in proc.stderr, (name, proc.stderr)


def test_gallery_of_another_bundle_or_size_is_refused(built, bundle, retriever, tmp_path):  # noqa: F811
    d = EMBED
    create_gallery(str(tmp_path / "other"), "0" * 64, regions=REGIONS, dim=d)
    proc = _search(built, bundle[0], str(tmp_path / "other"))
    assert proc.returncode == 1 and "encoded by another bundle" in proc.stderr, proc.stderr
    create_gallery(str(tmp_path / "dim"), retriever.bundle_id, regions=REGIONS, dim=d + 1)
    proc = _search(built, bundle[0], str(tmp_path / "dim"))
    assert proc.returncode == 1 and "-d vectors" in proc.stderr, proc.stderr
    os.makedirs(tmp_path / "empty")
    proc = _search(built, bundle[0], str(tmp_path / "empty"))
    assert proc.returncode == 1 and "not a kidrr gallery" in proc.stderr, proc.stderr


@pytest.mark.parametrize("extra", [[], ["-k", "2", "--shortlist", "5"]])
def test_format2_search_is_clean_under_asan_ubsan(bundle, retriever, tmp_path, extra):  # noqa: F811
    """The memory-mapped reader and the streamed search under ASan + UBSan + LeakSanitizer, on the
    int8 layout (scales) and on an error path (a truncated segment file)."""
    asan = cpp.build("asan")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    folder = _make(retriever, tmp_path / "g", "int8")
    proc = cpp.run([os.path.join(asan, "kidrr_search"), bundle[0], folder, QUERY, *extra], env=env)
    assert proc.returncode == 0 and "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-4000:]
    path = os.path.join(folder, "seg-000001", "id_offsets.npy")
    os.truncate(path, os.path.getsize(path) - 8)
    proc = cpp.run([os.path.join(asan, "kidrr_search"), bundle[0], folder, QUERY, *extra], env=env)
    assert proc.returncode == 1 and "Sanitizer" not in proc.stderr and "bytes" in proc.stderr, proc.stderr[-4000:]


def test_fp16_locals_round_as_numpy_rounds(built, tmp_path):
    """kidrr::float_to_half (what kidrr_gallery_write_dtype(..., "fp16") and kidrr_index store) gives
    numpy's astype(float16) bit for bit: normals, subnormals, exact ties either way, the range's ends,
    signed zeros; and refuses what numpy would turn into inf."""
    rng = np.random.default_rng(0)
    ties = (np.arange(-2048, 2048, dtype=np.float32) + 0.5) * np.float32(2.0 ** -14)   # half-way between fp16s
    values = np.concatenate([
        rng.standard_normal(200_000).astype(np.float32),                                # encoder-like locals
        (rng.uniform(-1, 1, 200_000) * 2.0 ** rng.uniform(-30, 16, 200_000)).astype(np.float32),
        ties, ties * np.float32(2.0 ** -10), np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(9)),
        np.float32([0.0, -0.0, 65504.0, -65504.0, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26, 6.1e-5, 65503.9])])
    values = values[np.abs(values) <= 65504].astype(np.float32)
    np.save(tmp_path / "v.npy", values)
    proc = cpp.run([os.path.join(built, "kidrr_tool"), "half", str(tmp_path / "v.npy"), str(tmp_path / "h.bin")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = np.fromfile(tmp_path / "h.bin", dtype="<u2")
    want = values.astype(np.float16).view("<u2")
    assert len(got) == len(values) and np.array_equal(got, want), np.flatnonzero(got != want)[:5]
    for bad in (65505.0, -70000.0, np.inf, np.nan):
        np.save(tmp_path / "b.npy", np.float32([0.5, bad]))
        proc = cpp.run([os.path.join(built, "kidrr_tool"), "half", str(tmp_path / "b.npy"), str(tmp_path / "b.bin")])
        assert proc.returncode == 1 and proc.stdout.startswith("ERR 1 ") and "fp16's range" in proc.stdout


def _like(built, bundle_dir, gallery, item, k):
    return cpp.run([os.path.join(built, "kidrr_search"), bundle_dir, gallery, "--like-id", item, "-k", str(k)])


def test_search_like_id_matches_python(built, bundle, retriever, tmp_path):  # noqa: F811
    """kidrr_gallery_search_like_id: the stored global against the other live items, the item left out,
    equal to Retriever.search_like_id on the same folder (items of both segments, non-ASCII ids)."""
    folder = _make(retriever, tmp_path / "g", "fp16")   # 16 rows, 14 live
    disk = open_gallery(folder, bundle_id=retriever.bundle_id)
    for item in ("img-1", "café-14", "img-12"):
        for k in (4, 14):
            want = retriever.search_like_id(item, k, gallery=disk)
            got = _hits(_like(built, bundle[0], folder, item, k))
            assert len(got) == min(k, 13) and [i for i, _ in got] == [i for i, _ in want]
            assert not {item, "img-3", "café-7"} & {i for i, _ in got}
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5, rtol=0)
            assert len({s for _, s in got}) > 1
    for item in ("img-3", "nope", "img-1x", ""):          # removed, never added, a prefix of none, empty
        proc = _like(built, bundle[0], folder, item, 3)
        assert proc.returncode == 1 and "KIDRR_ERR_UNKNOWN_ITEM" in proc.stderr and "no item" in proc.stderr, proc.stderr
    proc = _like(built, bundle[0], folder, "img-1", 15)
    assert proc.returncode == 1 and "KIDRR_ERR_INPUT" in proc.stderr and "1..14" in proc.stderr, proc.stderr
