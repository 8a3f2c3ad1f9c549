"""Checkpoints: a folder of model.safetensors + config.json + vocab.json (no pickles anywhere).

Training adds train_state.json and optimizer.safetensors for --resume. A checkpoint folder is
written in a staging folder and moved into place, so an interrupt never leaves a half checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from importlib import resources

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig, dump_json
from .errors import CheckpointError, ConfigError
from .fileio import replace_dir_atomic, sha256_file
from .model import KIDRR
from .tokenizer import Vocabulary

WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"
TRAIN_STATE, OPTIMIZER = "train_state.json", "optimizer.safetensors"
CHECKPOINT_FORMAT = "kidrr-checkpoint/1"


def shipped_checkpoint() -> str:
    """Folder of the small model shipped inside the package (trained on the synthetic set)."""
    return str(resources.files("kidrr") / "shipped")


def shipped_pixel_checkpoint() -> str:
    """Folder of the second shipped model: trained on the pixel synthetic set's EfficientNet-Lite0
    features (kidrr-render + kidrr-features); its config names the backbone, so its bundle takes images."""
    return str(resources.files("kidrr") / "shipped_pixels")


def save_checkpoint(folder: str, model: KIDRR, vocab: Vocabulary, optimizer=None, train_state=None) -> None:
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-ckpt-")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(staging, WEIGHTS), metadata={"format": CHECKPOINT_FORMAT})
    with open(os.path.join(staging, CONFIG), "w") as fh:
        fh.write(dump_json({"format": CHECKPOINT_FORMAT, "model": model.cfg.to_dict()}))
    with open(os.path.join(staging, VOCAB), "w", encoding="utf-8") as fh:
        json.dump(vocab.to_json(), fh, ensure_ascii=False)
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer)
        save_file(tensors, os.path.join(staging, OPTIMIZER))
        train_state = dict(train_state or {}, optimizer=meta)
    if train_state is not None:
        with open(os.path.join(staging, TRAIN_STATE), "w") as fh:
            fh.write(dump_json(train_state))
    replace_dir_atomic(staging, folder)


def load_config(folder: str) -> ModelConfig:
    path = os.path.join(folder, CONFIG)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing; a checkpoint folder needs {WEIGHTS}, {CONFIG} and {VOCAB}")
    try:
        with open(path) as fh:
            data = json.load(fh)
        if data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {data.get('format')!r} is not {CHECKPOINT_FORMAT}")
        return ModelConfig.from_dict(data["model"])
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path} is not a valid kidrr config ({exc})") from exc


def load_checkpoint(folder: str | None = None, device: str = "cpu"):
    """(model in eval mode, vocabulary, checkpoint sha256). None loads the shipped model."""
    folder = folder or shipped_checkpoint()
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    cfg = load_config(folder)
    vocab = Vocabulary.load(os.path.join(folder, VOCAB))
    if len(vocab) != cfg.vocab_size:
        raise CheckpointError(f"{folder}: vocab.json has {len(vocab)} words but config.json says "
                              f"vocab_size {cfg.vocab_size}; the files come from different runs")
    weights_path = os.path.join(folder, WEIGHTS)
    if not os.path.exists(weights_path):
        raise CheckpointError(f"{weights_path} is missing")
    try:
        state = load_file(weights_path, device=device)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({exc})") from exc
    model = KIDRR(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise CheckpointError(f"{folder}: config.json and {WEIGHTS} disagree ({detail}); "
                              f"use the config the weights were trained with")
    model.load_state_dict(state)
    return model.to(device).eval(), vocab, sha256_file(weights_path)


def load_train_state(folder: str, optimizer) -> dict:
    """Training position saved with a checkpoint; restores the optimizer in place."""
    path = os.path.join(folder, TRAIN_STATE)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing: {folder} is not a resumable training checkpoint")
    with open(path) as fh:
        state = json.load(fh)
    _restore_optimizer(optimizer, load_file(os.path.join(folder, OPTIMIZER)), state.pop("optimizer"))
    return state


def _flatten_optimizer(optimizer):
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer, tensors, meta) -> None:
    state: dict = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
