"""Protocols exact or refused, kidrr eval options, and the small things (-h, the torch
warning on read-only data, a bar during training's dev evaluation, export messages above the bar)."""
import os

import numpy as np
import pytest
from click.testing import CliRunner

from kidrr import metrics
from kidrr.errors import InputError


@pytest.mark.parametrize("n, protocol, expected", [
    (10, "5fold", [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]), (3000, "1k", [(0, 1000), (1000, 2000), (2000, 3000)]),
    (5000, "5k", [(0, 5000)]), (7, "all", [(0, 7)])])
def test_protocols_cover_every_image(n, protocol, expected):
    assert metrics.folds(n, protocol) == expected


@pytest.mark.parametrize("n, protocol, match", [
    (7, "5fold", "multiple of 5"), (12, "5fold", "multiple of 5"), (1500, "1k", "multiple of 1,000"),
    (999, "1k", "multiple of 1,000"), (3, "5fold", "multiple of 5"), (1000, "5k", "exactly 5,000"), (0, "all", "at least one")])
def test_protocols_that_would_drop_images_are_refused(n, protocol, match):
    with pytest.raises(InputError, match=match):
        metrics.folds(n, protocol)


def _data(folder, n=10, split="test", r=5, f=24, seed=0):
    import test_runtime_helpers as helpers
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{split}_ims.npy"), rng.normal(size=(n, r, f)).astype(np.float32))
    caps = [" ".join(rng.choice(helpers.CAPTIONS[i % 6].split(), 3)) for i in range(5 * n)]
    with open(os.path.join(folder, f"{split}_caps.txt"), "w") as fh:
        fh.write("\n".join(caps) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    import test_runtime_helpers as helpers
    return helpers.small_checkpoint(tmp_path_factory.mktemp("ev") / "ck")


@pytest.mark.parametrize("args, match", [
    (["--split", "foo"], "unknown synthetic split 'foo'"), (["--threads", "-1"], "--threads"),
    (["--protocol", "1k"], "multiple of 1,000")])
def test_eval_cli_refuses_cleanly(ck, tmp_path, args, match):
    from kidrr.evaluate import main
    r = CliRunner().invoke(main, ["--checkpoint", ck, "--data", _data(tmp_path / "d"), *args])
    if args[0] == "--split":
        r = CliRunner().invoke(main, ["--checkpoint", ck, *args])   # the synthetic set has no split foo
    assert r.exit_code == (2 if args[0] == "--threads" else 1), r.output   # click usage error / KidrrError
    assert match in r.output and isinstance(r.exception, SystemExit), r.output


def test_eval_reports_exactly_what_it_used(ck, tmp_path):
    import json
    from kidrr.evaluate import main
    r = CliRunner().invoke(main, ["--checkpoint", ck, "--data", _data(tmp_path / "d"), "--protocol", "5fold",
                                  "--json"])
    out = json.loads(r.output)
    assert (out["images"], out["captions"], out["folds"], out["fold_images"]) == (10, 50, 5, [2, 2, 2, 2, 2])


def test_no_not_writable_warning_on_memory_mapped_data(ck, tmp_path, monkeypatch):
    """torch warns once per process (so a warnings check passes if anything warned earlier): check the
    cause instead, every array handed to torch.from_numpy by evaluation is writable memory."""
    from kidrr import evaluate
    from kidrr.checkpoint import load_checkpoint
    from kidrr.data import load_split
    split = load_split(_data(tmp_path / "d"), "test")
    assert not split.images.flags.writeable
    handed = []
    real = evaluate.torch.from_numpy

    def spy(arr):
        handed.append(arr.flags.writeable)
        return real(arr)
    monkeypatch.setattr(evaluate.torch, "from_numpy", spy)
    model, vocab, _ = load_checkpoint(ck)
    evaluate.evaluate_split(model, vocab, split, progress=False)
    assert handed and all(handed)


def test_training_dev_evaluation_shows_progress(tmp_path, monkeypatch):
    from kidrr import train
    data = str(tmp_path / "d")
    _data(data, n=8, split="train")
    _data(data, n=4, split="dev", seed=1)
    seen = []
    real = train.evaluate_split

    def spy(*a, **kw):
        seen.append(kw.get("progress"))
        return real(*a, **kw)
    monkeypatch.setattr(train, "evaluate_split", spy)
    train.run(data, str(tmp_path / "run"), "small", model_set=["embed_size=16", "sim_size=8", "word_dim=8"],
              train_set=["batch_size=4"], epochs=1, max_batches=1)
    assert seen == [True]


def test_export_messages_go_above_the_bar(ck, tmp_path):
    from kidrr.export.cli import main
    r = CliRunner().invoke(main, ["onnx", "--checkpoint", ck, "--out", str(tmp_path / "b"), "--no-verify"])
    assert r.exit_code == 0, r.output
    wrote = [line for line in r.output.split("\n") if "wrote" in line]
    # What a terminal shows is the text after the last carriage return: the message alone, not bar + message.
    assert len(wrote) == 3 and all(line.split("\r")[-1].startswith("  wrote ") for line in wrote), wrote
