"""Files: no flag destroys data kidrr did not write, modes follow the umask,
stale staging folders of dead writers are cleaned and live ones kept, export I/O errors are typed."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from kidrr.bench.cli import check_outputs
from kidrr.checkpoint import save_checkpoint
from kidrr.config import ModelConfig
from kidrr.errors import BundleError, CheckpointError, InputError, KidrrError
from kidrr.export.bundle import export_bundle
from kidrr.export.cli import main as export_cli
from kidrr.fileio import clean_stale_staging, staging_dir
from kidrr.model import KIDRR
from kidrr.tokenizer import Vocabulary

QUIET = dict(verify=False, progress=False, log=lambda m: None)


def _tiny_model():
    vocab = Vocabulary.build(["a dog runs on the grass", "a red car"] * 4, min_count=1)
    torch.manual_seed(0)
    return KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=12, embed_size=16, sim_size=8, word_dim=8,
                                   knowledge_nodes=2)).eval(), vocab


def tiny_checkpoint_and_bundle(root) -> tuple:
    """(checkpoint, bundle, root): the tiny model saved under root and exported beside it."""
    model, vocab = _tiny_model()
    ck = str(root / "ck")
    save_checkpoint(ck, model, vocab)
    bundle = str(root / "bundle")
    export_bundle(ck, bundle, **QUIET)
    return ck, bundle, root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model, vocab = _tiny_model()
    folder = str(tmp_path_factory.mktemp("ck") / "ck")
    save_checkpoint(folder, model, vocab)
    return folder


def _project(folder):
    """A user's folder that is not a bundle."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "notes.txt"), "w") as fh:
        fh.write("my work")
    return str(folder)


# ---- --force replaces a bundle and nothing else -------------------------------------------
def test_force_refuses_a_folder_that_is_not_a_bundle(ckpt, tmp_path):
    project = _project(tmp_path / "project")
    with pytest.raises(BundleError, match="not a kidrr bundle"):
        export_bundle(ckpt, project, force=True, **QUIET)
    assert os.listdir(project) == ["notes.txt"]


def test_force_refuses_the_current_folder_from_the_cli(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(_project(tmp_path / "cwd"))
    r = CliRunner().invoke(export_cli, ["onnx", "--checkpoint", ckpt, "--out", ".", "--force", "--no-verify"])
    assert r.exit_code == 2 and "not a kidrr bundle" in r.output
    assert os.listdir(".") == ["notes.txt"]


def test_force_refuses_a_foreign_manifest_json(ckpt, tmp_path):
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text(json.dumps({"name": "my app", "icons": []}))
    with pytest.raises(BundleError, match="not a kidrr bundle"):
        export_bundle(ckpt, str(web), force=True, **QUIET)
    assert json.loads((web / "manifest.json").read_text())["name"] == "my app"


def test_force_keeps_user_files_beside_a_bundle(ckpt, tmp_path):
    out = str(tmp_path / "bundle")
    export_bundle(ckpt, out, **QUIET)
    with open(os.path.join(out, "my_gallery.npz"), "wb") as fh:
        fh.write(b"user data")
    with pytest.raises(BundleError, match="my_gallery.npz"):
        export_bundle(ckpt, out, force=True, **QUIET)
    assert open(os.path.join(out, "my_gallery.npz"), "rb").read() == b"user data"
    os.unlink(os.path.join(out, "my_gallery.npz"))
    os.makedirs(os.path.join(out, "engines", "somekey"))  # kidrr export trt's own output belongs to the bundle
    export_bundle(ckpt, out, force=True, **QUIET)
    assert sorted(os.listdir(out)) == ["export_report.json", "image_encoder.onnx", "manifest.json", "similarity.onnx",
                                       "text_encoder.onnx", "vocab.json"]


def test_checkpoint_never_replaces_a_foreign_folder(tmp_path):
    model, vocab = _tiny_model()
    project = _project(tmp_path / "project")
    with pytest.raises(CheckpointError, match="not a kidrr checkpoint"):
        save_checkpoint(project, model, vocab)
    assert os.listdir(project) == ["notes.txt"]
    ck = str(tmp_path / "ck")
    save_checkpoint(ck, model, vocab)
    save_checkpoint(ck, model, vocab)  # its own checkpoint: replaced
    with open(os.path.join(ck, "README"), "w") as fh:
        fh.write("mine")
    with pytest.raises(CheckpointError, match="README"):
        save_checkpoint(ck, model, vocab)
    assert os.path.exists(os.path.join(ck, "README"))


@pytest.mark.parametrize("existing", ["history.json", "best", "curve.png"])
def test_train_new_run_never_overwrites(tmp_path, existing):
    from kidrr.train import run
    out = tmp_path / "run"
    out.mkdir()
    if existing == "best":
        (out / existing).mkdir()
    else:
        (out / existing).write_text("someone's file")
    with pytest.raises(KidrrError, match="would overwrite"):
        run("synthetic", str(out), "small")


def test_bench_outputs_checked_before_the_run(tmp_path):
    project = _project(tmp_path / "project")
    with pytest.raises(InputError, match="holds no kidrr bench results.json"):
        check_outputs(project, None)
    out = str(tmp_path / "out")
    check_outputs(out, None)  # a new folder is made and accepted
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump({"format": "kidrr-bench/1"}, fh)
    check_outputs(out, None)  # a previous report folder may be rewritten
    with pytest.raises(InputError, match="is a folder"):
        check_outputs(out, str(tmp_path))
    with pytest.raises(InputError, match="not a kidrr-bench/1 report"):
        check_outputs(out, os.path.join(project, "notes.txt"))
    with pytest.raises(InputError, match="cannot write"):
        check_outputs("/proc/kidrr-bench-out", None)  # a read-only file system


def test_bench_cli_json_dir_fails_before_running(tmp_path):
    from kidrr.bench.cli import main
    r = CliRunner().invoke(main, ["--json", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 2 and "is a folder" in r.output
    assert not (tmp_path / "o" / "results.json").exists()


# ---- modes follow the umask -------------------------------------------------------------
def _modes(folder):
    return {os.path.relpath(os.path.join(d, n), folder): stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode)
            for d, dirs, files in os.walk(folder) for n in dirs + files} | {".": stat.S_IMODE(os.stat(folder).st_mode)}


def test_bundle_and_checkpoint_modes_follow_the_umask(tmp_path, monkeypatch):
    from kidrr import fileio
    old = os.umask(0o022)   # kidrr reads the umask once at import: set both for this test
    monkeypatch.setattr(fileio, "_UMASK", 0o022)
    try:
        model, vocab = _tiny_model()
        ck, bundle = str(tmp_path / "ck"), str(tmp_path / "bundle")
        save_checkpoint(ck, model, vocab)
        export_bundle(ck, bundle, **QUIET)
    finally:
        os.umask(old)
    for folder in (ck, bundle):
        modes = _modes(folder)
        assert modes["."] == 0o755, modes
        assert all(mode == 0o644 for name, mode in modes.items() if name != "."), modes


# ---- staging folders of dead writers -------------------------------------------------
def test_stale_staging_of_a_killed_export_is_cleaned_and_a_live_one_kept(ckpt, tmp_path):
    parent = tmp_path / "out"
    parent.mkdir()
    holder = ("import sys, time\nfrom kidrr.fileio import staging_dir\n"
              "with staging_dir(sys.argv[1], '.tmp-bundle-') as d:\n"
              "    open(d + '/image_encoder.onnx', 'wb').write(b'x' * 1000)\n    print(d, flush=True)\n"
              "    time.sleep(60)\n")
    procs = [subprocess.Popen([sys.executable, "-c", holder, str(parent)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        dead_dir, live_dir = (p.stdout.readline().strip() for p in procs)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        unrelated = parent / ".tmp-bundle-not-kidrr.txt"
        unrelated.write_text("a file, not a staging folder")
        export_bundle(ckpt, str(parent / "bundle"), **QUIET)
        left = sorted(os.listdir(parent))
        assert os.path.basename(dead_dir) not in left and os.path.basename(dead_dir) + ".lock" not in left
        assert os.path.isdir(live_dir)  # its writer still runs
        assert unrelated.exists()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert clean_stale_staging(str(parent), ".tmp-bundle-") == [live_dir]


def test_unlocked_staging_removed_only_when_old(tmp_path):
    legacy = tmp_path / ".tmp-bundle-abc123"   # written by a kidrr without lock files
    legacy.mkdir()
    assert clean_stale_staging(str(tmp_path), ".tmp-bundle-") == []
    old = time.time() - 2 * 24 * 3600
    os.utime(legacy, (old, old))
    assert clean_stale_staging(str(tmp_path), ".tmp-bundle-") == [str(legacy)]


def test_staging_removed_on_error_and_lock_released(tmp_path):
    with pytest.raises(RuntimeError):
        with staging_dir(str(tmp_path), ".tmp-x-") as d:
            open(os.path.join(d, "f"), "w").close()
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


# ---- export I/O errors are typed ------------------------------------------------------
def test_export_to_proc_is_a_typed_error(ckpt):
    with pytest.raises(BundleError, match="could not write the bundle|not writable|cannot create"):
        export_bundle(ckpt, "/proc/kidrr-bundle", **QUIET)


def test_export_on_a_full_disk_is_a_typed_error(ckpt, tmp_path, monkeypatch):
    from kidrr.export import bundle as bundle_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(bundle_mod.onnx, "save", full)
    with pytest.raises(BundleError, match="free some space"):
        export_bundle(ckpt, str(tmp_path / "b"), **QUIET)
    assert os.listdir(tmp_path) == []  # staging and lock removed


def test_report_writers_refuse_foreign_files_before_running(tmp_path):
    """gpu_check --out, train_speed/speed --json: checked before the run, like kidrr bench's outputs."""
    from kidrr.bench import gpu_check, train_speed
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(SystemExit) as exc:
        train_speed.main(["--configs", "small", "--json", str(notes)])
    assert exc.value.code == 2 and notes.read_text() == "mine"
    with pytest.raises(SystemExit):
        train_speed.main(["--configs", "small", "--json", str(tmp_path)])
    r = CliRunner().invoke(gpu_check.main, ["--out", str(notes)])
    assert r.exit_code == 2 and "not a kidrr-gpu-check/1 report" in r.output and notes.read_text() == "mine"
