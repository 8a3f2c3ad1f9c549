"""kidrr serve, local engine, as a hostile client sees it: answers that follow the gallery's new
generations, heavy work admitted only while there is room, uploads with their own limits, one error
shape for every error, an OpenAPI document that says what the service does, an ASCII-only token."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

import serve_helpers as sh
from serve_helpers import built, gallery, rt  # noqa: F401 (fixtures)
from kidrr.errors import ConfigError
from kidrr.serve.api import create_app
from kidrr.serve.catalog import open_catalog
from kidrr.serve.engine import LocalEngine
from kidrr.serve.settings import Limits, Settings, check_bind
from kidrr.serve.shards import split_rows


def engine_and_client(built, rt, settings, galleries=None):
    catalog, sources = open_catalog(rt, galleries or [built[1]], 1, None if galleries else built[2], built[3])
    engine = LocalEngine(rt, catalog, sources, settings)
    return engine, TestClient(create_app(engine, settings))


def assert_error_shape(r, status, kind=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"bundle", "error"} and set(body["error"]) == {"kind", "message"}, body
    if kind:
        assert body["error"]["kind"] == kind, body


# ---- the token ------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["geheimes-passwört-123", "token with spaces 123456", "ключ" * 5])
def test_a_token_no_client_could_send_is_refused_at_start_up(token):
    with pytest.raises(ConfigError, match="printable ASCII"):
        check_bind("0.0.0.0", token, False)


# ---- one error shape, and a schema that says so -------------------------------------------------------
def test_framework_errors_have_the_documented_shape(built, rt):
    _, client = engine_and_client(built, rt, Settings())
    with client as c:
        assert_error_shape(c.get("/no/such/route"), 404, "not_found")
        assert_error_shape(c.get("/v1/score"), 405, "method_not_allowed")
        assert_error_shape(c.post("/v1/search/images", content=b"{", headers={"content-type": "application/json"}),
                           400, "malformed_json")
        assert_error_shape(c.post("/v1/search/captions/image?k=abc", content=b"x"), 422)
        assert c.get("/v1/health").status_code == 200             # and it keeps serving


def test_openapi_documents_errors_limits_and_metrics(built, rt):
    limits = Limits(max_k=7, max_shortlist=33, max_regions=50, max_items=9)
    _, client = engine_and_client(built, rt, Settings(limits=limits))
    with client as c:
        doc = c.get("/openapi.json").json()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            codes = set(op["responses"])
            assert {"400", "401", "413", "500", "503"} <= codes or path == "/v1/health", (path, codes)
            for code in codes - {"200"}:
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (path, code, ref)
            if method == "post":
                assert {"422", "504"} <= codes, (path, codes)
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    bodies = doc["components"]["schemas"]
    assert bodies["TextSearch"]["properties"]["k"]["maximum"] == 7
    assert any(b.get("maximum") == 33 for b in bodies["TextSearch"]["properties"]["shortlist"]["anyOf"])
    assert bodies["ImageSearch"]["properties"]["features"]["maxItems"] == 50
    assert bodies["ScoreRequest"]["properties"]["captions"]["maxItems"] == 9
    upload = doc["paths"]["/v1/search/captions/image"]["post"]
    assert {p["name"]: p["schema"].get("maximum") for p in upload["parameters"]}["k"] == 7


# ---- answers follow the gallery -------------------------------------------------------------------
def test_removed_and_compacted_items_are_not_served(built, rt, gallery, tmp_path):
    from kidrr.gallery import GalleryWriter
    folders = sh.disk_shards(gallery, str(tmp_path), split_rows(len(gallery), 1))
    engine, client = engine_and_client(built, rt, Settings(reload_check_s=0.05), galleries=folders)
    query = {"query": sh.QUERIES[0], "k": 5}
    with client as c:
        first = [h["id"] for h in c.post("/v1/search/images", json=query).json()["results"]]
        with GalleryWriter(folders[0]) as w:
            w.remove(first[:2])
            w.compact()
        time.sleep(0.1)
        after = c.post("/v1/search/images", json=query).json()
        assert not set(first[:2]) & {h["id"] for h in after["results"]}
        assert [h["id"] for h in after["results"]][:3] == first[2:5]
        assert c.get("/v1/ready").json()["ready"] is True
        assert c.get("/v1/info").json()["gallery_items"] == len(gallery) - 2
        # a new generation that cannot be opened: not ready, and the last good one keeps answering
        with open(f"{folders[0]}/manifest.json", "w") as fh:
            fh.write("{")
        time.sleep(0.1)
        assert c.post("/v1/search/images", json=query).status_code == 200
        r = c.get("/v1/ready")
        assert r.status_code == 503 and "cannot be opened" in r.json()["detail"]


# ---- heavy work ---------------------------------------------------------------------------------------
class SlowScores:
    """The retriever, with score() taking `seconds` longer and counting the calls that really ran."""

    def __init__(self, rt, seconds):
        self.rt, self.seconds, self.ran = rt, seconds, 0
        self.lock = threading.Lock()

    def score(self, *args, **kw):
        with self.lock:
            self.ran += 1
        time.sleep(self.seconds)
        return self.rt.score(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.rt, name)


def score_body(built, n=1):
    return {"captions": ["a dog"], "features": built[4][:n].tolist()}


def test_heavy_work_beyond_capacity_is_503_at_once(built, rt):
    engine, client = engine_and_client(built, rt, Settings(max_heavy=2, timeout_s=5))
    engine.retriever = SlowScores(rt, 0.4)
    with client as c, ThreadPoolExecutor(6) as pool:
        started = time.perf_counter()
        replies = list(pool.map(lambda _: c.post("/v1/score", json=score_body(built)), range(6)))
        codes = sorted(r.status_code for r in replies)
        assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
        for r in replies:
            if r.status_code == 503:
                assert r.headers["retry-after"] and r.json()["error"]["kind"] == "overloaded"
        assert time.perf_counter() - started < 4
        enc = c.post("/v1/encode", json={"captions": ["a cat"]})   # light work is answered afterwards
        assert enc.status_code == 200
    assert engine._admitted == 0


def test_work_whose_request_timed_out_is_dropped(built, rt):
    engine, client = engine_and_client(built, rt, Settings(max_heavy=8, timeout_s=0.2))
    slow = engine.retriever = SlowScores(rt, 0.6)
    with client as c, ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: c.post("/v1/score", json=score_body(built)), range(6)))
        assert all(r.status_code == 504 for r in replies), [r.status_code for r in replies]
        time.sleep(1.5)
    assert slow.ran <= 2          # the two pool threads took two; the four still queued never ran
    assert engine._admitted == 0


def test_regions_per_image_are_capped(built, rt):
    _, client = engine_and_client(built, rt, Settings(limits=Limits(max_regions=8)))
    feats = np.zeros((9, built[4].shape[2]), np.float32).tolist()
    with client as c:
        r = c.post("/v1/search/captions", json={"features": feats, "k": 2})
        assert_error_shape(r, 422, "invalid_input")
        assert "9 regions" in r.json()["error"]["message"]
        r = c.post("/v1/score", json={"captions": ["a"], "features": [feats]})
        assert_error_shape(r, 422)


# ---- uploads ----------------------------------------------------------------------------------------------
def test_uploads_have_their_own_pixel_and_byte_limits(pixel_bundle, tmp_path):
    import io
    from PIL import Image
    from kidrr.runtime import Retriever
    (tmp_path / "captions.txt").write_text("a red circle\na blue square\n")
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000), 0).save(bomb, format="PNG")   # a few KB, 25 MP
    assert len(bomb.getvalue()) < 100_000
    settings = Settings(limits=Limits(max_upload_pixels=1_000_000, max_upload_bytes=50_000))
    with Retriever(pixel_bundle[0], threads=1) as prt:
        prt.encode_images(sh.helpers.random_features(4, regions=49, feature_size=1280)).save(str(tmp_path / "g.npz"))
        catalog, sources = open_catalog(prt, [str(tmp_path / "g.npz")], 1, None, str(tmp_path / "captions.txt"))
        with TestClient(create_app(LocalEngine(prt, catalog, sources, settings), settings)) as c:
            started = time.perf_counter()
            r = c.post("/v1/search/captions/image?k=1", content=bomb.getvalue(), headers={"content-type": "image/png"})
            assert_error_shape(r, 413, "too_large")
            assert "25,000,000" in r.json()["error"]["message"] and time.perf_counter() - started < 2
            r = c.post("/v1/search/captions/image?k=1", content=b"\0" * 60_000, headers={"content-type": "image/png"})
            assert_error_shape(r, 413, "too_large")
