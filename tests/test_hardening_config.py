"""Every config field's type and range is checked in the config classes, which
the CLI overrides, checkpoints, training states and bundle manifests all go through."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from kidrr.config import MODEL_RULES, TRAIN_RULES, ModelConfig, TrainConfig
from kidrr.errors import CheckpointError, ConfigError


@pytest.mark.parametrize("field, value", [
    ("batch_size", -4), ("batch_size", 0), ("batch_size", 1), ("lr", "abc"), ("lr", float("nan")), ("lr", 0),
    ("lr_decay_epochs", 5), ("lr_decay_epochs", [2.5]), ("tile_images", 0), ("threads", -1), ("epochs", True),
    ("hardest_switch_recall", 1.5), ("mask_same_image", "yes"), ("seed", -1)])
def test_train_fields_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("embed_size", 2.5), ("embed_size", "256"), ("feature_size", 0), ("vocab_size", 3), ("dropout", 1.0),
    ("smooth_lambda", float("inf")), ("rgr_adaptive", 1), ("score_activation", "relu"), ("max_caption_len", 2),
    ("kgid_steps", -1)])
def test_model_fields_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**{field: value})


def test_every_field_has_a_rule():
    from dataclasses import fields
    assert sorted(f.name for f in fields(ModelConfig)) == sorted(MODEL_RULES)
    assert sorted(f.name for f in fields(TrainConfig)) == sorted(TRAIN_RULES)
    ModelConfig(), ModelConfig.small(), TrainConfig()   # the defaults pass their own rules


@pytest.mark.parametrize("option, pair", [
    ("--train-set", "batch_size=-4"), ("--train-set", "batch_size=0"), ("--train-set", "lr=abc"),
    ("--train-set", "lr_decay_epochs=5"), ("--train-set", "tile_images=0"), ("--train-set", "threads=-1"),
    ("--model-set", "embed_size=2.5")])
def test_train_cli_refuses_before_any_work(tmp_path, option, pair):
    from kidrr.train import main
    field = pair.split("=")[0]
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["--out", str(out), option, pair])
    assert r.exit_code == 1 and f"field {field}" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_resume_without_train_state(tmp_path):
    from kidrr.checkpoint import save_checkpoint
    from kidrr.train import main
    from test_hardening_files import _tiny_model
    save_checkpoint(str(tmp_path / "run" / "last"), *_tiny_model())
    r = CliRunner().invoke(main, ["--out", str(tmp_path / "run"), "--resume"])
    assert r.exit_code == 1 and "train_state.json is missing" in r.output, r.output


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update(epoch="3"), "epoch must be"), (lambda s: s.update(history={}), "history must be"),
    (lambda s: s["train_config"].update(lr="fast"), "lr must be"), (lambda s: s.pop("optimizer"), "optimizer"),
    (lambda s: s.clear() or s.update(x=[1]) or None, "epoch")])
def test_train_state_fields_checked(tmp_path, edit, match):
    import torch
    from kidrr.checkpoint import read_train_state, save_checkpoint
    from test_hardening_files import _tiny_model
    model, vocab = _tiny_model()
    opt = torch.optim.Adam(model.parameters())
    folder = str(tmp_path / "last")
    save_checkpoint(folder, model, vocab, opt, {"epoch": 1, "best_rsum": 1.0, "history": [],
                                                "train_config": TrainConfig().to_dict()})
    read_train_state(folder)   # as written: fine
    path = os.path.join(folder, "train_state.json")
    state = json.load(open(path))
    edit(state)
    json.dump(state, open(path, "w"))
    with pytest.raises(CheckpointError, match=match):
        read_train_state(folder)


@pytest.mark.parametrize("content, match", [("[1, 2]", "format"), ('{"format": "kidrr-checkpoint/1", "model": []}',
                                                                    "must be a JSON object"),
                                             ('{"format": "kidrr-checkpoint/1", "model": {"embed_size": 2.5}}',
                                              "embed_size"), ("\xff", "not a valid")])
def test_checkpoint_config_file_checked(tmp_path, content, match):
    from kidrr.checkpoint import load_config
    (tmp_path / "config.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(CheckpointError, match=match):
        load_config(str(tmp_path))
