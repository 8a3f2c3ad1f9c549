"""kidrr serve, ray engine: one local Ray instance (loopback only) shared by this module.

Two shard deployments behind the ingress, reached over HTTP on 127.0.0.1: exact results equal
single-process exact search, two-stage results equal a rerank of the union of the shards'
shortlists (the same references as the local engine's tests, so ray == local), bad input is
refused without harm, and after a shard replica is killed the service answers fully again within
30 s and never answers wrongly meanwhile. Ray is shut down at the end of the module.
"""
import time

import httpx
import pytest

import serve_helpers as sh
from serve_helpers import built, gallery, rt  # noqa: F401 (fixtures)
from kidrr.runtime import Retriever
from kidrr.serve.settings import Settings
from kidrr.serve.shards import split_rows

SHARDS = 2


@pytest.fixture(scope="module")
def service(built, gallery):
    from kidrr.serve import ray_engine
    started = ray_engine.start_ray(None, num_cpus=2)
    try:
        port = sh.free_port()
        from kidrr.serve.catalog import open_catalog
        with Retriever(built[0], threads=1) as front:
            catalog, _ = open_catalog(front, [built[1]], SHARDS, built[2], built[3])
        app = ray_engine.build_application(built[0], catalog, Settings(timeout_s=3.0), replicas=1, threads=1)
        ray_engine.deploy(app, "127.0.0.1", port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as client:
            yield client, ray_engine
    finally:
        ray_engine.stop_ray(started)
        import ray
        assert not ray.is_initialized()


def test_ray_exact_search_equals_single_process(service, rt, gallery):
    client, _ = service
    info = client.get("/v1/info").json()
    assert info["engine"] == "ray" and info["shards"] == SHARDS and info["bundle"] == rt.bundle_id
    for query in sh.QUERIES:
        r = client.post("/v1/search/images", json={"query": query, "k": 6})
        assert r.status_code == 200 and r.json()["bundle"] == rt.bundle_id
        sh.assert_same_hits(sh.hits_of(r.json()), sh.exact_reference(rt, gallery, query, 6))
        assert all(x["id"] == f"img-{x['position']:04d}" for x in r.json()["results"])


def test_ray_two_stage_equals_rerank_of_shortlist_union(service, rt, gallery):
    client, _ = service
    ranges = split_rows(len(gallery), SHARDS)
    for query in sh.QUERIES:
        r = client.post("/v1/search/images", json={"query": query, "k": 4, "shortlist": 7})
        sh.assert_same_hits(sh.hits_of(r.json()), sh.union_rerank_reference(rt, gallery, query, 4, 7, ranges))


def test_ray_refuses_bad_input_and_keeps_serving(service, rt, gallery):
    client, _ = service
    for body, status in [(b"{nope", 400), (b'{"query": "a dog", "k": "3"}', 422), (b'{"query": "a dog", "x": 1}', 422),
                         (b'{"query": ""}', 422), (b'{"query": "a dog", "k": 3, "shortlist": 2}', 422)]:
        r = client.post("/v1/search/images", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and r.json()["error"]["message"], r.text
    r = client.post("/v1/search/images", json={"query": "a red car", "k": 3})
    sh.assert_same_hits(sh.hits_of(r.json()), sh.exact_reference(rt, gallery, "a red car", 3))
    assert client.get("/metrics").status_code == 200 and "kidrr_serve_errors_total" in client.get("/metrics").text


def similar_reference(rt, gallery, position, k):
    """Positions most like a stored item by the globals' cosine over the whole gallery, itself left out."""
    return rt.search_similar(gallery.globals[position], k, gallery=gallery, exclude=[position])


def test_ray_search_by_stored_item_equals_single_process(service, rt, gallery):
    """The shard holding the item gives its global, both shards search, the lists merge: the answer of
    one process over the whole gallery, for an item of either shard."""
    client, _ = service
    for position in (3, 41):
        r = client.post("/v1/search/similar", json={"id": f"img-{position:04d}", "k": 6})
        assert r.status_code == 200, r.text
        want = similar_reference(rt, gallery, position, 6)
        sh.assert_same_hits(sh.hits_of(r.json()), want)
        assert position not in {p for p, _ in sh.hits_of(r.json())}
        assert {p // 30 for p, _ in want} == {0, 1}      # both shards contribute: the merge is tested
    for body, status, kind in (({"id": "nope", "k": 3}, 404, "unknown_item"),
                               ({"id": "img-0003", "k": 3, "dedup": 2}, 422, "invalid_input"),
                               ({"id": "img-0003", "k": 3, "where": {"album": "x"}}, 422, "invalid_input"),
                               ({"id": "img-0003", "k": 0}, 422, "invalid_input")):
        r = client.post("/v1/search/similar", json=body)
        assert (r.status_code, r.json()["error"]["kind"]) == (status, kind), r.text
    # the features-only test bundle cannot encode a photo: the local engine's answer, not a Ray one
    r = client.post("/v1/search/similar/image?k=2", content=b"\x89PNG\r\n\x1a\n")
    assert r.status_code == 404 and "image graphs" in r.json()["error"]["message"], r.text
    r = client.post("/v1/search/similar", json={"id": "img-0007", "k": 2})
    assert r.status_code == 200 and len(r.json()["results"]) == 2          # still serving


def test_ray_recovers_from_a_killed_shard_replica_without_wrong_answers(service, rt, gallery):
    client, ray_engine = service
    query = "a big dog and a small cat"
    want = sh.exact_reference(rt, gallery, query, 5)
    (victim,) = ray_engine.replica_actor_names("shard0")
    ray_engine.kill_replica(victim)
    killed = time.time()
    statuses = []
    while True:
        r = client.post("/v1/search/images", json={"query": query, "k": 5})
        statuses.append(r.status_code)
        if r.status_code == 200:
            sh.assert_same_hits(sh.hits_of(r.json()), want)      # never a wrong answer
            if ray_engine.replica_actor_names("shard0") not in ([], [victim]):
                break                                            # answered by the replacement
        else:
            # With one replica per shard there is a gap: requests fail fast (503) or wait for the
            # replacement until their timeout (504); either way a JSON error, never a wrong list.
            assert (r.status_code, r.json()["error"]["kind"]) in {(503, "shard_unavailable"), (504, "timeout")}, r.text
        assert time.time() - killed < 30, f"no full answer 30 s after the kill: {statuses[-5:]}"
        time.sleep(0.2)
    assert client.get("/v1/ready").json()["ready"] is True


def test_ray_errors_have_the_one_shape_and_limits_hold(service, built):
    client, _ = service
    for r, status in ((client.get("/no/such/route"), 404), (client.get("/v1/score"), 405),
                      (client.post("/v1/search/captions", json={"features": [[0.0] * 24] * 300, "k": 2}), 422)):
        assert r.status_code == status and set(r.json()) == {"bundle", "error"}, r.text
    # heavy work is admitted by the ingress's engine as locally: every answer is 200 or a prompt 503
    from concurrent.futures import ThreadPoolExecutor
    body = {"captions": ["a dog"], "features": built[4][:8].tolist()}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: client.post("/v1/score", json=body), range(8)))
    for r in replies:
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:
            assert r.headers["retry-after"] and r.json()["error"]["kind"] == "overloaded"


def test_ray_serves_format2_shard_folders(service, built, rt, gallery, tmp_path):
    """Last in the module: it replaces the application with one over two format-2 gallery folders
    (memory-mapped in the shard replicas), and the answers equal the same references."""
    client, ray_engine = service
    from kidrr.serve.catalog import open_catalog
    ranges = split_rows(len(gallery), SHARDS)
    folders = sh.disk_shards(gallery, str(tmp_path), ranges)
    with Retriever(built[0], threads=1) as front:
        catalog, _ = open_catalog(front, folders, SHARDS, None, built[3])
    app = ray_engine.build_application(built[0], catalog, Settings(timeout_s=3.0, reload_check_s=0.05), replicas=1,
                                       threads=1)
    ray_engine.deploy(app, "127.0.0.1", client.base_url.port)
    assert client.get("/v1/info").json()["shards"] == SHARDS
    sh.assert_format2_answers(client, rt, gallery, ranges)
    r = client.post("/v1/search/similar", json={"id": "img-0041", "k": 5})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["results"]] == [f"img-{p:04d}" for p, _ in similar_reference(rt, gallery, 41, 5)]
    r = client.post("/v1/search/similar", json={"id": "img-0041", "k": 5, "where": {"album": "beach"}})
    assert r.status_code == 422 and "album" in r.json()["error"]["message"], r.text   # no shard has the field
    # The shards follow their galleries: removed + compacted items are no longer served.
    from kidrr.gallery import GalleryWriter, open_gallery
    query = {"query": sh.QUERIES[0], "k": 5}
    first = [h["id"] for h in client.post("/v1/search/images", json=query).json()["results"]]
    for folder in folders:
        gone = [i for i in first[:2] if i in set(open_gallery(folder).ids())]
        if gone:
            with GalleryWriter(folder) as w:
                w.remove(gone)
                w.compact()
    time.sleep(0.2)
    after = [h["id"] for h in client.post("/v1/search/images", json=query).json()["results"]]
    assert not set(first[:2]) & set(after) and after[:3] == first[2:5]
    # The item routes: every shard is asked, the one holding the item answers (thumbnails included).
    import gallery_helpers as gh
    thumbs = gh.item_thumbs(5)
    with GalleryWriter(folders[1]) as w:
        w.add(gallery.globals[:5], gallery.locals[:5], [f"thumb-{i}" for i in range(5)], thumbnails=thumbs)
    time.sleep(0.2)
    r = client.get("/v1/items/thumb-1/thumbnail")
    assert r.status_code == 200 and r.content == thumbs[1] and r.headers["content-type"] == "image/jpeg"
    assert client.get("/v1/items/thumb-1/thumbnail", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    assert client.get("/v1/items/thumb-4/thumbnail").json()["error"]["kind"] == "not_available"   # stored without one
    item = client.get("/v1/items/img-0041").json()
    assert item["id"] == "img-0041" and item["thumbnail"] is False and item["metadata"] == {}
    for unknown in ("/v1/items/nope.jpg", "/v1/items/nope.jpg/thumbnail", f"/v1/items/{first[0]}"):   # first[0]: removed
        r = client.get(unknown)
        assert r.status_code == 404 and r.json()["error"]["kind"] == "unknown_item", (unknown, r.text)
    assert client.get("/v1/ready").json()["ready"] is True
    with open(f"{folders[0]}/manifest.json", "w") as fh:
        fh.write("{")
    time.sleep(0.2)
    r = client.get("/v1/ready")
    assert r.status_code == 503 and "cannot be opened" in r.json()["detail"]


class _InProcessHandle:
    """A shard deployment's handle without Ray: `method.remote(*args)` runs the deployment class's own
    method (Shard.global_of / similar / fields) on a replica object made here."""

    def __init__(self, searcher):
        from kidrr.serve import ray_engine
        self.replica = object.__new__(ray_engine.Shard.func_or_class)
        self.replica.searcher = searcher

    def __getattr__(self, name):
        import inspect
        from types import SimpleNamespace
        method = getattr(self.replica, name)

        async def remote(*args):
            out = method(*args)
            return await out if inspect.isawaitable(out) else out
        return SimpleNamespace(remote=remote)


def test_ray_engine_searches_by_an_uploaded_photo_across_shards(pixel_bundle, tmp_path):
    """The ingress encodes the photo once and merges what both shards find: the runtime's answer over
    the whole gallery. In process (the shard handles call the deployment's methods directly), so the
    bundle with image graphs is not loaded into Ray replicas."""
    from fastapi.testclient import TestClient
    from image_files import scene
    from kidrr.serve import ray_engine
    from kidrr.serve.api import create_app
    from kidrr.serve.catalog import open_catalog
    from kidrr.serve.shards import ShardSearcher
    photo = tmp_path / "photo.png"
    scene(96, 64, 3).save(photo)
    with Retriever(pixel_bundle[0], threads=1) as prt:
        whole = prt.encode_images(sh.helpers.random_features(12, regions=49, feature_size=1280, seed=3))
        whole.save(str(tmp_path / "g.npz"))
        catalog, sources = open_catalog(prt, [str(tmp_path / "g.npz")], SHARDS, None, None)
        handles = [_InProcessHandle(ShardSearcher(prt, src, spec.start)) for spec, src in zip(catalog.shards, sources)]
        engine = ray_engine.RayEngine(prt, catalog, Settings(), handles, None, 1)
        want = prt.search_similar(prt.encode_image_files([str(photo)]), 5, gallery=whole)[0]
        with TestClient(create_app(engine, Settings())) as c:
            r = c.post("/v1/search/similar/image?k=5", content=photo.read_bytes(), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            sh.assert_same_hits(sh.hits_of(r.json()), want)
            assert {p // 6 for p, _ in want} == {0, 1}      # both shards contribute
            r = c.post("/v1/search/similar", json={"id": 7, "k": 4})
            assert r.status_code == 200, r.text
            sh.assert_same_hits(sh.hits_of(r.json()), prt.search_similar(whole.globals[7], 4, gallery=whole, exclude=[7]))
            bad = c.post("/v1/search/similar/image?k=3", content=b"\x89PNG\r\n\x1a\n broken")
            assert bad.status_code == 422 and bad.json()["error"]["kind"] == "invalid_input"
