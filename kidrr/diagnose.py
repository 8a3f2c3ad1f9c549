"""Does the costly scorer earn its cost on this data? (`python -m kidrr.diagnose`)

Ranks one split three ways: by the full scorer, by the globals' cosine alone (the cheap first
stage) and by the local-local alignment alone (each word's cosine to the regions it attends to,
averaged over the caption's words: SCAN's text-to-image average). It also profiles the words'
attention over the regions on matching pairs. When that attention spreads over most regions,
each word's attended vector is close to the image's global, the local perspectives mostly repeat
the global one and the scorer ties its globals (measured on the retired f8k-sample, docs/training.md): then the
globals alone, or a short two-stage shortlist, rank as well at a fraction of the cost.
"""
from __future__ import annotations

import json
import sys

import click
import numpy as np
import torch

from . import metrics
from .errors import KidrrError
from .evaluate import encode_captions, encode_images, resolve_split, score_matrix, tokenize_split
from .model import length_mask


@torch.no_grad()
def local_alignment(model, images, captions, tile_captions: int = 64) -> np.ndarray:
    """(n, m) mean over each caption's words of the word's cosine to its attended region vector."""
    img_locals = images[0]
    cap_locals, _, cap_len = captions
    out = []
    for j in range(0, len(cap_len), tile_captions):
        lens = cap_len[j:j + tile_captions]
        words = cap_locals[j:j + tile_captions, :int(lens.max())]
        cos = (model.attend_words(img_locals, words)[1] * words.unsqueeze(0)).sum(-1)  # zero at padding
        out.append(cos.sum(-1) / lens.to(cos.dtype))
    return torch.cat(out, 1).numpy()


@torch.no_grad()
def attention_profile(model, images, captions, caption_image: np.ndarray) -> dict:
    """How the words of each caption attend over the regions of its own image."""
    img_locals, img_glob = images
    cap_locals, cap_glob, cap_len = captions
    entropy, cos_attended = [], []
    for j, img in enumerate(caption_image):  # each caption against its own image only
        words = cap_locals[j:j + 1, :int(cap_len[j])]
        alpha, attended = model.attend_words(img_locals[img:img + 1], words)     # (1, 1, len, R|D)
        entropy.append(-(alpha * alpha.clamp_min(1e-12).log()).sum(-1).flatten())
        cos_attended.append((attended[0, 0] * img_glob[img]).sum(-1))
    mask = length_mask(cap_len, cap_locals.shape[1])
    return {
        "regions": int(img_locals.shape[1]),
        "effective_regions_per_word": float(torch.cat(entropy).exp().mean()),
        "cos_attended_to_image_global": float(torch.cat(cos_attended).mean()),
        "cos_region_to_image_global": float((img_locals * img_glob.unsqueeze(1)).sum(-1).mean()),
        "cos_word_to_caption_global": float((cap_locals * cap_glob.unsqueeze(1)).sum(-1)[mask].mean()),
    }


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho over all pairs: rankings are what retrieval uses (the sigmoid score is not linear in anything)."""
    ranks = [np.argsort(np.argsort(x.ravel(), kind="stable"), kind="stable").astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def diagnose(model, vocab, split, progress: bool = True) -> dict:
    """Scorer, globals and local alignment on one split (one fold), and the attention profile."""
    model.eval()
    images = encode_images(model, split.images)
    captions = encode_captions(model, tokenize_split(vocab, split.captions, model.cfg.max_caption_len))
    rankings = {"scorer": score_matrix(model, images, captions, progress=progress),
                "globals": (images[1] @ captions[1].T).numpy(),
                "local_alignment": local_alignment(model, images, captions)}
    corr = {f"{name}_vs_globals": rank_correlation(rankings[name], rankings["globals"])
            for name in ("scorer", "local_alignment")}
    return {"images": len(split.images), "captions": len(split.captions),
            "rsum": {name: metrics.recall(s, split.caption_image)["rsum"] for name, s in rankings.items()},
            "score_correlation": corr,
            "attention": attention_profile(model, images, captions, split.caption_image)}


def summary(result: dict) -> str:
    rsum, corr, att = result["rsum"], result["score_correlation"], result["attention"]
    return "\n".join([
        f"{result['images']} images x {result['captions']} captions",
        f"rSum  scorer {rsum['scorer']:.1f} | globals alone {rsum['globals']:.1f} | "
        f"local alignment alone {rsum['local_alignment']:.1f}  (scorer - globals: {rsum['scorer'] - rsum['globals']:+.1f})",
        f"rank correlation with the globals' cosine over all pairs: scorer {corr['scorer_vs_globals']:.3f}, "
        f"local alignment {corr['local_alignment_vs_globals']:.3f}",
        f"words' attention on matching pairs: {att['effective_regions_per_word']:.1f} of {att['regions']} regions "
        f"effective (exp entropy); attended vector's cosine to the image global {att['cos_attended_to_image_global']:.2f}",
    ])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", default=None, help="checkpoint folder (default: the shipped model)")
@click.option("--data", default="synthetic", show_default=True,
              help="'synthetic' or a folder with {split}_ims.npy and {split}_caps.txt")
@click.option("--split", default="dev", show_default=True)
@click.option("--images", "n_images", type=click.IntRange(min=1), default=300, show_default=True,
              help="use the split's first N images and their captions")
@click.option("--json", "as_json", is_flag=True, help="print one machine-readable JSON object")
def main(checkpoint, data, split, n_images, as_json):
    """Is the full scorer worth its cost here? Scorer vs globals vs local alignment, attention profile."""
    from .checkpoint import load_checkpoint
    try:
        model, vocab, _ = load_checkpoint(checkpoint)
        part = resolve_split(data, split).subset(n_images)  # subset() stops at the split's end
        result = diagnose(model, vocab, part, progress=not as_json)
    except KidrrError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        click.echo(summary(result))


if __name__ == "__main__":
    main()
