"""kidrr serve, local engine: in-process (FastAPI TestClient) and a real uvicorn on a loopback port.

Correctness against independent references (serve_helpers), every kind of bad input (4xx with a
JSON error, and the service keeps serving), batching, the bounded queue, timeouts, the token,
metrics, start-up verification, the missing-extra message, the client and graceful shutdown.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastapi.testclient import TestClient  # the [serve] extra: the README's set-up command installs it

import serve_helpers as sh  # noqa: E402
from serve_helpers import built, gallery, rt  # noqa: E402,F401 (fixtures)
from kidrr.errors import ConfigError, DataError, InputError  # noqa: E402
from kidrr.runtime import Retriever  # noqa: E402
from kidrr.serve.api import create_app  # noqa: E402
from kidrr.serve.catalog import open_catalog  # noqa: E402
from kidrr.serve.engine import LocalEngine  # noqa: E402
from kidrr.serve.settings import Limits, Settings, check_bind  # noqa: E402
from kidrr.serve.shards import split_rows  # noqa: E402


def make_client(built, rt, settings=Settings(), shards=1, galleries=None):
    catalog, sources = open_catalog(rt, galleries or [built[1]], shards, None if galleries else built[2], built[3])
    return TestClient(create_app(LocalEngine(rt, catalog, sources, settings), settings))


@pytest.fixture(scope="module")
def client3(built, rt):
    with make_client(built, rt, shards=3) as c:
        yield c


@pytest.mark.parametrize("k", [1, 7])
def test_sharded_exact_search_equals_single_process(client3, rt, gallery, k):
    for query in sh.QUERIES:
        r = client3.post("/v1/search/images", json={"query": query, "k": k})
        assert r.status_code == 200
        body = r.json()
        assert body["bundle"] == rt.bundle_id and r.headers["x-kidrr-bundle"] == rt.bundle_id
        sh.assert_same_hits(sh.hits_of(body), sh.exact_reference(rt, gallery, query, k))
        assert [x["id"] for x in body["results"]] == [f"img-{x['position']:04d}" for x in body["results"]]


@pytest.mark.parametrize("k,shortlist", [(3, 5), (5, 12), (2, 30)])
def test_sharded_two_stage_equals_rerank_of_shortlist_union(client3, rt, gallery, k, shortlist):
    ranges = split_rows(len(gallery), 3)
    for query in sh.QUERIES:
        r = client3.post("/v1/search/images", json={"query": query, "k": k, "shortlist": shortlist})
        assert r.status_code == 200
        want = sh.union_rerank_reference(rt, gallery, query, k, shortlist, ranges)
        sh.assert_same_hits(sh.hits_of(r.json()), want)


def test_one_shard_two_stage_is_the_runtime_two_stage(built, rt, gallery):
    with make_client(built, rt) as c:
        for query in sh.QUERIES[:3]:
            got = sh.hits_of(c.post("/v1/search/images", json={"query": query, "k": 4, "shortlist": 9}).json())
            sh.assert_same_hits(got, rt.search_text(query, 4, gallery=gallery, shortlist=9))


@pytest.fixture(scope="module")
def disk_client(built, rt, gallery, tmp_path_factory):
    folders = sh.disk_shards(gallery, str(tmp_path_factory.mktemp("disk")), split_rows(len(gallery), 2))
    with make_client(built, rt, galleries=folders) as c:
        yield c


def test_format2_shards_exact_and_two_stage_equal_the_references(disk_client, rt, gallery):
    sh.assert_format2_answers(disk_client, rt, gallery, split_rows(len(gallery), 2))


def test_format2_shards_with_a_repeated_id_are_refused(built, rt, gallery, tmp_path):
    folders = sh.disk_shards(gallery, str(tmp_path), [(0, 10), (9, 20)])   # row 9 in both
    with pytest.raises(DataError, match="img-0009"):
        open_catalog(rt, folders, 1, None, None)
    with pytest.raises(InputError, match="--shards 3"):
        open_catalog(rt, folders[:1] + folders[1:], 3, None, None)


def test_caption_search_score_and_encode_match_the_runtime(client3, rt, built):
    paths = client3.get("/openapi.json").json()["paths"]
    assert {"/v1/search/images", "/v1/search/captions", "/v1/score", "/v1/encode", "/v1/ready"} <= set(paths)
    feats = built[4][:3]
    index = rt.encode_texts(built_captions(built))
    r = client3.post("/v1/search/captions", json={"features": feats[0].tolist(), "k": 3})
    want = rt.search_image(feats[0], 3, captions=index)
    assert [(x["position"], x["caption"]) for x in r.json()["results"]] == \
        [(p, built_captions(built)[p]) for p, _ in want]
    np.testing.assert_allclose([x["score"] for x in r.json()["results"]], [s for _, s in want], atol=sh.SCORE_TOL)
    r = client3.post("/v1/score", json={"features": feats.tolist(), "captions": sh.QUERIES[:2]})
    np.testing.assert_allclose(r.json()["scores"], rt.score(rt.encode_images(feats), sh.QUERIES[:2]),
                               atol=sh.SCORE_TOL)
    r = client3.post("/v1/encode", json={"captions": sh.QUERIES[:2], "features": feats[:1].tolist()})
    np.testing.assert_allclose(r.json()["image_globals"], rt.encode_images(feats[:1]).globals, atol=sh.SCORE_TOL)
    want_caps = rt.encode_texts(sh.QUERIES[:2])
    np.testing.assert_allclose(r.json()["caption_globals"],
                               np.asarray(want_caps.globals)[np.argsort(want_caps.order)], atol=sh.SCORE_TOL)


def built_captions(built):
    with open(built[3]) as fh:
        return [line.strip() for line in fh if line.strip()]


def _image(built, regions=5, size=24):
    return np.asarray(built[4][0][:regions, :size]).tolist()


def bad_requests(built):
    nan_image = _image(built)
    nan_image[1][3] = float("nan")
    ragged = _image(built)
    ragged[2] = ragged[2][:-1]
    return [
        ("/v1/search/images", b"{not json", 400, "malformed_json"),
        ("/v1/search/images", {"query": "a dog", "k": "5"}, 422, "invalid_request"),
        ("/v1/search/images", {"query": "a dog", "k": 2.5}, 422, "invalid_request"),
        ("/v1/search/images", {"k": 5}, 422, "invalid_request"),
        ("/v1/search/images", {"query": "a dog", "colour": "red"}, 422, "invalid_request"),
        ("/v1/search/images", {"query": "   "}, 422, "invalid_input"),
        ("/v1/search/images", {"query": "dog " * 300}, 422, "invalid_input"),        # over max chars
        ("/v1/search/images", {"query": "a dog " * 10}, 422, "invalid_input"),       # over max tokens
        ("/v1/search/images", {"query": "zebra quokka"}, 422, "invalid_input"),      # no known word
        ("/v1/search/images", {"query": "a dog", "k": 0}, 422, "invalid_input"),
        ("/v1/search/images", {"query": "a dog", "k": 101}, 422, "invalid_input"),   # over max_k
        ("/v1/search/images", {"query": "a dog", "k": 61}, 422, "invalid_input"),    # over gallery size
        ("/v1/search/images", {"query": "a dog", "k": 5, "shortlist": 3}, 422, "invalid_input"),
        ("/v1/search/images", {"query": "a dog", "k": 5, "shortlist": 5000}, 422, "invalid_input"),
        ("/v1/search/images", [1, 2], 422, "invalid_request"),
        ("/v1/search/captions", {"features": nan_image, "k": 2}, 422, "invalid_input"),
        ("/v1/search/captions", {"features": ragged, "k": 2}, 422, "invalid_input"),
        ("/v1/search/captions", {"features": _image(built, size=20), "k": 2}, 422, "invalid_input"),
        ("/v1/search/captions", {"features": [["x"]], "k": 2}, 422, "invalid_request"),
        ("/v1/score", {"features": [_image(built)], "captions": []}, 422, "invalid_input"),
        ("/v1/score", {"features": [_image(built)] * 2, "captions": ["a dog"] * 65}, 422, "invalid_input"),
        ("/v1/encode", {}, 422, "invalid_input"),
        ("/v1/nowhere", {}, 404, None),
    ]


def test_bad_input_gets_a_json_4xx_and_the_service_keeps_serving(client3, rt, gallery, built):
    good = {"query": "a dog runs on the grass", "k": 3}
    want = sh.exact_reference(rt, gallery, good["query"], 3)
    for path, body, status, kind in bad_requests(built):
        if isinstance(body, bytes):
            r = client3.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = client3.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == status, (path, body if not isinstance(body, dict) else list(body), r.text)
        if kind:
            err = r.json()["error"]
            assert err["kind"] == kind and len(err["message"]) > 10, r.text
            assert r.json()["bundle"] == rt.bundle_id
        sh.assert_same_hits(sh.hits_of(client3.post("/v1/search/images", json=good).json()), want)


def test_body_size_limit_answers_413(built, rt):
    settings = Settings(Limits(max_body_bytes=4096))
    with make_client(built, rt, settings) as c:
        r = c.post("/v1/score", json={"features": [_image(built)] * 4, "captions": ["a dog"]})
        assert r.status_code == 413 and r.json()["error"]["kind"] == "too_large"
        streamed = iter([b'{"query": "' + b"a " * 1500, b"dog " * 1500 + b'"}'])   # no Content-Length: counted
        r = c.post("/v1/search/images", content=streamed, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["kind"] == "too_large"
        assert c.post("/v1/search/images", json={"query": "a dog", "k": 2}).status_code == 200


def test_concurrent_queries_are_encoded_in_one_batch(built, rt, gallery):
    settings = Settings(max_batch=16, batch_wait_ms=150)
    with make_client(built, rt, settings) as c:
        engine = c.app.state.engine if hasattr(c.app, "state") else None
        queries = sh.QUERIES * 2
        with ThreadPoolExecutor(len(queries)) as pool:
            responses = list(pool.map(lambda q: c.post("/v1/search/images", json={"query": q, "k": 4}), queries))
        for q, r in zip(queries, responses):
            sh.assert_same_hits(sh.hits_of(r.json()), sh.exact_reference(rt, gallery, q, 4))
        assert max(engine.batcher.batch_sizes) > 1, engine.batcher.batch_sizes
        assert sum(engine.batcher.batch_sizes) == len(queries)


def test_full_queue_answers_503_then_recovers(built, rt):
    settings = Settings(max_batch=1, batch_wait_ms=0, max_queue=1)
    with make_client(built, rt, settings) as c:
        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(lambda q: c.post("/v1/search/images", json={"query": q, "k": 50}),
                                  sh.QUERIES * 4))
        statuses = sorted({r.status_code for r in codes})
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}, statuses
        rejected = next(r for r in codes if r.status_code == 503)
        assert rejected.json()["error"]["kind"] == "overloaded" and rejected.headers["retry-after"] == "1"
        assert c.post("/v1/search/images", json={"query": "a dog", "k": 2}).status_code == 200


def test_request_past_its_timeout_answers_504(built, rt, monkeypatch):
    # A lone request runs at once, so the wait comes from the encoder itself: 0.4 s against a 0.05 s budget.
    import time
    encode = rt.encode_texts
    monkeypatch.setattr(rt, "encode_texts", lambda *a, **kw: (time.sleep(0.4), encode(*a, **kw))[1])
    settings = Settings(timeout_s=0.05)
    with make_client(built, rt, settings) as c:
        r = c.post("/v1/search/images", json={"query": "a dog", "k": 2})
        assert r.status_code == 504 and r.json()["error"]["kind"] == "timeout"


def test_token_is_required_when_set(built, rt):
    token = "t" * 24
    with make_client(built, rt, Settings(token=token)) as c:
        assert c.get("/v1/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxx"}, {"Authorization": token}):
            r = c.post("/v1/search/images", json={"query": "a dog", "k": 2}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["kind"] == "unauthorized"
        assert c.get("/docs").status_code == 401
        ok = c.post("/v1/search/images", json={"query": "a dog", "k": 2}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200


def test_non_loopback_bind_needs_a_token_or_insecure():
    check_bind("127.0.0.1", None, False)
    check_bind("::1", None, False)
    with pytest.raises(ConfigError, match="API token"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(ConfigError, match="shorter than 16"):
        check_bind("0.0.0.0", "short", False)
    check_bind("0.0.0.0", "x" * 20, False)
    check_bind("0.0.0.0", None, True)


def _counter(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_latency_and_errors(built, rt):
    with make_client(built, rt) as c:
        for _ in range(3):
            c.post("/v1/search/images", json={"query": "a dog", "k": 2})
        c.post("/v1/search/images", json={"query": "a dog", "k": 0})
        c.post("/v1/search/images", content=b"{", headers={"content-type": "application/json"})
        text = c.get("/metrics").text
    assert _counter(text, "kidrr_serve_requests_total", route="/v1/search/images", status="200") == 3
    assert _counter(text, "kidrr_serve_requests_total", route="/v1/search/images", status="422") == 1
    assert _counter(text, "kidrr_serve_errors_total", kind="invalid_input") == 1
    assert _counter(text, "kidrr_serve_errors_total", kind="malformed_json") == 1
    assert _counter(text, "kidrr_serve_latency_seconds_count", route="/v1/search/images") == 5


# ---- the command --------------------------------------------------------------------------------
def _invoke(args, env=None):
    from click.testing import CliRunner

    from kidrr.serve.cli import main
    return CliRunner().invoke(main, args, env=env)


def test_start_up_refuses_bad_bundle_gallery_or_ids(built, tmp_path):
    bundle, gallery_path, ids_path = built[0], built[1], built[2]
    tampered = tmp_path / "bundle"
    shutil.copytree(bundle, tampered)
    with open(tampered / "vocab.json", "a") as fh:
        fh.write(" ")
    r = _invoke(["--bundle", str(tampered), "--gallery", gallery_path])
    assert r.exit_code == 2 and "BundleError" in r.output and "vocab.json" in r.output
    other = sh.helpers.make_bundle(sh.helpers.small_checkpoint(tmp_path / "ck2", seed=3), tmp_path / "b2")
    r = _invoke(["--bundle", other, "--gallery", gallery_path])
    assert r.exit_code == 2 and "another bundle" in r.output
    short_ids = tmp_path / "ids.txt"
    short_ids.write_text("a\nb\n")
    r = _invoke(["--bundle", bundle, "--gallery", gallery_path, "--ids", str(short_ids)])
    assert r.exit_code == 2 and "2 lines but the gallery holds 60" in r.output
    long_captions = tmp_path / "captions.txt"
    long_captions.write_text("a dog\n" + "a red car " * 10 + "\n")
    r = _invoke(["--bundle", bundle, "--gallery", gallery_path, "--captions", str(long_captions)])
    assert r.exit_code == 2 and "caption 1 has" in r.output and "captions.txt" in r.output
    (tmp_path / "g.npz").write_bytes(b"PK\x03\x04 not a gallery")
    r = _invoke(["--bundle", bundle, "--gallery", str(tmp_path / "g.npz")])
    assert r.exit_code == 2 and "kidrr gallery file" in r.output
    r = _invoke(["--bundle", bundle, "--gallery", gallery_path, "--host", "0.0.0.0"], env={"KIDRR_SERVE_TOKEN": ""})
    assert r.exit_code == 2 and "--insecure" in r.output


def test_without_the_serve_extra_the_command_names_it(monkeypatch, built):
    monkeypatch.setitem(sys.modules, "uvicorn", None)     # import uvicorn now raises ImportError
    r = _invoke(["--bundle", built[0], "--gallery", built[1]])
    assert r.exit_code != 0 and "'serve' extra" in r.output and ".[serve]" in r.output and "uvicorn" in r.output


def test_real_uvicorn_client_errors_and_graceful_shutdown(built, rt, gallery):
    from kidrr.serve import Client, ServiceError
    port = sh.free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "kidrr.serve.cli", "--bundle", built[0], "--gallery", built[1],
                             "--ids", built[2], "--captions", built[3], "--port", str(port), "--threads", "1",
                             "--batch-wait-ms", "600", "--shards", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        client = Client(f"http://127.0.0.1:{port}", timeout=20)
        deadline = time.time() + 60
        while not client.ready():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.2)
        hits = client.search_images("a dog runs on the grass", k=5)
        sh.assert_same_hits([(h["position"], h["score"]) for h in hits],
                            sh.exact_reference(rt, gallery, "a dog runs on the grass", 5))
        assert hits[0]["id"] == f"img-{hits[0]['position']:04d}" and client.bundle == rt.bundle_id
        with pytest.raises(ServiceError) as err:
            client.search_images("a dog", k=0)
        assert err.value.status == 422 and err.value.kind == "invalid_input"
        # Graceful shutdown: a request waiting in its 600 ms batch window when SIGTERM arrives still gets
        # its answer, and the process exits cleanly afterwards.
        result = {}
        worker = threading.Thread(target=lambda: result.update(hits=client.search_images("two cats sleep", k=3)))
        worker.start()
        time.sleep(0.25)
        proc.send_signal(signal.SIGTERM)
        worker.join(30)
        sh.assert_same_hits([(h["position"], h["score"]) for h in result["hits"]],
                            sh.exact_reference(rt, gallery, "two cats sleep", 3))
        # uvicorn re-raises SIGTERM once it has shut down cleanly, so the status is "killed by SIGTERM".
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stdout.read()
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_load_test_is_bounded_and_checks_every_answer(built, tmp_path):
    from click.testing import CliRunner

    from kidrr.bench.load import main
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--bundle", built[0], "--items", "100", "--regions", "5", "--queries", "4",
                                  "--configs", "local", "--concurrency", "1,4", "--requests", "12", "--seconds", "5",
                                  "--no-kill", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "load.json").read_text())
    rows = report["sweeps"]["local"]
    assert [row["concurrency"] for row in rows] == [1, 4]
    for row in rows:
        assert row["requests"] <= 12 and row["answered"] == row["requests"] and row["wrong"] == 0
    assert "local" in report["overhead"] and (out / "load.png").stat().st_size > 1000


def test_captions_for_an_uploaded_image_file(pixel_bundle, built, rt, tmp_path):
    """Bundles with image graphs: the raw file in, the same answer as the runtime's own
    encode_image_files + search_image; a features-only bundle says where to send features."""
    from image_files import scene
    bundle = pixel_bundle[0]
    captions = ["a red circle", "a blue square on the grass", "two dogs play in the snow", "a red square"]
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    photo = tmp_path / "photo.png"
    scene(96, 64, 3).save(photo)
    with Retriever(bundle, threads=1) as prt:
        prt.encode_images(sh.helpers.random_features(8, regions=49, feature_size=1280)).save(str(tmp_path / "g.npz"))
        catalog, sources = open_catalog(prt, [str(tmp_path / "g.npz")], 1, None, str(tmp_path / "captions.txt"))
        want = prt.search_image(prt.encode_image_files([str(photo)]), 3, captions=prt.encode_texts(captions))[0]
        with TestClient(create_app(LocalEngine(prt, catalog, sources, Settings()), Settings())) as c:
            r = c.post("/v1/search/captions/image?k=3", content=photo.read_bytes(),
                       headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            assert [x["caption"] for x in r.json()["results"]] == [captions[p] for p, _ in want]
            np.testing.assert_allclose([x["score"] for x in r.json()["results"]], [s for _, s in want],
                                       atol=sh.SCORE_TOL)
            bad = c.post("/v1/search/captions/image?k=3", content=b"\x89PNG\r\n\x1a\n broken",
                         headers={"content-type": "image/png"})
            assert bad.status_code == 422 and bad.json()["error"]["kind"] == "invalid_input"
            assert c.post("/v1/search/captions/image?k=x", content=b"x").status_code == 422
    with make_client(built, rt) as c:   # the features-only test bundle
        r = c.post("/v1/search/captions/image?k=2", content=photo.read_bytes())
        assert r.status_code == 404 and "region features" in r.json()["error"]["message"]
