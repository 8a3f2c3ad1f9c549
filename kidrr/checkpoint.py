"""Checkpoints: a folder of model.safetensors + config.json + vocab.json (no pickles anywhere).

Training adds train_state.json and optimizer.safetensors for --resume. A checkpoint folder is
written in a staging folder and moved into place, so an interrupt never leaves a half checkpoint.
"""
from __future__ import annotations

import json
import os
from importlib import resources

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig, TrainConfig, dump_json
from .errors import CheckpointError, ConfigError, KidrrError
from .fileio import NotRegularFile, follow_umask, foreign_entries, open_regular, replace_dir_atomic, staging_dir
from .identity import checkpoint_id
from .model import KIDRR
from .tokenizer import Vocabulary

WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"
TRAIN_STATE, OPTIMIZER = "train_state.json", "optimizer.safetensors"
CHECKPOINT_FORMAT = "kidrr-checkpoint/1"
CHECKPOINT_FILES = (WEIGHTS, CONFIG, VOCAB, TRAIN_STATE, OPTIMIZER)
STAGING_PREFIX = ".tmp-ckpt-"


def shipped_checkpoint() -> str:
    """Folder of the small model shipped inside the package (trained on the synthetic set)."""
    return str(resources.files("kidrr") / "shipped")


def shipped_pixel_checkpoint() -> str:
    """Folder of the second shipped model: trained on the pixel synthetic set's EfficientNet-Lite0
    features (kidrr render + kidrr features); its config names the backbone, so its bundle takes images."""
    return str(resources.files("kidrr") / "shipped_pixels")


def shipped_photo_checkpoint() -> str:
    """Folder of the real-photo model: EfficientNet-Lite0 + all-MiniLM-L6-v2 (both from their packages)
    + KIDRR heads trained on Flickr8k photos (research use; README, docs/shipped_photos.md)."""
    return str(resources.files("kidrr") / "shipped_photos")


def config_json(cfg: ModelConfig) -> str:
    """A checkpoint's config.json text."""
    return dump_json({"format": CHECKPOINT_FORMAT, "model": cfg.to_dict()})


def check_replaceable_checkpoint(folder: str) -> None:
    """CheckpointError unless folder is empty or a kidrr checkpoint holding only a checkpoint's files."""
    entries = os.listdir(folder)
    if not entries:
        return
    try:
        with open_regular(os.path.join(folder, CONFIG), follow_symlinks=True) as fh:
            is_ours = json.loads(fh.read(MAX_JSON_BYTES + 1).decode("utf-8")).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError, KidrrError):
        is_ours = False
    if not is_ours:
        raise CheckpointError(f"{folder} exists and is not a kidrr checkpoint; it was not replaced. Move it "
                              f"away or choose another output folder")
    foreign = foreign_entries(folder, CHECKPOINT_FILES)
    if foreign:
        raise CheckpointError(f"checkpoint folder {folder} also holds {foreign[:5]}, which kidrr did not write; "
                              f"writing the checkpoint would delete them. Move them out first")


def save_checkpoint(folder: str, model: KIDRR, vocab: Vocabulary, optimizer=None, train_state=None) -> None:
    """Write folder atomically; an existing folder is replaced only if it is a kidrr checkpoint."""
    folder = os.path.abspath(folder)
    if os.path.isdir(folder):
        check_replaceable_checkpoint(folder)  # before the work, not only at the move
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    with staging_dir(parent, STAGING_PREFIX) as staging:
        frozen = pretrained_keys(model)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in frozen}
        save_file(state, os.path.join(staging, WEIGHTS), metadata={"format": CHECKPOINT_FORMAT})
        follow_umask(os.path.join(staging, WEIGHTS))
        with open(os.path.join(staging, CONFIG), "w") as fh:
            fh.write(config_json(model.cfg))
        with open(os.path.join(staging, VOCAB), "w", encoding="utf-8") as fh:
            json.dump(vocab.to_json(), fh, ensure_ascii=False)
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, os.path.join(staging, OPTIMIZER))
            follow_umask(os.path.join(staging, OPTIMIZER))
            train_state = dict(train_state or {}, optimizer=meta)
        if train_state is not None:
            with open(os.path.join(staging, TRAIN_STATE), "w") as fh:
                fh.write(dump_json(train_state))
        replace_dir_atomic(staging, folder, check_replaceable_checkpoint)


MAX_JSON_BYTES = 64 << 20   # config, vocabulary and training state are kB to a few MB


def read_json(path: str, what: str):
    """A small JSON file, size-checked before reading; CheckpointError names what is wrong."""
    try:
        size = os.stat(path).st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is {size} bytes, too large for a {what} ({MAX_JSON_BYTES} at most)")
        with open_regular(path, what=f"a {what}", follow_symlinks=True) as fh:
            return json.loads(fh.read(MAX_JSON_BYTES + 1).decode("utf-8"))
    except NotRegularFile as exc:
        raise CheckpointError(str(exc)) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; a checkpoint folder needs {WEIGHTS}, {CONFIG} and {VOCAB}"
                              + (f" ({TRAIN_STATE} to resume)" if what == "training state" else "")) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not a valid {what} (not JSON: {str(exc)[:200]})") from exc


def load_config(folder: str) -> ModelConfig:
    path = os.path.join(folder, CONFIG)
    data = read_json(path, "kidrr config")
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r} is not {CHECKPOINT_FORMAT}")
    try:
        return ModelConfig.from_dict(data.get("model"))
    except ConfigError as exc:
        raise CheckpointError(f"{path} is not a valid kidrr config ({exc})") from exc


def read_train_state(folder: str) -> tuple[dict, TrainConfig]:
    """(training state, its TrainConfig) of a resumable checkpoint, every field checked."""
    path = os.path.join(folder, TRAIN_STATE)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing: {folder} is not a resumable training checkpoint (only "
                              f"OUT/last written by kidrr train is); start a new run instead of --resume")
    state = read_json(path, "training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(state).__name__}")
    epoch, best, history = state.get("epoch"), state.get("best_rsum"), state.get("history")
    checks = ((isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0, "epoch must be an integer >= 0"),
              (isinstance(best, (int, float)) and not isinstance(best, bool), "best_rsum must be a number"),
              (isinstance(history, list) and all(isinstance(h, dict) for h in history),
               "history must be a list of objects"),
              (isinstance(state.get("optimizer"), dict) and isinstance(state["optimizer"].get("param_groups"), list)
               and isinstance(state["optimizer"].get("scalars"), dict), "optimizer state is missing or malformed"))
    for ok, what in checks:
        if not ok:
            raise CheckpointError(f"{path}: {what}; the file was edited or damaged, start a new run")
    try:
        tcfg = TrainConfig.from_dict(state.get("train_config"))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: train_config is invalid ({exc})") from exc
    return state, tcfg


def set_score_fusion(folder: str, weight: float) -> None:
    """Rewrite a checkpoint's config.json (atomically) with another score_fusion weight."""
    import dataclasses
    from .fileio import write_atomic
    cfg = dataclasses.replace(load_config(folder), score_fusion=float(weight))   # validated like any config
    write_atomic(os.path.join(folder, CONFIG), config_json(cfg).encode())


def load_checkpoint(folder: str | None = None, device: str = "cpu"):
    """(model in eval mode, vocabulary, checkpoint id). None loads the shipped model.

    The id (kidrr.identity.checkpoint_id) covers weights, config and vocabulary, so a bundle or
    cache entry paired with it is never reused for a checkpoint whose config alone changed.
    """
    folder = folder or shipped_checkpoint()
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    cfg = load_config(folder)
    vocab = load_tokenizer(os.path.join(folder, VOCAB), cfg)
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
    # The pretrained encoder's frozen weights come from its package; fine-tuned layers are saved.
    missing = sorted(set(expected) - set(state) - pretrained_keys(model))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise CheckpointError(f"{folder}: config.json and {WEIGHTS} disagree ({detail}); "
                              f"use the config the weights were trained with")
    model.load_state_dict(state, strict=False)   # every key checked above
    return model.to(device).eval(), vocab, checkpoint_id(folder)


def pretrained_keys(model: KIDRR) -> set:
    """State-dict keys of the pretrained encoder's frozen weights: never written to a checkpoint."""
    bert = getattr(model.text_encoder, "bert", None)
    if bert is None:
        return set()
    return {f"text_encoder.bert.{k}" for k, p in bert.named_parameters() if not p.requires_grad}


def load_tokenizer(path: str, cfg: ModelConfig):
    """The checkpoint's tokenizer: its own vocabulary (bigru), or the pretrained encoder's WordPiece
    file from the package, checked against the hash the checkpoint recorded."""
    if cfg.text_encoder == "bigru":
        return Vocabulary.load(path)
    from .wordpiece import package_tokenizer
    tokenizer = package_tokenizer()
    tokenizer.check_record(read_json(path, "tokenizer record"), path)
    return tokenizer


def load_train_state(folder: str, optimizer) -> dict:
    """Training position saved with a checkpoint; restores the optimizer in place."""
    state, _ = read_train_state(folder)
    state = dict(state)
    weights = os.path.join(folder, OPTIMIZER)
    if not os.path.exists(weights):
        raise CheckpointError(f"{weights} is missing: {folder} is not a resumable training checkpoint")
    try:
        _restore_optimizer(optimizer, load_file(weights), state.pop("optimizer"))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{weights} does not match this model's optimizer ({str(exc)[:200]}); "
                              f"start a new run") from exc
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
