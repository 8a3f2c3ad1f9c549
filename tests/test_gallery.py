"""Format-2 galleries: storage round trip, add / remove / compact, first stages, bad input, search parity."""
import json
import os
import shutil

import numpy as np
import pytest

import gallery_helpers as gh
import test_runtime_helpers as helpers
from kidrr.errors import BundleError, DataError, InputError
from kidrr.gallery import GalleryLocked, GalleryWriter, convert_v1, create_gallery, open_gallery, verify
from kidrr.gallery.segment_io import quantize_int8


# ---- storage ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [("fp32", 0.0), ("fp16", 1e-3), ("int8", 1.0 / 127)])
def test_round_trip_per_locals_dtype(tmp_path, dtype, tol):
    g, l, ids = gh.make_gallery(tmp_path / "g", n=40, batches=3, locals_dtype=dtype)
    gal = open_gallery(str(tmp_path / "g"), bundle_id=gh.BUNDLE_ID)
    assert len(gal) == 40 and len(gal.segments) == 3 and verify(gal) == []
    locs, globs = gal.gather(np.arange(40))
    np.testing.assert_array_equal(globs, g)                       # globals are always fp32
    assert np.abs(locs - l).max() <= tol + 1e-7                   # unit-norm locals: int8 step is 1/127
    assert gal.labels(np.arange(40)) == ids and gal.ids() == ids


def test_gather_reads_runs_of_rows_from_every_segment(tmp_path):
    g, l, ids = gh.make_gallery(tmp_path / "g", n=300, batches=2, locals_dtype="int8", regions=5, dim=64)
    gal = open_gallery(str(tmp_path / "g"))
    # Adjacent rows are prefetched as one range: runs, single rows, both segments, any order.
    rows = np.array([299, 0, 1, 2, 7, 149, 150, 151, 152, 298, 40])
    locs, globs = gal.gather(rows)
    np.testing.assert_array_equal(globs, g[rows])
    assert np.abs(locs - l[rows]).max() <= 1.0 / 127 + 1e-7


def test_half_to_float_is_exact_for_every_float16():
    from kidrr.gallery.segment_io import half_to_float
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 16, 16)
    out = half_to_float(every)
    assert out.dtype == np.float32 and out.shape == every.shape
    np.testing.assert_array_equal(out, every.astype(np.float32))      # NaNs compare equal here
    assert half_to_float(np.zeros((0, 3, 4), np.float16)).shape == (0, 3, 4)


def test_int8_layout_is_q_times_per_vector_scale():
    x = np.array([[[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]], dtype=np.float32)
    q, s = quantize_int8(x)
    assert q.dtype == np.int8 and s.shape == (1, 2)
    np.testing.assert_array_equal(q[0, 0], [64, -127, 32])      # round(x / (1/127))
    assert s[0, 1] == 0 and (q[0, 1] == 0).all()


def test_segment_files_follow_the_documented_layout(tmp_path):
    gh.make_gallery(tmp_path / "g", n=10, batches=1, locals_dtype="int8")
    seg = tmp_path / "g" / "seg-000000"
    for name, shape in [("globals.npy", (10, 8)), ("locals.npy", (10, 3, 8)), ("scales.npy", (10, 3)),
                        ("id_offsets.npy", (11,)), ("id_hashes.npy", (10, 2))]:
        raw = (seg / name).read_bytes()
        assert raw[:8] == b"\x93NUMPY\x01\x00" and int.from_bytes(raw[8:10], "little") == 118
        assert np.load(seg / name).shape == shape                 # plain numpy reads it too
    blob, offs = (seg / "ids.utf8").read_bytes(), np.load(seg / "id_offsets.npy")
    assert blob[offs[3]:offs[4]].decode() == "photo-00003.jpg"
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["format"] == "kidrr-gallery/2" and manifest["rows"] == manifest["live"] == 10


def test_open_checks_headers_and_sizes_only(tmp_path):
    gh.make_gallery(tmp_path / "g", n=20, batches=1)
    path = tmp_path / "g" / "seg-000000" / "locals.npy"
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF                                              # data, not header: open cannot see it
    path.write_bytes(bytes(raw))
    gal = open_gallery(str(tmp_path / "g"))
    problems = verify(gal)
    assert problems == ["seg-000000/locals.npy: sha256 mismatch (the file changed after it was written)"]
    path.write_bytes(bytes(raw[:-4]))                             # truncated: refused at open
    with pytest.raises(DataError, match="locals.npy is .* bytes.*truncated"):
        open_gallery(str(tmp_path / "g"))
    os.unlink(path)
    with pytest.raises(DataError, match="locals.npy is missing"):
        open_gallery(str(tmp_path / "g"))


def test_bad_manifests_are_refused(tmp_path):
    gh.make_gallery(tmp_path / "g", n=10, batches=1)
    folder, mpath = str(tmp_path / "g"), tmp_path / "g" / "manifest.json"
    good = json.loads(mpath.read_text())
    with pytest.raises(BundleError, match="another bundle"):
        open_gallery(folder, bundle_id="f" * 64)
    with pytest.raises(DataError, match="holds 8-d vectors but the model's embedding is 16-d"):
        open_gallery(folder, dim=16)
    for edit, match in [({"format": "kidrr-gallery/9"}, "not one this kidrr reads"),
                        ({"format": "something"}, "'format' is"),
                        ({"dim": "8"}, "'dim' must be an integer"),
                        ({"live": 3}, "disagree with the segments"),
                        ({"locals_dtype": "int4"}, "locals_dtype"),
                        ({"segments": {"a": 1}}, "'segments' must be a list")]:
        mpath.write_text(json.dumps({**good, **edit}))
        with pytest.raises(DataError, match=match):
            open_gallery(folder)
    mpath.write_text("[1, 2]")
    with pytest.raises(DataError, match="must be a JSON object"):
        open_gallery(folder)
    os.unlink(mpath)
    with pytest.raises(DataError, match="not a kidrr gallery"):
        open_gallery(folder)
    with pytest.raises(DataError, match="does not exist"):
        open_gallery(str(tmp_path / "nowhere"))
    (tmp_path / "old.npz").write_bytes(b"PK")
    with pytest.raises(DataError, match="is a file, not a gallery folder"):
        open_gallery(str(tmp_path / "old.npz"))


# ---- writer -----------------------------------------------------------------------------------
def test_add_refuses_bad_items_and_changes_nothing(tmp_path):
    g, l, ids = gh.make_gallery(tmp_path / "g", n=10, batches=1)
    folder = str(tmp_path / "g")
    before = (tmp_path / "g" / "manifest.json").read_bytes()
    g2, l2, ids2 = gh.items(4, seed=1, start=100)
    bad_l = l2.copy()
    bad_l[2, 1, 0] = np.nan
    with GalleryWriter(folder) as w:
        for args, match in [((g2, l2, ids[:1] + ids2[1:]), "already in the gallery.*photo-00000"),
                            ((g2, l2, ["a", "a", "b", "c"]), "duplicate ids in this batch"),
                            ((g2, l2, ids2[:3]), "3 ids for 4 items"),
                            ((g2, bad_l, ids2), r"NaN or inf \(rows \[2\]\)"),
                            ((g2[:, :4], l2, ids2), "do not fit this gallery"),
                            ((g2.astype(np.int64), l2, ids2), "floating point"),
                            ((g2, l2, ["", "x", "y", "z"]), "non-empty string"),
                            ((g2, l2, ["\ud800", "x", "y", "z"]), "UTF-8")]:
            with pytest.raises(InputError, match=match):
                w.add(*args)
    assert (tmp_path / "g" / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(folder)) == ["manifest.json", "seg-000000", "writer.lock"]


def test_fp16_overflow_is_refused(tmp_path):
    create_gallery(str(tmp_path / "g"), gh.BUNDLE_ID, 3, 8, "fp16")
    g, l, ids = gh.items(2)
    with GalleryWriter(str(tmp_path / "g")) as w, pytest.raises(InputError, match="fp16 range"):
        w.add(g, l * 1e5, ids)


def test_remove_compact_and_snapshots(tmp_path):
    g, l, ids = gh.make_gallery(tmp_path / "g", n=30, batches=3)
    folder = str(tmp_path / "g")
    (tmp_path / "g" / "notes.txt").write_text("the user's own file")
    old = open_gallery(folder)
    with GalleryWriter(folder) as w:
        with pytest.raises(InputError, match="not in the gallery.*nope"):
            w.remove(["photo-00001.jpg", "nope"])
        assert w.remove(["photo-00001.jpg", "photo-00025.jpg"]) == 28
        assert w.remove(["photo-00002.jpg"]) == 27                 # second tombstone file replaces the first
        with pytest.raises(InputError, match="not in the gallery"):
            w.remove(["photo-00001.jpg"])                        # already removed
    cur = open_gallery(folder)
    assert len(cur) == 27 and len(old) == 30                      # the old snapshot keeps its view
    assert "photo-00001.jpg" not in cur.ids() and verify(cur) == []
    assert sorted(os.listdir(tmp_path / "g" / "seg-000000")).count("tombstones-000005.npy") == 1
    q = g[[1, 2, 25]]
    for method in ("exact",):
        cur.first_stage = method
        for rows in cur.shortlist(q, 26):
            assert not set(cur.labels(rows)) & {"photo-00001.jpg", "photo-00002.jpg", "photo-00025.jpg"}
    with GalleryWriter(folder) as w:
        w.add(g[1:2], l[1:2], ["photo-00001.jpg"])               # a removed id may come back
        assert w.compact() == 28
    comp = open_gallery(folder)
    assert len(comp.segments) == 1 and len(comp) == 28 and verify(comp) == []
    assert sorted(os.listdir(folder)) == ["manifest.json", "notes.txt", "seg-000004", "writer.lock"]
    want = {i: k for k, i in enumerate(ids)}
    got_l, got_g = comp.gather(np.arange(28))
    for row, item in enumerate(comp.labels(np.arange(28))):
        np.testing.assert_array_equal(got_g[row], g[want[item]])
    # The snapshot opened before compact still reads its (now unlinked) segments through its maps.
    np.testing.assert_array_equal(old.gather(np.arange(30))[1], g)


def test_second_writer_is_refused(tmp_path):
    gh.make_gallery(tmp_path / "g", n=5, batches=1)
    with GalleryWriter(str(tmp_path / "g")):
        with pytest.raises(GalleryLocked, match="another process is writing"):
            GalleryWriter(str(tmp_path / "g"))
        open_gallery(str(tmp_path / "g"))                         # readers never block
    GalleryWriter(str(tmp_path / "g")).close()                    # released on close


def test_create_never_overwrites(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(InputError, match="not an empty folder"):
        create_gallery(str(tmp_path / "busy"), gh.BUNDLE_ID, 3, 8)
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    with pytest.raises(InputError, match="locals dtype"):
        create_gallery(str(tmp_path / "new"), gh.BUNDLE_ID, 3, 8, "fp8")


# ---- first stage ------------------------------------------------------------------------------
def _exact_rows(g, q, k, dead=()):
    sims = q @ g.T
    sims[:, list(dead)] = -np.inf
    return [set(np.argsort(-s, kind="stable")[:k].tolist()) for s in sims]


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_first_stages_against_numpy(tmp_path, method):
    g, l, ids = gh.make_gallery(tmp_path / "g", n=1600, batches=2, ann=method, ann_min_rows=700, dim=16)
    gal = open_gallery(str(tmp_path / "g"))
    gal.exact_max = 1000
    assert gal.first_stage_method() == "ann" and gal.describe_first_stage().startswith(f"ann ({method}")
    q = gh.items(20, dim=16, seed=5)[0]
    truth = _exact_rows(g, q, 30)
    gal.first_stage = "exact"
    assert [set(r.tolist()) for r in gal.shortlist(q, 30)] == truth        # blocked scan = numpy
    gal.first_stage = "ann"
    recall = np.mean([len(set(r.tolist()) & t) / 30 for r, t in zip(gal.shortlist(q, 30), truth)])
    assert recall >= 0.9
    if method == "ivf":                                           # every list probed: IVF-Flat is exact
        gal.nprobe = max(s.ann_info["params"]["nlist"] for s in gal.segments)
        assert [set(r.tolist()) for r in gal.shortlist(q, 30)] == truth
    for bad in (0, -3, 2.5, True, "16"):
        gal.nprobe = gal.ef = bad
        with pytest.raises(InputError, match="must be an integer >= 1"):
            gal.shortlist(q, 30)
    gal.nprobe = gal.ef = None
    with GalleryWriter(str(tmp_path / "g")) as w:                 # tombstones are filtered from ANN results
        w.remove([ids[i] for i in sorted(truth[0])[:10]])
    gal = open_gallery(str(tmp_path / "g"))
    gal.first_stage = "ann"
    assert not set(gal.shortlist(q[:1], 30)[0].tolist()) & set(sorted(truth[0])[:10])


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_heavy_removals_are_skipped_inside_the_index(tmp_path, monkeypatch, method):
    # 90% of the items removed: the index's own scan skips them (a faiss IDSelector), so the ANN first
    # stage still returns k' live rows by itself instead of over-fetching k' + removed and then
    # falling back to the exact scan.
    from kidrr.gallery import first_stage
    g, l, ids = gh.make_gallery(tmp_path / "g", n=1600, batches=2, ann=method, ann_min_rows=700, dim=16)
    keep = np.arange(0, 1600, 10)
    with GalleryWriter(str(tmp_path / "g")) as w:
        w.remove([ids[i] for i in range(1600) if i % 10])
    gal = open_gallery(str(tmp_path / "g"))
    gal.first_stage, gal.exact_max = "ann", 0
    gal.nprobe, gal.ef = 10_000, 10_000                       # every list / a wide beam: exact answers
    q = gh.items(10, dim=16, seed=6)[0]
    truth = [set(keep[np.argsort(-(g[keep] @ v))[:30]].tolist()) for v in q]

    def no_exact_scan(*a, **kw):
        raise AssertionError("the ANN first stage fell back to the exact scan")
    asked, search = [], first_stage.search_index

    def recorded(index, method, params, queries, size, *rest):
        asked.append(size)
        return search(index, method, params, queries, size, *rest)
    monkeypatch.setattr(first_stage, "exact_block", no_exact_scan)
    monkeypatch.setattr(first_stage, "search_index", recorded)
    got = gal.shortlist(q, 30)
    assert all(len(r) == 30 for r in got)
    assert [set(r.tolist()) for r in got] == truth
    assert asked == [30, 30]          # k' per segment, not k' + its 720 removed


def test_ann_index_checked_before_faiss_reads_it(tmp_path):
    gh.make_gallery(tmp_path / "g", n=1200, batches=1, ann_min_rows=1000)
    path = tmp_path / "g" / "seg-000000" / "ann-ivf.faiss"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))
    gal = open_gallery(str(tmp_path / "g"))
    gal.first_stage = "ann"
    with pytest.raises(DataError, match="does not match its sha256"):
        gal.shortlist(gh.items(1)[0], 10)
    gal.first_stage = "exact"
    assert len(gal.shortlist(gh.items(1)[0], 10)[0]) == 10


def test_adding_builds_only_the_new_segments_index(tmp_path):
    gh.make_gallery(tmp_path / "g", n=1200, batches=1, ann_min_rows=1000)
    first = (tmp_path / "g" / "seg-000000" / "ann-ivf.faiss").stat()
    g, l, ids = gh.items(50, seed=3, start=5000)
    with GalleryWriter(str(tmp_path / "g")) as w:
        w.add(g, l, ids)
    after = (tmp_path / "g" / "seg-000000" / "ann-ivf.faiss").stat()
    assert (first.st_mtime_ns, first.st_ino) == (after.st_mtime_ns, after.st_ino)
    gal = open_gallery(str(tmp_path / "g"))
    assert [bool(s.ann_info) for s in gal.segments] == [True, False]   # 50 rows: scanned exactly
    gal.first_stage = "ann"
    assert set(gal.labels(gal.shortlist(g[:1], 5)[0])) >= {ids[0]}     # the new items are found


# ---- through the Retriever ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    from kidrr.runtime import open_bundle
    root = tmp_path_factory.mktemp("gallery-rt")
    bundle = helpers.make_bundle(helpers.small_checkpoint(root / "ckpt"), root / "bundle")
    with open_bundle(bundle, threads=1) as r:
        yield r


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-6), ("fp16", 2e-3), ("int8", 2e-2)])
def test_search_matches_the_in_memory_gallery(rt, tmp_path, dtype, tol):
    feats = helpers.random_features(60, seed=2)
    mem = rt.encode_images(feats)
    folder = str(tmp_path / "g")
    create_gallery(folder, rt.bundle_id, mem.locals.shape[1], mem.globals.shape[1], dtype)
    names = [f"img{i}" for i in range(60)]
    with GalleryWriter(folder) as w:
        w.add(mem.globals[:25], mem.locals[:25], names[:25])
        w.add(mem.globals[25:], mem.locals[25:], names[25:])
    disk = open_gallery(folder, bundle_id=rt.bundle_id)
    full = rt.score(mem, helpers.CAPTIONS)                        # the reference: every pair, fp32 in memory
    for shortlist in (None, 20):
        got = rt.search_text(helpers.CAPTIONS, k=5, gallery=disk, shortlist=shortlist)
        ref = rt.search_text(helpers.CAPTIONS, k=5, gallery=mem, shortlist=shortlist)
        for q, (g_res, r_res) in enumerate(zip(got, ref)):
            for item, score in g_res:
                assert abs(score - full[int(item[3:]), q]) <= tol
            if dtype == "fp32":
                assert [int(i[3:]) for i, _ in g_res] == [i for i, _ in r_res]
    single = rt.search_text(helpers.CAPTIONS[0], k=3, gallery=disk, shortlist=20)
    # One query against a batch of queries: other tile shapes (and the fused kernels, when built) may
    # round differently, so scores agree within the fp32 tolerance, not bit for bit.
    if dtype == "fp32":
        assert [i for i, _ in single] == [i for i, _ in got[0][:3]]
        assert all(abs(a - b) <= tol for (_, a), (_, b) in zip(single, got[0][:3]))
    else:
        assert len(single) == 3


def test_search_edges_through_the_retriever(rt, tmp_path):
    folder = str(tmp_path / "g")
    mem = rt.encode_images(helpers.random_features(6, seed=4))
    create_gallery(folder, rt.bundle_id, mem.locals.shape[1], mem.globals.shape[1])
    with pytest.raises(InputError, match="empty"):
        rt.search_text("a dog", k=1, gallery=open_gallery(folder))
    with GalleryWriter(folder) as w:
        w.add(mem.globals, mem.locals, list("abcdef"))
        w.remove(["a", "b"])
    disk = open_gallery(folder)
    with pytest.raises(InputError, match=r"k must be in 1..4"):
        rt.search_text("a dog", k=5, gallery=disk)
    res = rt.search_text("a dog", k=4, gallery=disk, shortlist=50)  # k' beyond the live count: exhaustive
    assert sorted(i for i, _ in res) == list("cdef")
    other = str(tmp_path / "other")
    create_gallery(other, "f" * 64, mem.locals.shape[1], mem.globals.shape[1])
    with GalleryWriter(other) as w:
        w.add(mem.globals, mem.locals, list("abcdef"))
    with pytest.raises(BundleError, match="another bundle"):
        rt.search_text("a dog", k=1, gallery=open_gallery(other))
    wrong_d = str(tmp_path / "wrong-d")
    create_gallery(wrong_d, rt.bundle_id, 2, 5)
    with GalleryWriter(wrong_d) as w:
        w.add(*gh.items(3, regions=2, dim=5)[:2], ["x", "y", "z"])
    with pytest.raises(InputError, match="5-d vectors"):
        rt.search_text("a dog", k=1, gallery=open_gallery(wrong_d))
    assert len(rt.search_image(helpers.random_features(1, seed=9)[0], k=2, captions=rt.encode_texts(
        helpers.CAPTIONS))) == 2


def test_convert_v1_and_cli(rt, tmp_path):
    from click.testing import CliRunner
    from kidrr.cli import load_verb
    main = load_verb("gallery")
    mem = rt.encode_images(helpers.random_features(12, seed=6))
    mem.save(str(tmp_path / "old.npz"))
    assert convert_v1(str(tmp_path / "old.npz"), str(tmp_path / "conv"), locals_dtype="fp32") == 12
    conv = open_gallery(str(tmp_path / "conv"), bundle_id=rt.bundle_id)
    ref = rt.search_text(helpers.CAPTIONS[:2], k=3, gallery=mem)
    assert [[(int(i), s) for i, s in r] for r in rt.search_text(helpers.CAPTIONS[:2], k=3, gallery=conv)] == ref
    run = CliRunner().invoke
    np.save(tmp_path / "g.npy", mem.globals)
    np.save(tmp_path / "l.npy", mem.locals)
    (tmp_path / "ids.txt").write_text("".join(f"pic{i}.jpg\n" for i in range(12)))
    folder = str(tmp_path / "cli")
    r = run(main, ["create", folder, "--bundle", rt.bundle.path, "--regions", str(mem.locals.shape[1])])
    assert r.exit_code == 0, r.output
    args = ["add", folder, "--globals", str(tmp_path / "g.npy"), "--locals", str(tmp_path / "l.npy"),
            "--ids", str(tmp_path / "ids.txt")]
    assert run(main, args).exit_code == 0
    r = run(main, args)
    assert r.exit_code == 2 and "already in the gallery" in r.output
    assert run(main, ["remove", folder, "pic3.jpg"]).exit_code == 0
    r = run(main, ["info", folder, "--json"])
    info = json.loads(r.output)
    assert info["live"] == 11 and info["removed"] == 1 and info["first_stage"].startswith("exact")
    r = run(main, ["search", folder, helpers.CAPTIONS[0], "--bundle", rt.bundle.path, "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["results"]
    assert len(hits) == 3 and "pic3.jpg" not in [h["file"] for h in hits]
    r = run(main, ["search", folder, helpers.CAPTIONS[0], "--bundle", rt.bundle.path, "--nprobe", "0"])
    assert r.exit_code == 2 and "--nprobe" in r.output
    assert run(main, ["compact", folder]).exit_code == 0
    assert run(main, ["verify", folder]).exit_code == 0
    seg = open_gallery(folder).segments[0].name
    shutil.copy(tmp_path / "g.npy", tmp_path / "cli" / seg / "globals.npy")
    r = run(main, ["verify", folder])
    assert r.exit_code != 0 and f"{seg}/globals.npy" in r.output


# ---- the scale benchmark's pieces -------------------------------------------------------------
def test_scale_items_are_reproducible_and_have_neighbours():
    from kidrr.bench.scale import synthetic_items
    g, l, _ = gh.items(30, regions=4, dim=16)
    a = synthetic_items(l, g, 100, 200, seed=3)
    b = synthetic_items(l, g, 100, 200, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2][0] == "item-0000100" and a[1].shape == (200, 49, 16)
    np.testing.assert_allclose(np.linalg.norm(a[0], axis=1), 1, atol=1e-5)
    sims = a[0] @ a[0].T
    np.fill_diagonal(sims, -1)
    assert np.median(sims.max(axis=1)) > np.median(sims) + 0.3     # mixtures of 30 bases: neighbours exist


def _encoded_ivf_gallery(rt, folder, n, seed):
    """n random items encoded by rt, one segment with its IVF index, ids i0, i1, ..."""
    mem = rt.encode_images(helpers.random_features(n, seed=seed))
    create_gallery(folder, rt.bundle_id, mem.locals.shape[1], mem.globals.shape[1], ann_min_rows=20)
    with GalleryWriter(folder) as w:
        w.add(mem.globals, mem.locals, [f"i{j}" for j in range(n)])
    return folder


def test_scale_worker_measures_a_small_gallery(rt, tmp_path):
    from kidrr.bench.scale_worker import serve
    folder = _encoded_ivf_gallery(rt, str(tmp_path / "g"), 50, seed=8)
    res = serve({"bundle": rt.bundle.path, "gallery": folder, "captions": helpers.CAPTIONS * 3, "threads": 1,
                 "shortlists": [10, 60], "exhaustive": True, "batch": 16})
    assert res["status"] == "ok" and res["items"] == 50 and res["rss_anon_mb"] > 0
    assert set(res["configs"]) == {"exact@10", "ann@10", "exact@60", "ann@60"}
    for name in ("exact@60", "ann@60"):          # k' beyond the gallery: exhaustive, whatever the first stage
        assert res["configs"][name]["recall_vs_exhaustive"] == 1.0
    assert res["configs"]["ann@60"]["overlap_exact"] == 1.0
    assert 0 <= res["configs"]["ann@10"]["overlap_exact"] <= 1


def test_scale_search_features_equal_their_brute_force_references(rt, tmp_path):
    """The scale benchmark's search rows on a small gallery it builds (exact first stage: below the
    ANN threshold): filtered text search and query by id agree with the worker's numpy references in
    every query, the filters keep the share of items they claim, duplicates are timed."""
    from kidrr.bench import scale
    from kidrr.bench.scale_worker import serve
    mem = rt.encode_images(helpers.random_features(20, seed=4))
    folder = str(tmp_path / "g")
    scale.build(folder, rt.bundle_id, (np.asarray(mem.locals), np.asarray(mem.globals)), 3_000, "ivf", seed=0,
                progress=False)
    res = serve({"bundle": rt.bundle.path, "gallery": folder, "captions": helpers.CAPTIONS * 2, "threads": 1,
                 "shortlists": [20], "exhaustive": False, "batch": 16,
                 "search_features": {"shortlist": 20, "filters": scale.FILTERS, "seed": 0, "duplicates": True}})
    rows = res["search"]["rows"]
    assert set(rows) == {"filter 1%", "filter 0.1%", "query by id"}
    assert 15 <= rows["filter 1%"]["matches"] <= 45 and 0 < rows["filter 0.1%"]["matches"] <= 10
    for r in rows.values():
        assert r["equal_fraction"] == 1.0 and r["overlap_mean"] == 1.0 and r["p50_ms"] > 0
    assert res["search"]["duplicates"]["items"] == 3_000 and res["search"]["duplicates"]["seconds"] > 0
    share = np.isin(scale.bucket_of(np.arange(200_000)), scale.FILTERS[0][2]).mean()
    assert 0.009 < share < 0.011


def test_nprobe_sweep_reaches_the_exact_first_stage(rt, tmp_path):
    from kidrr.bench.studies.nprobe_sweep import sweep
    folder = _encoded_ivf_gallery(rt, str(tmp_path / "g"), 60, seed=9)
    res = sweep(folder, rt.bundle.path, helpers.CAPTIONS * 2, [1, 10_000], shortlist=20, threads=1)
    assert res["items"] == 60 and res["queries"] == 2 * len(helpers.CAPTIONS)
    every = res["nprobe"]["10000"]                    # every list scanned: IVF-Flat is the exact search
    assert every["recall@20"] == 1.0 and every["top10_overlap"] == 1.0
    assert 0 < res["nprobe"]["1"]["recall@20"] <= 1.0


def test_gather_compare_reads_cold_rows_both_ways(tmp_path):
    from kidrr.bench.studies.gather_compare import compare
    gh.make_gallery(tmp_path / "g", n=200, batches=2, locals_dtype="fp16", regions=4, dim=32)
    res = compare(str(tmp_path / "g"), rows=20, trials=4)
    assert res["items"] == 200 and res["rows"] == 20
    assert res["prefetch_p50_ms"] > 0 and res["plain_p50_ms"] > 0 and res["fp16_to_fp32_speedup"] > 0
    import kidrr.gallery.reader as reader
    assert reader._prefetch.__name__ == "_prefetch"     # the advice it switched off is back


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_scale_disk_estimate_matches_what_a_build_writes(tmp_path, dtype):
    # kidrr bench scale refuses up front when the galleries cannot fit (a 1M fp16 run needs ~26 GiB),
    # so its estimate must be what a build really writes.
    from kidrr.bench import scale
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((20, 6, 256)).astype(np.float32), rng.standard_normal((20, 256)).astype(np.float32))
    folder = str(tmp_path / "g")
    scale.build(folder, gh.BUNDLE_ID, base, 6_000, "ivf", seed=0, progress=False, locals_dtype=dtype)
    per_item = scale.bytes_needed([6_000], 256, dtype, keep=False) / (6_000 + scale.ADD_ROWS)
    assert 0.95 < scale.disk_bytes(folder) / (6_000 * per_item) < 1.05
    assert scale.bytes_needed([10_000, 100_000], 256, dtype, keep=True) > scale.bytes_needed([10_000, 100_000], 256,
                                                                                             dtype, keep=False)
    with pytest.raises(InputError, match="GiB free"):
        scale.check_disk(str(tmp_path), 1 << 60)
