"""Training (`kidrr train`): hinge triplet loss on the in-batch score matrix, dev rSum every epoch.

Recipe (kidrr-model.md): hardest negatives after `warmup_epochs` of all-negatives, plus aux_weight x
the same loss on the globals' cosine; Adam, x0.1 step decay, grad-norm clip; best checkpoint by dev
rSum. Checkpoints are written atomically, so an interrupt leaves the last complete one intact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import click
import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint, load_train_state, read_train_state, save_checkpoint
from .config import ModelConfig, TrainConfig, dump_json
from .curve import curve_plot
from .data import CAPTIONS_PER_IMAGE, Split, check_features
from .errors import KidrrError, ConfigError, describe
from .evaluate import best_fusion, evaluate_split, format_recall, resolve_split, tokenize_split
from .fileio import write_atomic
from .model import KIDRR
from .text_cache import FrozenTextStates
from .tokenizer import Vocabulary, pad_batch


RUN_OUTPUTS = ("last", "best", "history.json", "curve.png")


def triplet_loss(scores: torch.Tensor, image_ids: torch.Tensor, margin: float, hardest: bool,
                 mask_same_image: bool = True) -> torch.Tensor:
    """Bidirectional hinge loss on a (B, B) score matrix whose diagonal holds the positives.

    Off-diagonal pairs that show the same image are true matches; with mask_same_image they are
    never used as negatives.
    """
    pos = scores.diagonal()
    eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    not_negative = image_ids[:, None] == image_ids[None, :] if mask_same_image else eye
    cost_cap = (margin + scores - pos[:, None]).clamp(min=0).masked_fill(not_negative, 0)  # image -> captions
    cost_img = (margin + scores - pos[None, :]).clamp(min=0).masked_fill(not_negative, 0)  # caption -> images
    if hardest:
        return cost_cap.max(1).values.sum() + cost_img.max(0).values.sum()
    return cost_cap.sum() + cost_img.sum()


def in_batch_recall(scores: torch.Tensor, image_ids: torch.Tensor) -> float:
    """Fraction of rows and columns whose positive (the diagonal) beats every true negative."""
    pos = scores.diagonal()
    neg = scores.masked_fill(image_ids[:, None] == image_ids[None, :], float("-inf"))
    return float(((neg.max(1).values < pos).float().mean() + (neg.max(0).values < pos).float().mean()) / 2)


def neighbour_groups(globals_: np.ndarray, rng: np.random.Generator, group: int) -> list:
    """Images partitioned into groups of `group` near neighbours: a random unassigned seed takes its
    nearest unassigned images by cosine (O(N^2 / group), seconds for tens of thousands)."""
    n = len(globals_)
    free = np.ones(n, dtype=bool)
    groups = []
    for seed in rng.permutation(n):
        if not free[seed]:
            continue
        sims = globals_ @ globals_[seed]
        sims[~free] = -np.inf
        take = min(group, int(free.sum()))
        members = np.argpartition(-sims, take - 1)[:take]   # the seed itself is its own nearest
        free[members] = False
        groups.append(members)
    return groups


def neighbour_order(globals_: np.ndarray, rng: np.random.Generator, group: int) -> np.ndarray:
    """One epoch's caption order: five rounds (one caption per image per round, in the published
    layout of five captions per image), each round's images in neighbour groups, groups shuffled.
    Consecutive captions, and so each batch, then hold groups of images that look alike."""
    rounds = []
    for r in rng.permuted(np.tile(np.arange(CAPTIONS_PER_IMAGE), (len(globals_), 1)), axis=1).T:
        groups = neighbour_groups(globals_, rng, group)
        rounds += [g * CAPTIONS_PER_IMAGE + r[g] for g in groups]
    return np.concatenate([rounds[i] for i in rng.permutation(len(rounds))])


def plateau(batch_size: int, margin: float) -> float:
    """Hardest-negative loss when every score is equal: the collapsed model's value."""
    return 2.0 * batch_size * margin


class Trainer:
    def __init__(self, model: KIDRR, vocab: Vocabulary, tcfg: TrainConfig, text_states=None):
        self.model, self.vocab, self.tcfg = model, vocab, tcfg
        self.text_states = text_states   # FrozenTextStates of the training captions (pretrained encoder)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr)
        self.epoch = 0
        self.best_rsum = -1.0
        self.history: list = []

    def lr_for(self, epoch: int) -> float:
        return self.tcfg.lr * 0.1 ** sum(epoch >= e for e in self.tcfg.lr_decay_epochs)

    def step(self, features: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor,
             image_ids: torch.Tensor, hardest: bool) -> dict:
        """One optimisation step on a batch, on the all-negatives or the hardest-negative loss.

        text: token ids (m, L), or the frozen encoder's token states (m, L, H) when they are cached.

        Returns the scorer's and the globals' hardest-negative losses whichever loss was trained,
        so the distance to the collapse plateau is always visible.
        """
        t = self.tcfg
        self.model.train()
        img = self.model.encode_images(features)
        cap = (self.model.encode_text_states if self.text_states else self.model.encode_texts)(text, lengths)
        scores = self.model.score_tiled(img, (*cap, lengths), t.tile_images, t.tile_captions)
        matrices = {"scorer": scores, "globals": img[1] @ cap[1].T}
        losses = {(name, mode): triplet_loss(mat, image_ids, t.margin, mode, t.mask_same_image)
                  for name, mat in matrices.items() for mode in (True, False)}
        loss = losses[("scorer", hardest)] + t.aux_weight * losses[("globals", hardest)]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        return {"loss": float(loss.detach()), "hardest": float(losses[("scorer", True)].detach()),
                "hardest_globals": float(losses[("globals", True)].detach()),
                "recall": in_batch_recall(scores.detach(), image_ids)}

    def use_hardest(self) -> bool:
        """Hardest negatives after the warm-up, once they are informative.

        While the positive loses to its hardest in-batch negative in most rows, the hardest-negative
        loss sits above its plateau (2 x batch x margin) and its quickest way down is to make every
        score equal: the collapse kidrr-model.md describes (measured: loss 55.9 -> 51.9 within 30
        batches on real features, in-batch R@1 0.15 at the switch). So the switch waits (at least
        warmup_epochs) until the last epoch's in-batch R@1 reaches hardest_switch_recall; once
        switched, training stays on hardest negatives.
        """
        t = self.tcfg
        if self.epoch < t.warmup_epochs:
            return False
        if t.hardest_switch_recall <= 0 or not self.history or self.history[-1]["hardest"]:
            return True
        # Runs resumed from before this statistic existed count as not yet informative.
        return self.history[-1].get("in_batch_recall_last", 0.0) >= t.hardest_switch_recall

    def train_epoch(self, split: Split, caption_ids: list, rng: np.random.Generator, max_batches: int = 0):
        t = self.tcfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_for(self.epoch)
        hardest = self.use_hardest()
        if hardest and t.neighbour_group > 1:
            order = neighbour_order(self.image_globals(split), rng, t.neighbour_group)
        else:
            order = rng.permutation(len(caption_ids))
        n_batches = len(order) // t.batch_size  # drop the ragged last batch: the loss scale stays fixed
        if max_batches:
            n_batches = min(n_batches, max_batches)
        cap_image = split.caption_image
        rows, pairs, start = [], 0, time.perf_counter()
        bar = tqdm(range(n_batches), desc=f"epoch {self.epoch + 1} ({'hardest' if hardest else 'all'} negatives)",
                   unit="batch", dynamic_ncols=True)
        for b in bar:
            idx = order[b * t.batch_size:(b + 1) * t.batch_size]
            # Pairs sorted by caption length: each caption tile is then cut to a short length.
            idx = idx[np.argsort([len(caption_ids[i]) for i in idx], kind="stable")]
            image_rows = cap_image[idx]
            # Sorted rows read the memory map in order; features follow the captions' order.
            feats = check_features(split.images[np.sort(image_rows)], "training features",
                                   self.model.cfg.feature_size)
            feats = feats[np.argsort(np.argsort(image_rows, kind="stable"), kind="stable")]
            if self.text_states:
                text, lengths = self.text_states.batch(idx)
            else:
                text, lengths = (torch.from_numpy(a) for a in pad_batch([caption_ids[i] for i in idx]))
            rows.append(self.step(torch.from_numpy(feats), text, lengths, torch.from_numpy(image_rows), hardest))
            pairs += len(idx) ** 2
            bar.set_postfix(loss=f"{rows[-1]['loss']:.1f}", hardest=f"{rows[-1]['hardest']:.2f}",
                            r1=f"{rows[-1]['recall']:.2f}",
                            hardest_glob=f"{rows[-1]['hardest_globals']:.2f}",
                            pairs_s=f"{pairs / (time.perf_counter() - start):.0f}")
        bar.close()
        tail = rows[-50:]  # the end of the epoch says where the model is now
        return {"loss": float(np.mean([r["loss"] for r in rows])), "hardest": hardest,
                "loss_hardest": float(np.mean([r["hardest"] for r in rows])),
                "loss_hardest_last": float(np.mean([r["hardest"] for r in tail])),
                "loss_hardest_globals_last": float(np.mean([r["hardest_globals"] for r in tail])),
                "in_batch_recall_last": float(np.mean([r["recall"] for r in tail])),
                "pairs_per_s": pairs / (time.perf_counter() - start), "batches": n_batches,
                "plateau": plateau(t.batch_size, t.margin), "lr": self.lr_for(self.epoch)}

    @torch.no_grad()
    def image_globals(self, split: Split, chunk: int = 512) -> np.ndarray:
        """The model's globals of every training image (eval mode: no dropout)."""
        self.model.eval()
        out = [self.model.encode_images(torch.from_numpy(check_features(
                   split.images[i:i + chunk], "training features", self.model.cfg.feature_size)))[1].numpy()
               for i in range(0, len(split.images), chunk)]
        self.model.train()
        return np.concatenate(out)

    def state(self) -> dict:
        return {"epoch": self.epoch, "best_rsum": self.best_rsum, "history": self.history,
                "train_config": self.tcfg.to_dict()}


def _set_overrides(cfg, pairs, what):
    """Apply --set key=value pairs (values parsed as JSON, else kept as strings)."""
    data = cfg.to_dict()
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--{what} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            data[key] = json.loads(value)
        except ValueError:
            data[key] = value
    return type(cfg).from_dict(data)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", default="synthetic", show_default=True,
              help="'synthetic' or a folder with train/dev {split}_ims.npy + {split}_caps.txt")
@click.option("--out", required=True, help="run folder: last/ and best/ checkpoints, history.json")
@click.option("--size", type=click.Choice(["small", "published"]), default="small", show_default=True,
              help="small: D=256, S=64 (CPU); published: D=1024, S=256")
@click.option("--model-set", "model_set", multiple=True, help="model config override key=value (repeatable)")
@click.option("--train-set", "train_set", multiple=True, help="training config override key=value (repeatable)")
@click.option("--epochs", type=click.IntRange(min=0), default=None, help="number of epochs (default from the config: 40)")
@click.option("--dev-images", type=click.IntRange(min=0), default=0, help="evaluate on the first N dev images only (0: all)")
@click.option("--max-batches", type=click.IntRange(min=0), default=0, help="cap batches per epoch (smoke runs)")
@click.option("--resume", is_flag=True, help="continue from OUT/last (--train-set overrides still apply)")
def main(data, out, size, model_set, train_set, epochs, dev_images, max_batches, resume):
    """Train KIDRR; keeps OUT/best (by dev rSum) and OUT/last (resumable)."""
    try:
        run(data, out, size, model_set, train_set, epochs, dev_images, max_batches, resume)
    except (KidrrError, OSError) as exc:
        raise click.ClickException(describe(exc)) from exc


def image_backbone_of(data: str) -> dict | None:
    """The kidrr features record of a data folder (train and dev must agree), or None."""
    if data == "synthetic":
        return None
    from kidrr.images.features import read_features_record
    train, dev = read_features_record(data, "train"), read_features_record(data, "dev")
    if (train is None) != (dev is None):
        raise KidrrError(f"{data}: only one of train/dev has a {{split}}_features.json record; extract both "
                         f"splits with kidrr features (same --backbone)")
    if train is None:
        return None
    keys = ("backbone", "weights_sha256", "preprocessing", "feature_size", "regions")
    if any(train.get(k) != dev.get(k) for k in keys):
        raise KidrrError(f"{data}: train and dev features come from different backbones or preprocessing "
                         f"({train['backbone']} vs {dev['backbone']}); re-extract one of them")
    return {k: train[k] for k in ("format",) + keys}


def new_tokenizer(mcfg: ModelConfig, captions):
    """A new run's tokenizer: a vocabulary built from the training captions (bigru), or the
    pretrained encoder's own WordPiece file."""
    if mcfg.text_encoder == "bigru":
        return Vocabulary.build(captions)
    from .wordpiece import package_tokenizer
    return package_tokenizer()


def run(data, out, size, model_set=(), train_set=(), epochs=None, dev_images=0, max_batches=0, resume=False):
    last_dir, best_dir = os.path.join(out, "last"), os.path.join(out, "best")
    if not resume:
        if os.path.exists(last_dir):
            raise KidrrError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        # A new run writes these; any already there belong to someone else and would be overwritten.
        taken = [e for e in RUN_OUTPUTS if os.path.lexists(os.path.join(out, e))]
        if taken:
            raise KidrrError(f"{out} already holds {taken}, which a new run would overwrite; choose another --out")
    # Options first (checked by the config classes), before any data is read or anything written.
    if resume:
        model, vocab, _ = load_checkpoint(last_dir)
        _, saved = read_train_state(last_dir)
        tcfg = _set_overrides(saved, train_set, "train-set")
    else:
        base = ModelConfig.small() if size == "small" else ModelConfig()
        mcfg = _set_overrides(base, model_set, "model-set")
        tcfg = _set_overrides(TrainConfig(), train_set, "train-set")
    if epochs is not None:
        tcfg = dataclasses.replace(tcfg, epochs=epochs)   # re-validated like every other field
    train, dev = resolve_split(data, "train"), resolve_split(data, "dev")
    image_backbone = image_backbone_of(data)
    if dev_images:
        dev = dev.subset(dev_images)
    if resume and model.cfg.image_backbone != image_backbone:
        raise KidrrError(f"{out} was trained on features from "
                         f"{(model.cfg.image_backbone or {}).get('backbone', 'elsewhere')}, but {data} holds "
                         f"features from {(image_backbone or {}).get('backbone', 'elsewhere')}; resume on the "
                         f"data it started with")
    if not resume:
        vocab = new_tokenizer(mcfg, train.captions)
        mcfg = ModelConfig.from_dict(dict(mcfg.to_dict(), vocab_size=len(vocab), feature_size=train.feature_size,
                                          image_backbone=image_backbone))
        torch.manual_seed(tcfg.seed)
        model = KIDRR(mcfg)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    caption_ids = tokenize_split(vocab, train.captions, model.cfg.max_caption_len)
    text_states = None
    if model.cfg.text_encoder != "bigru":
        model.text_encoder.set_finetune(tcfg.text_finetune_layers)
        text_states = FrozenTextStates(model.text_encoder, caption_ids)
    trainer = Trainer(model, vocab, tcfg, text_states)
    if resume:
        state = load_train_state(last_dir, trainer.optimizer)
        trainer.epoch, trainer.best_rsum, trainer.history = state["epoch"], state["best_rsum"], state["history"]
    if train.feature_size != model.cfg.feature_size:
        raise KidrrError(f"training features have size {train.feature_size}, the model expects "
                         f"{model.cfg.feature_size}")
    print(f"train: {len(train.images)} images x {train.regions} regions x {train.feature_size}, "
          f"{len(train.captions)} captions, vocab {len(vocab)}; dev: {len(dev.images)} images; "
          f"model D={model.cfg.embed_size} S={model.cfg.sim_size}", flush=True)
    # Trained on the full score alone; the fusion weight (if chosen) is picked on dev after each epoch
    # and written into the saved config, never into the training objective.
    model.cfg = dataclasses.replace(model.cfg, score_fusion=0.0)
    while trainer.epoch < tcfg.epochs:
        rng = np.random.default_rng([tcfg.seed, trainer.epoch])
        stats = trainer.train_epoch(train, caption_ids, rng, max_batches)
        result = evaluate_split(model, vocab, dev, "all", progress=True)   # minutes on real data: show a bar
        trainer.epoch += 1
        fusion = best_fusion(result) if tcfg.choose_fusion else 0.0
        stats.update(epoch=trainer.epoch, dev_rsum=result["fusion_sweep"][str(fusion)],
                     dev_rsum_unfused=result["scorer"]["rsum"], dev_rsum_globals=result["globals"]["rsum"],
                     score_fusion=fusion, dev=result["scorer"], dev_fusion_sweep=result["fusion_sweep"])
        trainer.history.append(stats)
        print(f"epoch {trainer.epoch} ({'hardest' if stats['hardest'] else 'all'} negatives): "
              f"hardest-negative loss {stats['loss_hardest_last']:.2f} (plateau {stats['plateau']:.1f}), "
              f"globals {stats['loss_hardest_globals_last']:.2f}, in-batch R@1 {stats['in_batch_recall_last']:.2f}, "
              f"{stats['pairs_per_s']:.0f} pairs/s | dev {format_recall(result['scorer'])} | "
              f"globals-only rSum {result['globals']['rsum']:.1f} | fused (x{fusion:g}) rSum {stats['dev_rsum']:.1f}",
              flush=True)
        trained_cfg = model.cfg
        model.cfg = dataclasses.replace(trained_cfg, score_fusion=fusion)   # what the checkpoint computes
        try:
            if stats["dev_rsum"] > trainer.best_rsum:
                trainer.best_rsum = stats["dev_rsum"]
                save_checkpoint(best_dir, model, vocab, train_state=trainer.state())
            save_checkpoint(last_dir, model, vocab, trainer.optimizer, trainer.state())
        finally:
            model.cfg = trained_cfg
        write_atomic(os.path.join(out, "history.json"), dump_json({"history": trainer.history}).encode())
        curve_plot(trainer.history, os.path.join(out, "curve.png"))
    return trainer
