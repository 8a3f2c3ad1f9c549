"""kidrr bench: end to end on a tiny random model and tiny data, recall checked independently,
parity with torch, skipped backends, bad input; GPU check: no-GPU failure, arguments, CPU code path."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from kidrr import metrics
from kidrr.data import load_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "a dog runs on the grass red car two cats sleep".split()
N_IMAGES, REGIONS, FEATURES = 20, 5, 24
ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def _save_ckpt(folder, seed):
    import torch
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.model import KIDRR
    from kidrr.tokenizer import Vocabulary
    torch.manual_seed(seed)
    vocab = Vocabulary.build([" ".join(WORDS)] * 4)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=FEATURES, embed_size=16, sim_size=8,
                                    word_dim=8, knowledge_nodes=4)).eval()
    save_checkpoint(str(folder), model, vocab)
    return str(folder)


def _write_data(folder, n=N_IMAGES, features=FEATURES, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "test_ims.npy"), rng.normal(size=(n, REGIONS, features)).astype(np.float32))
    caps = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))) for _ in range(5 * n)]
    with open(os.path.join(folder, "test_caps.txt"), "w") as fh:
        fh.write("\n".join(caps) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    return {"ckpt": _save_ckpt(base / "ckpt", 0), "other_ckpt": _save_ckpt(base / "other", 1),
            "data": _write_data(str(base / "data")), "cache": str(base / "cache"), "base": base}


@pytest.fixture(scope="module")
def run(setup):
    """One full bench in a subprocess; the parent process must never import torch."""
    out = setup["base"] / "out"
    args = ["--checkpoint", setup["ckpt"], "--data", setup["data"], "--backends", "torch,ort,ort-cuda,trt",
            "--precisions", "fp32,int8", "--batch-sizes", "1,4", "--duration", "0.01", "--shortlists", "2,3",
            "--parity-images", "6", "--protocol", "5fold", "--threads", "1", "--out", str(out),
            "--json", str(setup["base"] / "copy.json"), "--quiet"]
    code = ("import sys\nfrom kidrr.bench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code or 0\nprint('TORCH_IN_PARENT', 'torch' in sys.modules)\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code] + args, capture_output=True, text=True, timeout=300,
                          env=dict(ENV, KIDRR_CACHE=setup["cache"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "results.json") as fh:
        results = json.load(fh)
    return {"proc": proc, "out": out, "results": results}


def test_parent_never_imports_torch(run):
    assert "TORCH_IN_PARENT False" in run["proc"].stdout


def test_rows_skips_and_files(run, setup):
    res = run["results"]
    assert {k: v["status"] for k, v in res["results"].items()} == {
        "torch fp32": "ok", "ort fp32": "ok", "ort int8": "ok"}
    skipped = dict(res["skipped"])
    assert "tensorrt" in skipped["trt fp32"] and "DynamicQuantizeLinear" in skipped["trt int8"]
    assert "CUDAExecutionProvider" in skipped["ort-cuda fp32"]
    for name in ("results.json", "report.md", "latency.png", "two_stage.png"):
        assert os.path.getsize(run["out"] / name) > 0
    for name in ("latency.png", "two_stage.png"):
        with open(run["out"] / name, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(setup["base"] / "copy.json") as fh:
        assert json.load(fh) == res
    report = (run["out"] / "report.md").read_text()
    for heading in ("Latency", "Full retrieval", "Parity with the torch reference", "Two-stage", "Not run"):
        assert heading in report
    terminal = run["proc"].stdout
    assert "ort int8" in terminal and "skipped" in terminal and "wall time" in terminal


def test_latency_percentiles(run):
    for label, r in run["results"]["results"].items():
        for op in ("image_encode", "caption_encode", "score"):
            assert sorted(r["latency"][op]) == ["1", "4"], (label, op)
            for s in r["latency"][op].values():
                assert s["calls"] >= 5 and 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]


def test_recall_matches_an_independent_evaluation(run, setup):
    """Score each fold here with the bench's own bundle and compare R@K with the bench's numbers."""
    from kidrr.runtime import open_bundle
    res = run["results"]
    split = load_split(setup["data"], "test")
    for precision in ("fp32", "int8"):
        rt = open_bundle(res["setup"]["bundles"][precision], backend="ort", threads=1, on_long="truncate")
        per_fold = []
        for start, stop in metrics.folds(len(split.images), "5fold"):
            sub = split.subset(stop - start, start)
            per_fold.append(metrics.recall(rt.score(rt.encode_images(sub.images), sub.captions), sub.caption_image))
        mine = metrics.average(per_fold)
        full = res["results"][f"ort {precision}"]["full"]
        assert full["pairs"] == 5 * (N_IMAGES // 5) * (N_IMAGES // 5) * 5
        for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"):
            assert full["recall"][key] == pytest.approx(mine[key]), (precision, key)


def test_parity_with_torch(run):
    res = run["results"]["results"]
    fp32 = res["ort fp32"]["parity"]
    assert fp32["block"] == "6x30"
    assert fp32["max_abs_delta_score"] < 1e-5          # fp32 graphs vs the PyTorch model
    assert res["ort int8"]["parity"]["max_abs_delta_score"] < 0.05
    assert res["ort int8"]["parity"]["max_abs_delta_score"] > fp32["max_abs_delta_score"]
    assert "parity" not in res["torch fp32"]


def test_two_stage_sweep(run):
    rows = run["results"]["results"]["ort fp32"]["two_stage"]
    assert [r["shortlist"] for r in rows] == [2, 3]
    for r in rows:
        assert r["total_s"] > 0 and 0 <= r["recall"]["rsum"] <= 600
        assert r["delta_rsum"] == pytest.approx(r["recall"]["rsum"]
                                                - run["results"]["results"]["ort fp32"]["full"]["recall"]["rsum"])


def test_recall_from_hits_matches_metrics():
    from kidrr.bench.retrieval import _recall_from_hits
    from kidrr.runtime.search import top_k
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(12, 60))
    caption_image = np.arange(60) // 5
    t2i = [top_k(scores[:, j], 10) for j in range(60)]
    i2t = [top_k(scores[i], 10) for i in range(12)]
    got, want = _recall_from_hits(t2i, i2t, caption_image), metrics.recall(scores, caption_image)
    for key in got:
        assert got[key] == pytest.approx(want[key]), key


def test_summarise_percentiles_and_throughput():
    from kidrr.bench.timing import summarise
    s = summarise([i / 1000 for i in range(1, 101)], items_per_call=4)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["throughput_per_s"] == pytest.approx(4 * 100 / 5.05)


def _cli(args, env_cache):
    from kidrr.bench.cli import main
    return CliRunner().invoke(main, args + ["--quiet"], env={"KIDRR_CACHE": env_cache})


def test_unknown_backend_and_bad_numbers(setup):
    r = _cli(["--backends", "ort,tensorflow"], setup["cache"])
    assert r.exit_code == 2 and "unknown backend(s) ['tensorflow']" in r.output
    r = _cli(["--precisions", "fp8"], setup["cache"])
    assert r.exit_code == 2 and "unknown precision(s) ['fp8']" in r.output
    r = _cli(["--checkpoint", setup["ckpt"], "--batch-sizes", "1,x"], setup["cache"])
    assert r.exit_code == 2 and "--batch-sizes must be comma-separated integers" in r.output


def test_data_folder_in_the_wrong_layout(setup, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.save(wrong / "test_ims.npy", np.zeros((2, 3, FEATURES), np.float32))   # no test_caps.txt
    r = _cli(["--checkpoint", setup["ckpt"], "--data", str(wrong), "--backends", "ort", "--precisions", "fp32"],
             setup["cache"])
    assert r.exit_code == 2 and "test_caps.txt is missing" in r.output and "published precomputed layout" in r.output
    other = _write_data(str(tmp_path / "f8"), n=5, features=8)
    r = _cli(["--checkpoint", setup["ckpt"], "--data", other, "--backends", "ort", "--precisions", "fp32"],
             setup["cache"])
    assert r.exit_code == 2 and "8-d region features but the model reads 24-d" in r.output


def test_bundle_from_another_checkpoint_is_refused(setup, tmp_path):
    from kidrr.export.bundle import export_bundle
    bundle = str(tmp_path / "bundle")
    export_bundle(setup["other_ckpt"], bundle, verify=False, progress=False, log=lambda m: None)
    r = _cli(["--checkpoint", setup["ckpt"], "--bundle", bundle, "--data", setup["data"]], setup["cache"])
    assert r.exit_code == 2 and "exported from another checkpoint" in r.output and "source_checkpoint_sha256" in r.output


def test_missing_shipped_checkpoint_is_a_clear_error(setup, tmp_path, monkeypatch):
    from kidrr.bench import sources
    monkeypatch.setattr(sources, "shipped_checkpoint_dir", lambda: str(tmp_path / "no-shipped"))
    r = _cli([], setup["cache"])
    assert r.exit_code == 2 and "the shipped checkpoint is missing" in r.output and "--checkpoint" in r.output
    assert not os.path.exists(tmp_path / "no-shipped")   # nothing trained or written in its place


def test_cached_bundle_is_reused(run, setup, monkeypatch):
    from kidrr.bench import sources
    from kidrr.identity import checkpoint_id
    monkeypatch.setenv("KIDRR_CACHE", setup["cache"])
    sha = checkpoint_id(setup["ckpt"])
    folder = sources.cached_bundle_dir(sha, "fp32")
    assert run["results"]["setup"]["bundles"]["fp32"] == folder
    before = os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns
    assert sources.export_cached(setup["ckpt"], sha, "fp32") == folder   # no child export: reused
    assert os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns == before


def test_cache_key_follows_the_exporter_source(tmp_path, monkeypatch):
    # A bundle cached before a graph change must not be served after it: the key hashes the
    # exporter's source files, so editing one of them moves the cache folder.
    import shutil
    from importlib import resources
    from kidrr.bench import sources
    copy = tmp_path / "export"
    shutil.copytree(str(resources.files("kidrr.export")), copy)
    monkeypatch.setattr(sources.resources, "files", lambda name: copy)
    before = sources.cached_bundle_dir("a" * 64, "fp32")
    assert sources.cached_bundle_dir("a" * 64, "fp32") == before
    with open(copy / "graphs.py", "a") as fh:
        fh.write("\n# changed\n")
    assert sources.cached_bundle_dir("a" * 64, "fp32") != before


# ---- bench/gpu_check.py (no GPU here: its failure path, its arguments, and its code on the CPU) ----
GPU_CHECK = [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py")]


def _gpu_present():
    import torch
    return torch.cuda.is_available()


@pytest.mark.skipif(_gpu_present(), reason="a GPU is present: the no-GPU path cannot be shown")
def test_gpu_check_fails_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(GPU_CHECK + ["--out", str(out)], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no NVIDIA GPU usable") and "cuda" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("args, message", [(["--tile", "8"], "--tile two"), (["--images", "0"], "--images"),
                                           (["--dims", "huge"], "--dims"), (["--budget", "1"], "--budget")])
def test_gpu_check_rejects_bad_arguments(args, message):
    proc = subprocess.run(GPU_CHECK + args, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr


def test_gpu_check_code_paths_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(GPU_CHECK + ["--out", str(out), "--allow-cpu", "--dims", "small", "--images", "12",
                                       "--captions", "60", "--shortlists", "4", "--tile", "8,16", "--budget", "100"],
                          capture_output=True, text=True, env=ENV, timeout=200)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    paths = report["paths"]
    assert report["device"]["type"] == "cpu" and "not a GPU measurement" in report["device"]["note"]
    for name in ("torch-cuda fp32", "torch-cuda fp16", "torch-cuda bf16", "ort-cpu (code-path test)"):
        assert paths[name]["status"] == "ok" and paths[name]["all_finite"], name
    assert paths["torch-cuda fp32"]["pairs"] == 12 * 60
    assert paths["ort-cpu (code-path test)"]["parity_vs_torch_fp32"]["max_abs_delta"] < 1e-5
    assert paths["torch-cuda bf16"]["parity_vs_fp32"]["max_abs_delta"] < 0.1
    assert paths["ort-cuda"]["status"] == "skipped" and "onnxruntime-gpu" in paths["ort-cuda"]["reason"]
    assert report["two_stage"][0]["complete"] and report["two_stage"][0]["t2i_queries"] == 60


def test_bundle_without_its_checkpoint_runs_what_it_can(setup, tmp_path, monkeypatch):
    """--bundle alone (no --checkpoint, no shipped model): that bundle runs; the torch reference and the
    precisions that would need an export are listed as not run, with the reason."""
    from kidrr.bench import sources
    from kidrr.export.bundle import export_bundle
    monkeypatch.setattr(sources, "shipped_checkpoint_dir", lambda: str(tmp_path / "no-shipped"))
    bundle = str(tmp_path / "bundle")
    export_bundle(setup["ckpt"], bundle, verify=False, progress=False, log=lambda m: None)
    out = tmp_path / "out"
    r = _cli(["--bundle", bundle, "--data", setup["data"], "--backends", "torch,ort", "--precisions", "fp32,int8",
              "--batch-sizes", "2", "--duration", "0.01", "--shortlists", "none", "--protocol", "all",
              "--threads", "1", "--out", str(out)], setup["cache"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert list(res["results"]) == ["ort fp32"] and res["results"]["ort fp32"]["status"] == "ok"
    assert res["results"]["ort fp32"]["full"]["pairs"] == N_IMAGES * 5 * N_IMAGES
    skipped = dict(res["skipped"])
    assert "no checkpoint to export it from" in skipped["ort int8"]
    assert "--checkpoint" in skipped["torch fp32"]
    assert "parity" in res["results"]["ort fp32"] and res["results"]["ort fp32"]["parity"] is None


# ---- bench/train_speed.py (training throughput per config) ----
def test_train_speed_reports_pairs_per_second(tmp_path, monkeypatch, capsys):
    from kidrr.bench import train_speed
    from kidrr.config import ModelConfig
    tiny = dict(model=lambda **kw: ModelConfig.small(embed_size=16, sim_size=8, word_dim=8, **kw),
                batch=6, R=3, F=10, L=5)
    monkeypatch.setattr(train_speed, "CONFIGS", {"tiny": tiny})
    out = tmp_path / "speed.json"
    train_speed.main(["--configs", "tiny", "--steps", "2", "--threads", "1", "--json", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert (r["config"], r["batch"], r["regions"], r["feature_size"], r["steps"]) == ("tiny", 6, 3, 10, 2)
    assert r["pairs_per_s"] == pytest.approx(36 / r["median_step_s"])
    assert "tiny" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        train_speed.main(["--configs", "huge"])
    assert exc.value.code == 2
