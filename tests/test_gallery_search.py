"""Search by example, metadata stored column-wise, filters inside the first stage, near-duplicates.

References are brute force over numpy arrays and the metadata as given (never kidrr's own columns).
"""
import json
import os

import numpy as np
import pytest

import gallery_helpers as gh
import test_runtime_helpers as helpers
from kidrr.errors import DataError, InputError, UnknownItem
from kidrr.gallery import GalleryWriter, create_gallery, open_gallery, verify
from kidrr.gallery import reader as reader_mod


def _keeps(meta, pred):
    """Rows whose metadata (None: an item without any) the predicate keeps."""
    return [i for i, m in enumerate(meta) if pred(m or {})]


def _stored(meta):
    """What reading metadata back gives: {} for none, and an empty list is an absent field."""
    return [{k: v for k, v in (m or {}).items() if v != []} for m in meta]


def _ref_top(g, q, rows, k):
    sims = g[rows] @ q
    order = np.lexsort((np.asarray(rows), -sims))[:k]
    return [rows[i] for i in order]


# Absent fields match nothing but `not` (and exists: false): an item without metadata is "not beach".
FILTERS = [
    ({"album": "beach"}, lambda m: m.get("album") == "beach"),
    ({"album": {"in": ["city", "snow"]}, "fav": False}, lambda m: m.get("album") in ("city", "snow")
     and m.get("fav") is False),
    ({"year": {"gte": 2010, "lt": 2013}}, lambda m: 2010 <= m.get("year", 0) < 2013),
    ({"taken": {"lte": "2019-07-03"}}, lambda m: m.get("taken", "9") <= "2019-07-03"),
    ({"tags": "dog"}, lambda m: "dog" in m.get("tags", [])),
    ({"tags": {"ne": "dog"}}, lambda m: bool(m.get("tags")) and "dog" not in m["tags"]),
    ({"or": [{"year": 2001}, {"not": {"album": {"in": ["beach", "city"]}}}]},
     lambda m: m.get("year") == 2001 or m.get("album") not in ("beach", "city")),
    ({"fav": {"exists": False}}, lambda m: "fav" not in m),
]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """600 items in two segments, one with an IVF index; 60 of them removed."""
    folder = str(tmp_path_factory.mktemp("search") / "g")
    create_gallery(folder, gh.BUNDLE_ID, 3, 8, "fp16", "ivf", 200)
    g, l, ids = gh.items(600, seed=3)
    meta = gh.item_meta(600)
    with GalleryWriter(folder) as w:
        w.add(g[:450], l[:450], ids[:450], meta[:450])
        w.add(g[450:], l[450:], ids[450:], meta[450:])
        w.remove(ids[::10])
    return folder, g, ids, meta


@pytest.mark.parametrize("method", ["exact", "ann", "ann-selector"])
def test_filters_inside_the_first_stage_equal_brute_force(big, method, monkeypatch):
    folder, g, ids, meta = big
    if method == "ann-selector":          # force faiss' IDSelector path even for selective filters
        monkeypatch.setattr(reader_mod, "SUBSET_EXACT_MAX", 0)
    gal = open_gallery(folder)
    gal.nprobe = 10_000                   # every list: the ANN answer must then equal the reference
    live = set(range(600)) - set(range(0, 600, 10))
    for where, pred in FILTERS:
        keep = [i for i in _keeps(meta, pred) if i in live]
        flt = gal.compile_filter(where)
        assert flt.count() == len(keep)
        for q in range(3):
            rows, sims = gal.nearest(g[q:q + 1], 10, method=method.split("-")[0], where=flt)[0]
            assert gal.labels(rows) == [ids[i] for i in _ref_top(g, g[q], keep, 10)], where
            assert np.all(np.diff(sims) <= 1e-6)
        got = gal.shortlist(g[:1], 10, where=flt)[0]
        assert len(got) == min(10, len(keep))


def test_k_results_come_back_under_a_filter_keeping_few_items(big):
    folder, g, ids, meta = big
    gal = open_gallery(folder)
    gal.first_stage = "ann"
    gal.nprobe = 1                        # one list of ~20: without the filter inside, k would not come back
    flt = gal.compile_filter({"year": 2003, "album": "beach"})
    rows, _ = gal.nearest(g[5:6], 5, where=flt)[0]
    keep = [i for i in _keeps(meta, lambda m: m.get("year") == 2003 and m.get("album") == "beach") if i % 10]
    assert len(keep) >= 5 and sorted(gal.labels(rows)) == sorted(ids[i] for i in _ref_top(g, g[5], keep, 5))


def test_metadata_survives_add_remove_compact_and_is_verified(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=60, batches=3, metadata=True)
    meta = gh.item_meta(60)
    gal = open_gallery(folder)
    assert gal.fields == {"album": "string", "fav": "bool", "tags": "strings", "taken": "date", "year": "number"}
    assert gal.metadata(np.arange(60)) == _stored(meta)
    with GalleryWriter(folder) as w:
        w.remove(ids[:5])
        w.compact()
    gal = open_gallery(folder)
    rows = gal.find(ids[5:]).values()
    assert gal.metadata(list(rows)) == _stored(meta[5:])
    assert verify(gal) == []
    # a metadata column edited after the commit: verify names it
    seg = gal.manifest.segments[0]
    name = sorted(seg.meta[0]["files"])[0]
    path = os.path.join(folder, seg.name, name)
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    assert any(name in p for p in verify(open_gallery(folder)))


def test_bad_metadata_and_filters_are_typed_errors_and_nothing_is_written(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=20, batches=1, metadata=True)
    before = open(os.path.join(folder, "manifest.json"), "rb").read()
    listing = sorted(os.listdir(folder))
    ng, nl, nids = gh.items(3, seed=9, start=100)
    bad = [
        [{"x": "y" * 10_000_000}, None, None],                        # 10 MB
        [{"x": {"nested": {"deeper": 1}}}, None, None],
        [{"x": [["a"]]}, None, None],
        [{"x": float("nan")}, None, None],
        [{"bad name!": 1}, None, None],
        [{"and": 1}, None, None],
        [{"year": "two thousand"}, None, None],                        # a number field in this gallery
        [{"album": 5}, None, None],
        [{"k": "a"}, {"k": 1}, None],                                  # one field, two types
        [{f"f{i}": i for i in range(65)}, None, None],
        "not a list",
        [None, None],
    ]
    for metadata in bad:
        with GalleryWriter(folder) as w:
            with pytest.raises(InputError):
                w.add(ng, nl, nids, metadata)
        assert open(os.path.join(folder, "manifest.json"), "rb").read() == before
        assert sorted(os.listdir(folder)) == listing
    gal = open_gallery(folder)
    deep = {"not": {}}
    node = deep
    for _ in range(40):
        node["not"] = {"not": {}}
        node = node["not"]
    for where, match in [({"nope": 1}, "no metadata field 'nope'.*album"),
                         ({"album": {"gt": "a"}}, "ranges"),
                         ({"year": "2019"}, "number"),
                         ({"taken": {"gte": 2019}}, "ISO date"),
                         ({"fav": 1}, "true or false"),
                         ({"album": ["a", "b"]}, "in"),
                         ({"album": {"like": "a"}}, "unknown operator"),
                         ("{not json", "not valid JSON"),
                         ([1, 2], "non-empty JSON object"),
                         ({}, "non-empty JSON object"),
                         ({"and": []}, "non-empty list"),
                         ({"album": {"in": ["x"] * 2000}}, "more than"),
                         (deep, "deeper")]:
        with pytest.raises(InputError, match=match):
            gal.compile_filter(where)
    # shards: a field this gallery lacks matches nothing instead
    assert gal.compile_filter({"nope": 1}, unknown="none").count() == 0
    assert gal.compile_filter(json.dumps({"album": "beach"})).count() == sum(
        1 for m in gh.item_meta(20) if m and m["album"] == "beach")


def test_a_manifest_whose_metadata_entries_disagree_is_refused(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=20, batches=2, metadata=True)
    path = os.path.join(folder, "manifest.json")
    doc = json.load(open(path))
    for edit in (lambda d: d["segments"][1]["meta"][4].update(type="string"),       # year: number vs string
                 lambda d: d["segments"][0]["meta"][0].update(name="and"),
                 lambda d: d["segments"][0]["meta"][0]["files"].popitem(),
                 lambda d: d["segments"][0]["meta"][0].update(distinct=-1)):
        changed = json.loads(json.dumps(doc))
        edit(changed)
        open(path, "w").write(json.dumps(changed))
        with pytest.raises(DataError):
            open_gallery(folder)
    json.dump(doc, open(path, "w"))
    assert verify(open_gallery(folder)) == []


# ---- through the Retriever: query by example, filters, dedup -----------------------------------------
@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    from kidrr.runtime import open_bundle
    root = tmp_path_factory.mktemp("search-rt")
    bundle = helpers.make_bundle(helpers.small_checkpoint(root / "ckpt"), root / "bundle")
    with open_bundle(bundle, threads=1) as r:
        yield r


@pytest.fixture(scope="module")
def photos(rt, tmp_path_factory):
    """40 encoded items, items 30-39 near-copies of items 0-9 (a burst), with metadata."""
    mem = rt.encode_images(helpers.random_features(30, seed=5))
    rng = np.random.default_rng(1)
    g = np.concatenate([mem.globals, mem.globals[:10] + 0.01 * rng.standard_normal((10, mem.globals.shape[1]))])
    g = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
    l = np.concatenate([mem.locals, mem.locals[:10]])
    ids = [f"p{i:02d}" for i in range(40)]
    meta = [{"album": "a" if i % 2 else "b"} for i in range(40)]
    folder = str(tmp_path_factory.mktemp("photos") / "g")
    create_gallery(folder, rt.bundle_id, l.shape[1], g.shape[1], "fp32")
    with GalleryWriter(folder) as w:
        w.add(g, l, ids, meta)
    return open_gallery(folder, bundle_id=rt.bundle_id), g, ids


def test_search_like_id_uses_the_stored_global_and_leaves_the_item_out(rt, photos):
    gal, g, ids = photos
    got = rt.search_like_id("p03", k=5, gallery=gal)
    order = [i for i in np.argsort(-(g @ g[3]), kind="stable") if i != 3][:5]
    assert [i for i, _ in got] == [ids[i] for i in order]
    assert [s for _, s in got] == pytest.approx([float(g[i] @ g[3]) for i in order], abs=1e-5)
    assert got[0][0] == "p33"                          # its near-copy
    filtered = rt.search_like_id("p03", k=3, gallery=gal, where={"album": "b"})
    assert all(int(i[1:]) % 2 == 0 for i, _ in filtered) and len(filtered) == 3
    with pytest.raises(UnknownItem, match="no item 'nope'"):
        rt.search_like_id("nope", k=3, gallery=gal)


def test_search_similar_by_globals_and_by_encoded_photos(rt, photos):
    gal, g, ids = photos
    one = rt.search_similar(g[7], k=4, gallery=gal)
    assert [i for i, _ in one][:2] in (["p07", "p37"], ["p37", "p07"])
    feats = helpers.random_features(30, seed=5)[:2]
    many = rt.search_similar(rt.encode_images(feats), k=3, gallery=gal)
    assert [r[0][0] for r in many] == ["p00", "p01"] and many[0][0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="query globals"):
        rt.search_similar(np.zeros(3, np.float32), k=3, gallery=gal)


def test_dedup_collapses_near_copies_to_their_best_item(rt, photos):
    gal, g, ids = photos
    plain = rt.search_similar(g[2], k=10, gallery=gal)
    assert {"p02", "p32"} <= {i for i, _ in plain}
    deduped = rt.search_similar(g[2], k=10, gallery=gal, dedup=0.95)
    names = [i for i, _ in deduped]
    assert len(deduped) == 10 and names[0] in ("p02", "p32") and not {"p02", "p32"} <= set(names)
    for i, a in enumerate(names):                         # no two kept items are near-copies
        for b in names[i + 1:]:
            assert g[ids.index(a)] @ g[ids.index(b)] < 0.95
    text = rt.search_text(helpers.CAPTIONS[0], k=5, gallery=gal, shortlist=40, dedup=0.95, where={"album": "b"})
    assert len(text) == 5 and all(int(i[1:]) % 2 == 0 for i, _ in text)
    with pytest.raises(InputError, match="dedup"):
        rt.search_similar(g[2], k=3, gallery=gal, dedup=1.5)


def test_filtered_text_search_equals_the_filtered_reference(rt, photos):
    gal, g, ids = photos
    keep = [i for i in range(40) if i % 2]
    for shortlist in (None, 15):
        got = rt.search_text(helpers.CAPTIONS[:2], k=5, gallery=gal, shortlist=shortlist, where={"album": "a"})
        for q, hits in enumerate(got):
            assert all(int(i[1:]) % 2 == 1 for i, _ in hits) and len(hits) == 5
            if shortlist is None:       # exhaustive over the kept items: the rerank of all of them
                sub = rt.search_text(helpers.CAPTIONS[q], k=5, gallery=_subset(rt, gal, keep))
                assert [s for _, s in hits] == pytest.approx([s for _, s in sub], abs=1e-5)
    assert rt.search_text(helpers.CAPTIONS[0], k=5, gallery=gal, where={"album": "zzz"}) == []


def _subset(rt, gal, rows):
    from kidrr.runtime import Gallery
    locs, globs = gal.gather(np.array(rows))
    return Gallery(locs, globs, rt.bundle_id)


def test_duplicate_groups_through_the_index(photos):
    from kidrr.gallery.duplicates import find_duplicates
    gal, g, ids = photos
    groups = find_duplicates(gal, threshold=0.95)
    assert sorted(sorted(grp) for grp in groups) == sorted(sorted([f"p{i:02d}", f"p{i + 30:02d}"]) for i in range(10))
