"""Checkpoints pair with bundles and caches by weights + config + vocabulary;
a bundle's identity depends only on what changes its numbers."""
import json
import os
import shutil

import pytest

from kidrr.bench import sources
from kidrr.errors import BundleError
from kidrr.identity import checkpoint_id
from kidrr.runtime.bundle import load_bundle
from test_hardening_files import tiny_checkpoint_and_bundle


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_checkpoint_and_bundle(tmp_path_factory.mktemp("pair"))


def _edited_copy(ck, dest, file, edit):
    shutil.copytree(ck, dest)
    path = os.path.join(dest, file)
    with open(path) as fh:
        data = json.load(fh)
    edit(data)
    with open(path, "w") as fh:
        json.dump(data, fh)
    return str(dest)


def _lambda_20(cfg):
    cfg["model"]["smooth_lambda"] = 20.0


def _swap_words(vocab):
    vocab["words"][4], vocab["words"][5] = vocab["words"][5], vocab["words"][4]


@pytest.mark.parametrize("file, edit", [("config.json", _lambda_20), ("vocab.json", _swap_words)])
def test_bench_cache_key_follows_config_and_vocab(pair, tmp_path, file, edit):
    ck = pair[0]
    edited = _edited_copy(ck, tmp_path / "edited", file, edit)
    _, before = sources.resolve_checkpoint(ck)
    _, after = sources.resolve_checkpoint(edited)
    assert before == checkpoint_id(ck) and after == checkpoint_id(edited) and before != after
    assert sources.cached_bundle_dir(before, "fp32") != sources.cached_bundle_dir(after, "fp32")
    assert not sources._is_current(pair[1], after, "fp32")   # the bundle of the unedited checkpoint
    with pytest.raises(BundleError, match="another checkpoint"):
        sources.check_bundle_source(pair[1], after, edited)


def test_config_contradicting_weights_is_never_served_from_cache(pair, tmp_path, monkeypatch):
    """A config edited to a size its weights do not have gets its own key, so the export (which
    loads and checks the checkpoint) runs and refuses it, instead of the old bundle being reused."""
    import contextlib
    import io
    import subprocess
    from kidrr.bench import export_job
    monkeypatch.setenv("KIDRR_CACHE", str(tmp_path / "cache"))

    def in_process(cmd, **kw):   # the export child, run here: a fresh interpreter costs ~20 s on 2 busy cores
        assert cmd[1:3] == ["-m", "kidrr.bench.export_job"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = export_job.main(cmd[3:])
        return subprocess.CompletedProcess(cmd, code, "", err.getvalue())
    monkeypatch.setattr(sources.subprocess, "run", in_process)
    ck = pair[0]
    _, good = sources.resolve_checkpoint(ck)
    cached = sources.cached_bundle_dir(good, "fp32")
    shutil.copytree(pair[1], cached)
    assert sources.export_cached(ck, good, "fp32") == cached      # the matching checkpoint reuses it
    bad = _edited_copy(ck, tmp_path / "bad", "config.json", lambda c: c["model"].update(embed_size=24))
    _, bad_id = sources.resolve_checkpoint(bad)
    with pytest.raises(BundleError, match="disagree"):
        sources.export_cached(bad, bad_id, "fp32")


def test_torch_backend_refuses_a_checkpoint_whose_config_changed(pair, tmp_path):
    from kidrr.runtime.torch_runner import TorchRunner
    ck, bundle, _ = pair
    b = load_bundle(bundle)
    TorchRunner(b, checkpoint=ck)   # its own checkpoint: accepted
    edited = _edited_copy(ck, tmp_path / "edited", "config.json", _lambda_20)
    with pytest.raises(BundleError, match="is not the one bundle"):
        TorchRunner(b, checkpoint=edited)
