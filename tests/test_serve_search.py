"""kidrr serve: text search with filters and dedup, search by stored item, over format-2 shards with
metadata; references are the runtime on one gallery holding every item (no kidrr.serve)."""
import numpy as np
import pytest
from fastapi.testclient import TestClient

import serve_helpers as sh
from serve_helpers import built, gallery, rt  # noqa: F401 (fixtures)
from kidrr.gallery import GalleryWriter, create_gallery, open_gallery
from kidrr.serve.api import create_app
from kidrr.serve.catalog import open_catalog
from kidrr.serve.client import Client, ServiceError
from kidrr.serve.engine import LocalEngine
from kidrr.serve.settings import Settings


def _meta(r):
    # "n" only in the second shard: a field one shard lacks matches nothing there
    return {"album": "beach" if r % 3 == 0 else "city", **({"n": r} if r >= 30 else {})}


def _write(root, name, gallery, rows):
    folder = str(root / name)
    create_gallery(folder, gallery.bundle_id, gallery.locals.shape[1], gallery.globals.shape[1], "fp32")
    with GalleryWriter(folder) as w:
        w.add(gallery.globals[rows], gallery.locals[rows], [f"img-{r:04d}" for r in rows], [_meta(r) for r in rows])
    return folder


@pytest.fixture(scope="module")
def setup(built, rt, gallery, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-search")
    n = len(gallery)
    shards = [_write(root, "s0", gallery, list(range(0, 30))), _write(root, "s1", gallery, list(range(30, n)))]
    whole = open_gallery(_write(root, "whole", gallery, list(range(n))))
    catalog, sources = open_catalog(rt, shards, 1, None, None)
    settings = Settings()
    with TestClient(create_app(LocalEngine(rt, catalog, sources, settings), settings)) as c:
        yield c, whole


def test_filtered_and_deduplicated_text_search_equal_the_single_gallery(setup, rt):
    client, whole = setup
    for where in ({"album": "beach"}, {"n": {"gte": 40}}, {"or": [{"album": "beach"}, {"n": {"lt": 33}}]}):
        for query in sh.QUERIES[:3]:
            r = client.post("/v1/search/images", json={"query": query, "k": 5, "where": where})
            assert r.status_code == 200, r.text
            want = rt.search_text(query, 5, gallery=whole, where=where)
            assert [(h["id"], h["score"]) for h in r.json()["results"]] == [(i, pytest.approx(s, abs=1e-5))
                                                                         for i, s in want]
    r = client.post("/v1/search/images", json={"query": sh.QUERIES[0], "k": 4, "dedup": 0.5})
    assert r.status_code == 200 and len(r.json()["results"]) <= 4


def test_search_by_stored_item_and_its_errors(setup, rt):
    client, whole = setup
    for item in ("img-0003", "img-0041"):
        r = client.post("/v1/search/similar", json={"id": item, "k": 6, "where": {"album": "city"}})
        assert r.status_code == 200, r.text
        want = rt.search_like_id(item, 6, gallery=whole, where={"album": "city"})
        got = [(h["id"], h["score"]) for h in r.json()["results"]]
        assert [i for i, _ in got] == [i for i, _ in want] and item not in {i for i, _ in got}
    r = client.post("/v1/search/similar", json={"id": "nope", "k": 3})
    assert r.status_code == 404 and r.json()["error"]["kind"] == "unknown_item"
    for body, status in (({"id": "img-0003", "k": 3, "where": {"nope": 1}}, 422),
                         ({"id": "img-0003", "k": 3, "where": {"album": {"gt": 1}}}, 422),
                         ({"id": "img-0003", "k": 3, "where": "album"}, 422),
                         ({"id": "img-0003", "k": 3, "dedup": 2}, 422),
                         ({"query": "a dog", "k": 3, "where": {"n": "x"}}, 422)):
        path = "/v1/search/images" if "query" in body else "/v1/search/similar"
        r = client.post(path, json=body)
        assert r.status_code == status and r.json()["error"]["kind"] in ("invalid_input", "invalid_request"), r.text
    assert client.post("/v1/search/similar", json={"id": "img-0003", "k": 2}).status_code == 200   # still serving
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/search/similar", "/v1/search/similar/image"} <= set(paths)


def test_client_methods(setup):
    client, _ = setup
    c = Client("http://testserver")
    c.http.close()
    c.http = client             # the TestClient is an httpx.Client over the app
    assert c.search_similar("img-0003", k=2)[0]["id"] != "img-0003"
    assert all(h["id"] in {f"img-{r:04d}" for r in range(0, 60, 3)}
               for h in c.search_images("a red car", k=3, where={"album": "beach"}))
    with pytest.raises(ServiceError) as err:
        c.search_similar("nope")
    assert err.value.status == 404
