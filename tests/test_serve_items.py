"""kidrr serve's item routes and the page's files: GET /v1/items/{id}, its thumbnail, / and /ui/*
(local engine through FastAPI's TestClient; the browser tests are tests/test_web_page.py)."""
import numpy as np
import pytest
from fastapi.testclient import TestClient

import gallery_helpers as gh
from serve_helpers import built, gallery, rt  # noqa: F401 (fixtures)
from kidrr.gallery import GalleryWriter, create_gallery
from kidrr.serve.api import create_app
from kidrr.serve.catalog import open_catalog
from kidrr.serve.client import Client, ServiceError
from kidrr.serve.engine import LocalEngine
from kidrr.serve.settings import Settings
from kidrr.serve.web import FILES, PAGE_DIR

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
IDS = ["trip/a dog.jpg", HOSTILE, "café/ünï 100%.jpg", "x/thumbnail-not", "plain"]
TOKEN = "0123456789abcdef-token"


def _write(root, name, gallery, ids, thumbnails):
    folder = str(root / name)
    n = len(ids)
    create_gallery(folder, gallery.bundle_id, gallery.locals.shape[1], gallery.globals.shape[1], "fp32")
    with GalleryWriter(folder) as w:
        w.add(gallery.globals[:n], gallery.locals[:n], ids, [{"album": "<b>beach</b>", "n": i} for i in range(n)],
              gh.item_thumbs(n) if thumbnails else None)
    return folder


def _app(rt, folders, **settings):
    catalog, sources = open_catalog(rt, folders, 1, None, None)
    s = Settings(**settings)
    return TestClient(create_app(LocalEngine(rt, catalog, sources, s), s))


@pytest.fixture(scope="module")
def folders(built, rt, gallery, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("serve-items")
    return {"thumbs": _write(root, "thumbs", gallery, IDS, True), "plain": _write(root, "plain", gallery, IDS, False)}


def _path(item):
    from urllib.parse import quote
    return "/v1/items/" + quote(item, safe="")


def test_items_and_thumbnails(rt, folders):  # noqa: F811
    want = dict(zip(IDS, gh.item_thumbs(len(IDS))))
    with _app(rt, [folders["thumbs"]]) as c:
        for i, item in enumerate(IDS):
            r = c.get(_path(item))
            assert r.status_code == 200, r.text
            assert r.json() == {"bundle": rt.bundle_id, "id": item, "metadata": {"album": "<b>beach</b>", "n": i},
                                "thumbnail": want[item] is not None}
            r = c.get(_path(item) + "/thumbnail")
            if want[item] is None:
                assert r.status_code == 404 and r.json()["error"]["kind"] == "not_available"
                continue
            assert r.status_code == 200 and r.content == want[item]
            assert r.headers["content-type"] == "image/jpeg" and "max-age" in r.headers["cache-control"]
            again = c.get(_path(item) + "/thumbnail", headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        for unknown in ("nope.jpg", "../../etc/passwd", "trip", "%2e%2e/manifest.json", "manifest.json"):
            for suffix in ("", "/thumbnail"):
                r = c.get(_path(unknown) + suffix)
                assert r.status_code == 404 and r.json()["error"]["kind"] == "unknown_item", (unknown, r.text)
        assert c.get("/v1/info").json()["thumbnails"] is True
        assert c.get("/v1/info").json()["fields"] == {"album": "string", "n": "number"}
        paths = c.get("/openapi.json").json()["paths"]
        assert {"/v1/items/{item_id}", "/v1/items/{item_id}/thumbnail"} <= set(paths)
        client = Client("http://testserver")
        client.http.close()
        client.http = c
        assert client.item("trip/a dog.jpg")["metadata"]["n"] == 0
        assert client.thumbnail(HOSTILE) == want[HOSTILE]
        with pytest.raises(ServiceError) as err:
            client.thumbnail("nope")
        assert err.value.status == 404 and err.value.kind == "unknown_item"


def test_removed_items_stop_being_served(rt, folders, tmp_path, gallery):  # noqa: F811
    folder = _write(tmp_path, "g", gallery, IDS, True)
    with _app(rt, [folder], reload_check_s=0.0) as c:
        assert c.get(_path(IDS[0]) + "/thumbnail").status_code == 200
        with GalleryWriter(folder) as w:
            w.remove([IDS[0]])
        for suffix in ("", "/thumbnail"):
            r = c.get(_path(IDS[0]) + suffix)
            assert r.status_code == 404 and r.json()["error"]["kind"] == "unknown_item"


def test_a_gallery_without_thumbnails_still_serves(rt, folders):  # noqa: F811
    with _app(rt, [folders["plain"]]) as c:
        assert c.get("/v1/info").json()["thumbnails"] is False
        assert c.get(_path("plain")).json()["thumbnail"] is False
        r = c.get(_path("plain") + "/thumbnail")
        assert r.status_code == 404 and "no thumbnail" in r.json()["error"]["message"]
        assert c.post("/v1/search/images", json={"query": "a dog", "k": 3}).status_code == 200


def test_the_page_files_their_headers_size_and_the_token(rt, folders):  # noqa: F811
    with _app(rt, [folders["thumbs"]], token=TOKEN) as c:
        total = 0
        for path, (_, media_type) in FILES.items():
            r = c.get(path)                      # the page's own files need no token: they hold no data
            assert r.status_code == 200 and r.headers["content-type"].startswith(media_type.split(";")[0])
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "img-src 'self' blob:" in csp and "unsafe" not in csp
            total += len(r.content)
        assert total <= 100 * 1024, f"the page's files are {total} bytes"
        html = c.get("/").text
        assert "<script>" not in html and " on" not in html.replace("\n", " ").split("<body>")[1].split("=")[0]
        js = c.get("/ui/app.js").text
        assert "innerHTML" not in js and "eval(" not in js and "new Function" not in js
        for path in (_path("plain"), _path(IDS[0]) + "/thumbnail", "/v1/info"):
            assert c.get(path).status_code == 401                        # data routes: the token rules
            assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        for path in ("/ui/../manifest.json", "/ui/app.js.map", "/ui/", "/index.html"):
            assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    with _app(rt, [folders["thumbs"]], ui=False) as c:
        assert c.get("/").status_code == 404 and c.get("/ui/app.js").status_code == 404
        assert c.get(_path("plain")).status_code == 200


def test_the_packaged_page_is_what_setup_ships():
    import os
    import re
    setup = open(os.path.join(os.path.dirname(PAGE_DIR), "..", "setup.py")).read()
    patterns = re.search(r'"kidrr.serve": \[([^\]]*)\]', setup).group(1)
    import fnmatch
    globs = [p.strip().strip('"') for p in patterns.split(",")]
    assert all(any(fnmatch.fnmatch(f"page/{name}", g) for g in globs) for name, _ in FILES.values())
