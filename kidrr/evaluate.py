"""Evaluation of a PyTorch checkpoint: encode a split, score it in tiles, Recall@K (`kidrr eval`)."""
from __future__ import annotations

import json
import sys

import click
import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from .data import CAPTIONS_PER_IMAGE, Split, check_features, load_split
from .errors import KidrrError, InputError, describe
from .tokenizer import Vocabulary, pad_batch, truncate


def tokenize_split(vocab: Vocabulary, captions, max_len: int):
    """Token id lists for captions; over-long ones are cut (keeping <end>) since data must not be dropped,
    and all-unknown ones are kept (they count, as misses if the model cannot place them). The runtime's
    evaluation policy (on_long='truncate', on_unknown='keep') gives the same ids; kidrr bench uses it."""
    return [truncate(vocab.encode(cap), max_len) for cap in captions]


@torch.no_grad()
def encode_images(model, features, batch: int = 256):
    """(n, R, F) array-like -> locals (n, R, D), globals (n, D) float32 tensors."""
    locs, globs = [], []
    for i in range(0, len(features), batch):
        x = check_features(features[i:i + batch], feature_size=model.cfg.feature_size)
        # A memory-mapped split is read-only; torch warns on (and must never write to) such memory.
        l, g = model.encode_images(torch.from_numpy(x if x.flags.writeable else x.copy()))
        locs.append(l)
        globs.append(g)
    return torch.cat(locs), torch.cat(globs)


@torch.no_grad()
def encode_captions(model, id_lists, batch: int = 256):
    """Token id lists -> locals (m, L, D), globals (m, D), lengths (m,)."""
    ids, lengths = pad_batch(id_lists)
    ids, lengths = torch.from_numpy(ids), torch.from_numpy(lengths)
    locs, globs = [], []
    for i in range(0, len(ids), batch):
        lens = lengths[i:i + batch]
        l, g = model.encode_texts(ids[i:i + batch, :int(lens.max())], lens)
        locs.append(torch.nn.functional.pad(l, (0, 0, 0, ids.shape[1] - l.shape[1])))
        globs.append(g)
    return torch.cat(locs), torch.cat(globs), lengths


@torch.no_grad()
def score_matrix(model, images, captions, tile_images: int = 64, tile_captions: int = 16,
                 progress: bool = True) -> np.ndarray:
    """(n, m) scores. Captions are scored sorted by length so each tile is cut to short lengths."""
    cap_locals, cap_glob, cap_len = captions
    order = torch.argsort(cap_len, stable=True)
    sorted_caps = (cap_locals[order], cap_glob[order], cap_len[order])
    out = np.empty((images[0].shape[0], len(order)), dtype=np.float32)
    block = max(tile_images, 256)
    with tqdm(total=out.size, desc="scoring pairs", unit="pair", unit_scale=True, disable=not progress,
              leave=False) as bar:
        for i in range(0, out.shape[0], block):
            part = model.score_tiled((images[0][i:i + block], images[1][i:i + block]), sorted_caps,
                                     tile_images, tile_captions)
            out[i:i + block, order.numpy()] = part.numpy()
            bar.update(part.numel())
    return out


def evaluate_split(model, vocab: Vocabulary, split: Split, protocol: str = "all", progress: bool = True,
                   tile_images: int = 64, tile_captions: int = 16) -> dict:
    """Recall of the full scorer and of the globals' cosine alone, per the protocol (folds averaged)."""
    model.eval()
    if split.feature_size != model.cfg.feature_size:
        raise InputError(f"split {split.name} has feature size {split.feature_size} but the model expects "
                         f"{model.cfg.feature_size}")
    full, glob, unfused, sweep = [], [], [], []
    ranges = metrics.folds(len(split.images), protocol)   # every image, or InputError
    weight = model.cfg.score_fusion
    for start, stop in ranges:
        part = split.subset(stop - start, start)
        images = encode_images(model, part.images)
        captions = encode_captions(model, tokenize_split(vocab, part.captions, model.cfg.max_caption_len))
        scores = score_matrix(model, images, captions, tile_images, tile_captions, progress)
        cosine = (images[1] @ captions[1].T).numpy()
        full.append(metrics.recall(scores, part.caption_image))
        glob.append(metrics.recall(cosine, part.caption_image))
        kidrr_only = scores - weight * cosine if weight else scores     # the full score without fusion
        unfused.append(metrics.recall(kidrr_only, part.caption_image) if weight else full[-1])
        sweep.append({w: metrics.recall(kidrr_only + w * cosine, part.caption_image)["rsum"] for w in FUSION_GRID})
    used = sum(stop - start for start, stop in ranges)
    return {"protocol": protocol, "images": used, "captions": used * CAPTIONS_PER_IMAGE,
            "folds": len(full), "fold_images": [stop - start for start, stop in ranges],
            "scorer": metrics.average(full), "globals": metrics.average(glob), "unfused": metrics.average(unfused),
            "score_fusion": weight, "fusion_sweep": {str(w): float(np.mean([f[w] for f in sweep])) for w in FUSION_GRID}}


# Weights of the globals' cosine tried beside the full score (sigmoid scores lie in (0, 1), cosines
# in (-1, 1)); the sweep costs one recall per weight on matrices already computed.
FUSION_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def best_fusion(result: dict) -> float:
    """The sweep's weight with the highest rSum (the smallest such weight on ties)."""
    sweep = {float(w): r for w, r in result["fusion_sweep"].items()}
    return max(sorted(sweep), key=lambda w: sweep[w])


def resolve_split(data: str, split: str) -> Split:
    """'synthetic' (generated) or a folder in the published precomputed layout."""
    if data == "synthetic":
        from .synthetic import make_synthetic
        return make_synthetic(split)
    return load_split(data, split)


def format_recall(r: dict) -> str:
    return (f"i2t R@1/5/10 {r['i2t_r1']:.1f}/{r['i2t_r5']:.1f}/{r['i2t_r10']:.1f}  "
            f"t2i R@1/5/10 {r['t2i_r1']:.1f}/{r['t2i_r5']:.1f}/{r['t2i_r10']:.1f}  rSum {r['rsum']:.1f}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", default=None, help="checkpoint folder (default: the shipped model)")
@click.option("--data", default="synthetic", show_default=True,
              help="'synthetic' or a folder with {split}_ims.npy and {split}_caps.txt")
@click.option("--split", default="test", show_default=True)
@click.option("--protocol", type=click.Choice(metrics.PROTOCOLS), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one machine-readable JSON object")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="torch threads (0: default)")
@click.option("--choose-fusion", is_flag=True,
              help="write the fusion weight with the best rSum on this split into the checkpoint's config "
                   "(use a dev split, never test)")
def main(checkpoint, data, split, protocol, as_json, threads, choose_fusion):
    """Recall@1/5/10 (both directions), rSum and median rank of a checkpoint on a split."""
    from .checkpoint import load_checkpoint
    if choose_fusion and checkpoint is None:
        raise click.ClickException("--choose-fusion rewrites a checkpoint's config; name it with --checkpoint")
    if threads:
        torch.set_num_threads(threads)
    try:
        model, vocab, sha = load_checkpoint(checkpoint)
        result = evaluate_split(model, vocab, resolve_split(data, split), protocol, progress=not as_json)
    except (KidrrError, OSError) as exc:
        raise click.ClickException(describe(exc)) from exc
    result.update(checkpoint=checkpoint or "shipped", checkpoint_sha256=sha, data=data, split=split)
    if choose_fusion:
        from .checkpoint import set_score_fusion
        result["chosen_fusion"] = best_fusion(result)
        try:
            set_score_fusion(checkpoint, result["chosen_fusion"])
        except KidrrError as exc:
            raise click.ClickException(str(exc)) from exc
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return
    click.echo(f"{result['images']} images x {result['captions']} captions, protocol {protocol} "
               f"({result['folds']} fold(s))")
    click.echo("scorer : " + format_recall(result["scorer"]) +
               f"  medr i2t {result['scorer']['i2t_medr']:.0f} t2i {result['scorer']['t2i_medr']:.0f}")
    click.echo("globals: " + format_recall(result["globals"]))
    if result["score_fusion"]:
        click.echo(f"unfused: {format_recall(result['unfused'])}  (the scorer above adds "
                   f"{result['score_fusion']:g} x the globals' cosine)")
    click.echo("fusion sweep (weight: rSum): " + ", ".join(f"{w}: {r:.1f}" for w, r in result["fusion_sweep"].items()))
    if choose_fusion:
        click.echo(f"wrote score_fusion={result['chosen_fusion']:g} into {checkpoint}/config.json")
