"""Bag-of-words baseline: mean word embedding vs a linear map of the mean region, cosine score.

It sees which words and which regions occur, never which word goes with which region or in what
order, so on the synthetic set (whose scenes come in colour- and position-swapped families) it
should fall clearly below KIDRR. `python -m kidrr.baseline --data synthetic` trains and evaluates it.
"""
from __future__ import annotations

import json

import click
import numpy as np
import torch
import torch.nn as nn

from . import metrics
from .evaluate import resolve_split, tokenize_split
from .model import l2norm
from .tokenizer import PAD_ID, Vocabulary, pad_batch
from .train import triplet_loss


class BagOfWords(nn.Module):
    def __init__(self, vocab_size: int, feature_size: int, dim: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.regions = nn.Linear(feature_size, dim)

    def images(self, feats):
        return l2norm(self.regions(feats.mean(1)))

    def texts(self, ids, lengths):
        return l2norm(self.words(ids).sum(1) / lengths[:, None].float())


def train_and_evaluate(data="synthetic", dim=256, epochs=15, batch_size=128, lr=2e-3, margin=0.2, seed=0):
    torch.manual_seed(seed)
    train, test = resolve_split(data, "train"), resolve_split(data, "test")
    vocab = Vocabulary.build(train.captions)
    model = BagOfWords(len(vocab), train.feature_size, dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ids_all = tokenize_split(vocab, train.captions, 10_000)
    images = torch.from_numpy(np.asarray(train.images, dtype=np.float32))
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(ids_all))
        for b in range(len(order) // batch_size):
            idx = order[b * batch_size:(b + 1) * batch_size]
            img_ids = torch.from_numpy(idx // 5)
            ids, lengths = (torch.from_numpy(a) for a in pad_batch([ids_all[i] for i in idx]))
            scores = model.images(images[img_ids]) @ model.texts(ids, lengths).T
            loss = triplet_loss(scores, img_ids, margin, hardest=epoch > 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        ids, lengths = (torch.from_numpy(a) for a in pad_batch(tokenize_split(vocab, test.captions, 10_000)))
        img = model.images(torch.from_numpy(np.asarray(test.images, dtype=np.float32)))
        scores = (img @ model.texts(ids, lengths).T).numpy()
    return metrics.recall(scores, test.caption_image)


@click.command()
@click.option("--data", default="synthetic", show_default=True)
@click.option("--epochs", default=15, show_default=True)
def main(data, epochs):
    """Train and evaluate the bag-of-words baseline on the test split."""
    click.echo(json.dumps(train_and_evaluate(data, epochs=epochs)))


if __name__ == "__main__":
    main()
