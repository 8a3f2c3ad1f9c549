"""Shared pieces of the serve tests: a small bundle and gallery, and independent references.

The references do not use kidrr.serve: exact search is a full argsort of Retriever.score over the
whole gallery; two-stage is a numpy argsort of each shard's globals products (its own k' items),
then Retriever.score over the union of those shortlists, then the same ranking.
"""
import os
import socket

import numpy as np
import pytest

import test_runtime_helpers as helpers
from kidrr.runtime import Gallery, Retriever

SCORE_TOL = 1e-5     # fp32: a pair scored in another tile shape may differ in the last bits
QUERIES = ["a dog runs on the grass", "a red car", "two cats sleep", "the child holds a ball",
           "a big dog and a small cat", "a man rides a red bike"]


# Module-scoped fixtures both engines' test modules import (each module gets its own instances).
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("serve")))


@pytest.fixture(scope="module")
def rt(built):
    with Retriever(built[0], threads=1) as r:
        yield r


@pytest.fixture(scope="module")
def gallery(built, rt):
    return rt.load_gallery(built[1])


def build(root, n_images=60, regions=5):
    """(bundle path, gallery path, ids path, captions path, features) under root."""
    ckpt = helpers.small_checkpoint(os.path.join(root, "ckpt"))
    bundle = helpers.make_bundle(ckpt, os.path.join(root, "bundle"))
    from kidrr.runtime import Retriever
    with Retriever(bundle, threads=1) as rt:
        feats = helpers.random_features(n_images, regions=regions, seed=7)
        gallery_path = os.path.join(root, "gallery.npz")
        rt.encode_images(feats).save(gallery_path)
    ids_path = os.path.join(root, "ids.txt")
    with open(ids_path, "w") as fh:
        fh.write("".join(f"img-{i:04d}\n" for i in range(n_images)))
    captions_path = os.path.join(root, "captions.txt")
    with open(captions_path, "w") as fh:
        fh.write("\n".join(helpers.CAPTIONS) + "\n")
    return bundle, gallery_path, ids_path, captions_path, feats


def rank(scores, positions, k):
    """[(position, score)] best first, ties by the smaller position."""
    order = np.lexsort((positions, -scores))[:k]
    return [(int(positions[i]), float(scores[i])) for i in order]


def exact_reference(rt, gallery, query, k):
    scores = rt.score(gallery, [query])[:, 0]
    return rank(scores, np.arange(len(gallery)), k)


def union_rerank_reference(rt, gallery, query, k, shortlist, ranges):
    """Each shard shortlists `shortlist` of its own rows by the globals; rerank the union in one go."""
    qglob = np.asarray(rt.encode_texts([query]).globals[0])
    union = []
    for start, stop in ranges:
        sims = gallery.globals[start:stop] @ qglob
        union.extend(start + np.argsort(-sims, kind="stable")[:shortlist])
    union = np.array(sorted(union))
    sub = Gallery(np.array(gallery.locals[union]), np.array(gallery.globals[union]), gallery.bundle_id)
    return rank(rt.score(sub, [query])[:, 0], union, k)


def assert_same_hits(got, want):
    """Same positions in the same order, scores within SCORE_TOL."""
    assert [p for p, _ in got] == [p for p, _ in want], (got, want)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=SCORE_TOL)


def hits_of(response_json):
    return [(r["position"], r["score"]) for r in response_json["results"]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def disk_shards(gallery, root, ranges):
    """Format-2 gallery folders (fp32 locals, exact first stage), one per row range, ids img-NNNN."""
    from kidrr.gallery import GalleryWriter, create_gallery
    folders = []
    for i, (start, stop) in enumerate(ranges):
        folder = os.path.join(root, f"shard{i}.gallery")
        create_gallery(folder, gallery.bundle_id, regions=gallery.locals.shape[1], dim=gallery.globals.shape[1],
                       locals_dtype="fp32")
        with GalleryWriter(folder) as writer:
            mid = (start + stop) // 2          # two segments: rows keep their order across them
            for a, b in ((start, mid), (mid, stop)):
                writer.add(gallery.globals[a:b], gallery.locals[a:b], [f"img-{r:04d}" for r in range(a, b)])
        folders.append(folder)
    return folders


def as_ids(hits):
    return [(f"img-{p:04d}", s) for p, s in hits]


def assert_format2_answers(client, rt, gallery, ranges):
    """A service over format-2 shard folders (disk_shards of `ranges`): ids and no positions, exact
    answers equal to single-process exact search, two-stage equal to the rerank of the shortlist union."""
    import numpy as np
    for query, k, shortlist in [(q, 6, None) for q in QUERIES] + [(q, 4, 9) for q in QUERIES]:
        body = {"query": query, "k": k} if shortlist is None else {"query": query, "k": k, "shortlist": shortlist}
        r = client.post("/v1/search/images", json=body)
        assert r.status_code == 200, r.text
        got = [(x["id"], x["score"]) for x in r.json()["results"]]
        assert all(x["position"] is None for x in r.json()["results"])
        want = as_ids(exact_reference(rt, gallery, query, k) if shortlist is None
                      else union_rerank_reference(rt, gallery, query, k, shortlist, ranges))
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=SCORE_TOL)
