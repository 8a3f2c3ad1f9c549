"""Runtime behaviour: parity with the PyTorch model, galleries, tiling, exact and two-stage search."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import test_runtime_helpers as helpers
from kidrr.errors import BundleError
from kidrr.runtime import Gallery, open_bundle
from kidrr.runtime.tiling import TilePlanner, pair_bytes

TOL = 2e-5  # fp32 ONNX Runtime vs PyTorch: different kernels, same math


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    ckpt = helpers.small_checkpoint(root / "ckpt")
    return helpers.make_bundle(ckpt, root / "bundle"), ckpt


@pytest.fixture(scope="module")
def rt(bundle):
    with open_bundle(bundle[0], threads=2, tiles=(4, 3)) as r:
        yield r


def torch_scores(ckpt, feats, captions):
    import torch
    from kidrr.checkpoint import load_checkpoint
    from kidrr.tokenizer import pad_batch
    model, vocab, _ = load_checkpoint(ckpt)
    ids, lens = pad_batch([vocab.encode(c) for c in captions])
    with torch.no_grad():
        il, ig = model.encode_images(torch.from_numpy(feats))
        cl, cg = model.encode_texts(torch.from_numpy(ids), torch.from_numpy(lens))
        return model.score(il, ig, cl, cg, torch.from_numpy(lens)).numpy(), ig.numpy(), cg.numpy()


@pytest.mark.parametrize("n,regions", [(1, 5), (11, 7)])
def test_ort_scores_match_pytorch(bundle, rt, n, regions):
    feats = helpers.random_features(n, regions=regions, seed=n)
    captions = helpers.CAPTIONS + ["a dog", "a red car runs on the grass and cats"]
    expected, img_glob, _ = torch_scores(bundle[1], feats, captions)
    gallery = rt.encode_images(feats)
    np.testing.assert_allclose(gallery.globals, img_glob, atol=TOL)
    got = rt.score(gallery, captions)   # tiles of 4 x 3: captions reordered by length and back
    assert got.shape == (n, len(captions)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=TOL)


def test_torch_backend_is_the_reference(bundle, rt):
    feats = helpers.random_features(6, seed=3)
    with open_bundle(bundle[0], backend="torch", checkpoint=bundle[1]) as ref:
        want = ref.score(ref.encode_images(feats), helpers.CAPTIONS)
    np.testing.assert_allclose(rt.score(rt.encode_images(feats), helpers.CAPTIONS), want, atol=TOL)


def test_torch_backend_refuses_another_checkpoint(bundle, tmp_path):
    other = helpers.small_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(BundleError, match="not the one bundle"):
        open_bundle(bundle[0], backend="torch", checkpoint=other)


def test_tile_plans_change_nothing_but_speed(bundle, rt):
    feats = helpers.random_features(9, seed=4)
    gallery = rt.encode_images(feats)
    base = rt.score(gallery, helpers.CAPTIONS)
    for tiles in [(1, 1), (9, 6), (2, 5)]:
        with open_bundle(bundle[0], tiles=tiles) as other:
            np.testing.assert_allclose(other.score(gallery, helpers.CAPTIONS), base, atol=1e-6)


def test_tile_planner_respects_memory_budget_and_calibrates():
    per = pair_bytes(36, 16, 1024, 256)
    planner = TilePlanner(1024, 256, budget_bytes=300 * per)
    shapes = planner.candidates(36, 16, 10_000, 10_000)
    assert len(shapes) == 3 and all(a * b * per <= 300 * per for a, b in shapes)
    timed = []

    def measure(shape):  # pretend 16 x 8 is the sweet spot
        timed.append(shape)
        return shape[0] * shape[1] * (1.0 if shape == (16, 8) else 2.0)

    plan = planner.plan(36, 16, 10_000, 10_000, measure)
    assert set(timed) == set(shapes) and (plan.images, plan.captions) == (16, 8)
    assert planner.plan(36, 14, 10_000, 10_000, measure) is plan   # cached per length bucket
    tiny = TilePlanner(1024, 256, budget_bytes=per // 2)
    assert tiny.candidates(36, 16, 100, 100) == [(1, 1)]


def test_gallery_roundtrip_and_foreign_gallery_refused(rt, tmp_path):
    gallery = rt.encode_images(helpers.random_features(5, seed=5))
    path = str(tmp_path / "g.npz")
    gallery.save(path)
    loaded = rt.load_gallery(path)
    np.testing.assert_array_equal(loaded.locals, gallery.locals)
    assert loaded.bundle_id == rt.bundle_id
    foreign = Gallery(gallery.locals.copy(), gallery.globals.copy(), "0" * 64)
    foreign.save(path)
    with pytest.raises(BundleError, match="another bundle"):
        rt.load_gallery(path)
    with pytest.raises(BundleError, match="another bundle"):
        rt.score(foreign, ["a dog"])


def test_caption_index_stores_no_padding(rt):
    # One long caption must not make every caption as long as it: words are stored back to back.
    captions = ["a dog"] * 6 + ["a red car runs on the grass and two cats"]  # 12 tokens: the max
    index = rt.encode_texts(captions)
    dim = index.globals.shape[1]
    assert index.words.shape == (int(index.lengths.sum()), dim)
    assert index.words.nbytes < len(captions) * int(index.lengths.max()) * dim * 4 / 2
    # Padded tiles hold each caption's own words, zeros after: the same as encoding it alone.
    tile = index.padded_locals(3, 7)
    assert tile.shape == (4, int(index.lengths[6]), dim) and not tile[0, int(index.lengths[3]):].any()
    for row in (3, 6):
        alone = rt.encode_texts([captions[index.order[row]]])
        np.testing.assert_allclose(index.padded_locals(row, row + 1)[0], alone.words, atol=1e-6)
    sub = index.take(np.array([6, 0]))
    np.testing.assert_array_equal(sub.padded_locals(), index.padded_locals(0, 7)[[0, 6]][:, :int(sub.lengths.max())])
    assert list(sub.order) == [index.order[0], index.order[6]]


def test_exact_search_ranks_by_full_score(rt):
    feats = helpers.random_features(12, seed=6)
    gallery = rt.encode_images(feats)
    full = rt.score(gallery, ["a red car"])[:, 0]
    hits = rt.search_text("a red car", 5, gallery=gallery)
    assert [i for i, _ in hits] == list(np.argsort(-full, kind="stable")[:5])
    np.testing.assert_allclose([s for _, s in hits], np.sort(full)[::-1][:5], atol=1e-6)
    rt.use_captions(helpers.CAPTIONS)
    by_image = rt.search_image(feats[3], 3)
    row = rt.score(gallery, helpers.CAPTIONS)[3]
    assert [i for i, _ in by_image] == list(np.argsort(-row, kind="stable")[:3])


def test_two_stage_reranks_the_globals_shortlist(rt):
    feats = helpers.random_features(15, seed=7)
    gallery = rt.encode_images(feats)
    query = "two cats sleep"
    full = rt.score(gallery, [query])[:, 0]
    assert rt.search_text(query, 4, gallery=gallery, shortlist=15) == rt.search_text(query, 4, gallery=gallery)
    glob = rt.encode_texts([query]).globals[0]
    shortlist = set(np.argsort(-(gallery.globals @ glob))[:6].tolist())
    hits = rt.search_text(query, 4, gallery=gallery, shortlist=6)
    assert {i for i, _ in hits} <= shortlist
    expected = sorted(shortlist, key=lambda i: -full[i])[:4]
    assert [i for i, _ in hits] == expected
    np.testing.assert_allclose([s for _, s in hits], full[expected], atol=TOL)
    rt.use_captions(helpers.CAPTIONS)
    two = rt.search_image(feats[:2], 2, shortlist=4)
    assert len(two) == 2 and all(len(r) == 2 for r in two)


def test_runtime_never_imports_torch(bundle):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import kidrr.runtime as kr
        rt = kr.open_bundle({bundle[0]!r}, threads=1)
        g = rt.encode_images(np.random.default_rng(0).normal(size=(3, 5, 24)).astype(np.float32))
        s = rt.score(g, ["a dog runs", "a red car"])
        assert s.shape == (3, 2) and np.isfinite(s).all()
        rt.search_text("a dog", 2, gallery=g, shortlist=2)
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
