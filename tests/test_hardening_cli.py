"""CLIs and writers facing bad paths and bad input: a message and exit 2, never a traceback, and
--force never replaces what kidrr did not write."""
import errno
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import gallery_helpers as gh
from kidrr.errors import DataError
from kidrr.cli import load_verb
from kidrr.gallery.layout import read_manifest
from kidrr.images.features import check_replaceable_features, extract_features, main as features_cli
from kidrr.runtime import Gallery

gallery_cli = load_verb("gallery")    # with its add / search shortcuts


def clean_failure(result, *words):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for w in words:
        assert w in result.output, result.output


# ---- kidrr-gallery ------------------------------------------------------------------------------
def test_gallery_cli_missing_ids_files_and_empty_remove(tmp_path):
    folder = str(tmp_path / "g")
    g, l, ids = gh.make_gallery(folder, n=10, batches=1)
    np.save(tmp_path / "g.npy", g)
    np.save(tmp_path / "l.npy", l)
    r = CliRunner().invoke(gallery_cli, ["add", folder, "--globals", str(tmp_path / "g.npy"),
                                         "--locals", str(tmp_path / "l.npy"), "--ids", str(tmp_path / "nope.txt")])
    clean_failure(r, "nope.txt does not exist")
    r = CliRunner().invoke(gallery_cli, ["remove", folder, "--ids-file", str(tmp_path / "nope.txt")])
    clean_failure(r, "nope.txt does not exist")
    r = CliRunner().invoke(gallery_cli, ["remove", folder])
    clean_failure(r, "nothing to remove")
    assert read_manifest(folder)[0].generation == 1           # no new generation committed


def test_gallery_writers_on_a_read_only_file_system_say_so(tmp_path, monkeypatch):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=10, batches=1)

    def erofs(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    monkeypatch.setattr("kidrr.gallery.writer._open_lock", erofs)
    for args in (["remove", folder, "photo-00001.jpg"], ["compact", folder]):
        clean_failure(CliRunner().invoke(gallery_cli, args), "Read-only file system", "gallery is unchanged")


def test_create_under_a_file_or_proc_is_a_message(tmp_path):
    from kidrr.gallery import create_gallery
    from kidrr.errors import InputError
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (str(afile / "g"), "/proc/kidrr-gallery"):
        with pytest.raises(InputError, match="cannot make the gallery folder"):
            create_gallery(bad, gh.BUNDLE_ID, 3, 8)


def test_a_lock_file_that_is_a_fifo_does_not_hang_a_writer(tmp_path):
    from kidrr.gallery import GalleryWriter
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=10, batches=1)
    os.unlink(os.path.join(folder, "writer.lock"))
    os.mkfifo(os.path.join(folder, "writer.lock"))
    with pytest.raises(DataError, match="writer.lock"):
        GalleryWriter(folder)


def test_gallery_save_errors_are_typed(tmp_path):
    gal = Gallery(np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.float32), "b" * 64)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (str(afile / "g.npz"), "/proc/kidrr-g.npz", str(tmp_path)):
        with pytest.raises(DataError, match="cannot write gallery"):
            gal.save(bad)


# ---- kidrr features -----------------------------------------------------------------------------
def test_features_force_never_replaces_foreign_files(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    theirs = np.ones((3, 49, 1280), np.float16)
    np.save(out / "train_ims.npy", theirs)                   # the user's own array, no record
    with pytest.raises(DataError, match="replaces only what kidrr features wrote"):
        extract_features(str(tmp_path), str(tmp_path / "caps.tsv"), str(out), force=True, progress=False)
    assert np.array_equal(np.load(out / "train_ims.npy"), theirs)
    # a record of kidrr's, but the files on disk are not the ones it lists
    from kidrr.backbone import features_record
    record = dict(features_record("efficientnet-lite0"), images=3,
                  files={"train_ims.npy": {"bytes": 999}})
    (out / "train_features.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="not the file its record says"):
        check_replaceable_features(str(out), "train")
    record["files"]["train_ims.npy"]["bytes"] = os.path.getsize(out / "train_ims.npy")
    (out / "train_features.json").write_text(json.dumps(record))
    check_replaceable_features(str(out), "train")             # listed with its size: kidrr's own
    (out / "train_ids.txt").write_text("mine\n")              # a file the record does not list
    with pytest.raises(DataError, match="train_ids.txt is not the file"):
        check_replaceable_features(str(out), "train")
    # an older record (no file list): the array must have the recorded shape
    del record["files"]
    os.unlink(out / "train_ids.txt")
    (out / "train_features.json").write_text(json.dumps(dict(record, images=4)))
    with pytest.raises(DataError, match="does not have the shape"):
        check_replaceable_features(str(out), "train")


@pytest.mark.parametrize("args,words", [
    (["--split", "../x"], ["split name"]),
    (["--split", "a/b"], ["split name"]),
    (["--threads", "-2"], []),
])
def test_features_cli_refuses_bad_arguments(tmp_path, args, words):
    r = CliRunner().invoke(features_cli, ["--images", str(tmp_path), "--captions", str(tmp_path / "c.tsv"),
                                          "--out", str(tmp_path / "o"), *args])
    clean_failure(r, *words)
    assert not os.path.exists(tmp_path / "x")


def test_features_out_that_is_a_file_is_a_message(tmp_path):
    (tmp_path / "o").write_text("x")
    r = CliRunner().invoke(features_cli, ["--images", str(tmp_path), "--captions", str(tmp_path / "c.tsv"),
                                          "--out", str(tmp_path / "o")])
    clean_failure(r, "is a file")


# ---- kidrr bench scale ----------------------------------------------------------------------------
def test_scale_refuses_to_delete_or_overwrite_what_it_did_not_write(tmp_path):
    from kidrr.bench import scale
    from kidrr.errors import InputError
    work = tmp_path / "work"
    (work / "g10000-ivf").mkdir(parents=True)
    (work / "g10000-ivf" / "thesis.txt").write_text("years of work")
    with pytest.raises(InputError, match="not a kidrr gallery.*nothing was deleted"):
        scale.run_scale(10_000, [100], 16, 1, str(work), str(tmp_path / "out"), None, ["ivf"], 0, keep=False,
                        progress=False)
    assert (work / "g10000-ivf" / "thesis.txt").read_text() == "years of work"
    # a previous run's gallery with a user's file inside a segment is not replaceable either
    os.unlink(work / "g10000-ivf" / "thesis.txt")
    os.rmdir(work / "g10000-ivf")
    gh.make_gallery(work / "g10000-ivf", n=10, batches=1)
    scale.check_replaceable_gallery(str(work / "g10000-ivf"))          # ours: may be replaced
    (work / "g10000-ivf" / "seg-000000" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="seg-000000/notes.txt"):
        scale.check_replaceable_gallery(str(work / "g10000-ivf"))
    # --json: only an earlier scale report is overwritten; --out's reports likewise
    (tmp_path / "r.json").write_text(json.dumps({"format": "someone-else"}))
    with pytest.raises(InputError, match="not a kidrr-bench-scale/1 report"):
        scale.run_scale(10_000, [100], 16, 1, None, str(tmp_path / "out"), str(tmp_path / "r.json"), ["ivf"], 0,
                        keep=False, progress=False)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "scale.md").write_text("my notes")
    with pytest.raises(InputError, match="--out .* not overwritten"):
        scale.check_scale_outputs(None, str(tmp_path / "out"), None, [])
    (tmp_path / "out" / "scale.json").write_text(json.dumps({"format": scale.FORMAT}))
    scale.check_scale_outputs(None, str(tmp_path / "out"), None, [])    # an earlier run's: fine


def test_scale_serve_leaves_nothing_in_work(tmp_path):
    from kidrr.bench import scale
    res = scale.serve({"bundle": str(tmp_path / "none"), "gallery": str(tmp_path / "none"), "captions": ["a"],
                       "shortlists": [10], "threads": 1, "exhaustive": True, "batch": 1}, str(tmp_path))
    assert res["status"] == "failed"
    assert os.listdir(tmp_path) == []


# ---- FIFOs where kidrr reads a small file: refused, never waited on ------------------------------
def test_fifos_in_place_of_small_files_are_refused_without_blocking(tmp_path):
    import signal
    from kidrr.checkpoint import read_json
    from kidrr.errors import BundleError, CheckpointError, InputError
    from kidrr.fileio import check_report_path
    from kidrr.images.features import read_features_record
    from kidrr.runtime.bundle import load_bundle
    from kidrr.tokenizer import Vocabulary

    def boom(*_):
        raise TimeoutError("blocked on a FIFO")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(10)
    try:
        (tmp_path / "bundle").mkdir()
        os.mkfifo(tmp_path / "bundle" / "manifest.json")
        with pytest.raises(BundleError, match="a FIFO"):
            load_bundle(str(tmp_path / "bundle"))
        os.mkfifo(tmp_path / "report.json")
        with pytest.raises(InputError, match="not a .* report"):
            check_report_path(str(tmp_path / "report.json"), "--json", "kidrr-bench/1")
        os.mkfifo(tmp_path / "vocab.json")
        with pytest.raises(CheckpointError, match="a FIFO"):
            Vocabulary.load(str(tmp_path / "vocab.json"))
        with pytest.raises(CheckpointError, match="a FIFO"):
            read_json(str(tmp_path / "vocab.json"), "training state")
        os.mkfifo(tmp_path / "train_features.json")
        with pytest.raises(DataError, match="a FIFO"):
            read_features_record(str(tmp_path), "train")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_scale_checkpoint_needs_its_data(tmp_path):
    from click.testing import CliRunner
    from kidrr.bench.cli import main
    res = CliRunner().invoke(main, ["scale", "--checkpoint", "kidrr/shipped_photos", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--checkpoint needs --data" in res.output
    assert not (tmp_path / "o").exists()
