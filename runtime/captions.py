"""Captions -> padded token ids with the bundle's tokenizer (a kidrr Vocabulary or a WordPiece
tokenizer: both encode a caption to ids wrapped in their start/end tokens) and length limit.

Over-long captions (more than max_caption_len tokens with <start>/<end>): refused by default
(InputError), since a query silently cut short is a silent wrong answer. on_long="truncate" keeps
the first max_caption_len - 1 tokens plus <end> and warns once per call (evaluation on data sets,
where dropping a caption is not an option, as kidrr eval does).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from kidrr.errors import InputError
from kidrr.tokenizer import pad_batch, truncate

LONG_POLICIES = ("refuse", "truncate")
# All-unknown captions: refused for queries (a score that means nothing); kept when evaluating a data
# set, where every caption must count, as kidrr eval does.
UNKNOWN_POLICIES = ("refuse", "keep")


def check_policies(on_long: str, on_unknown: str) -> None:
    if on_long not in LONG_POLICIES:
        raise InputError(f"on_long must be one of {LONG_POLICIES}, got {on_long!r}")
    if on_unknown not in UNKNOWN_POLICIES:
        raise InputError(f"on_unknown must be one of {UNKNOWN_POLICIES}, got {on_unknown!r}")


class CaptionTruncatedWarning(UserWarning):
    """Some captions were longer than the bundle allows and were cut."""


def check_captions(captions) -> list:
    if isinstance(captions, str):
        raise InputError("captions must be a list of strings, got one string; wrap it in a list")
    if captions is None or not hasattr(captions, "__iter__"):
        raise InputError(f"expected a list of caption strings (or a CaptionIndex), got {type(captions).__name__}")
    captions = list(captions)
    if not captions:
        raise InputError("no captions given; pass at least one caption")
    bad = [i for i, c in enumerate(captions) if not isinstance(c, str)]
    if bad:
        raise InputError(f"captions must be strings; item {bad[0]} is {type(captions[bad[0]]).__name__}")
    return captions


def tokenize_captions(vocab, captions: Sequence[str], max_len: int,
                      on_long: str = "refuse", on_unknown: str = "refuse") -> tuple[np.ndarray, np.ndarray]:
    """(ids (m, L) int64, lengths (m,) int64). InputError names the first bad caption."""
    check_policies(on_long, on_unknown)
    captions = check_captions(captions)
    id_lists, cut = [], []
    for i, caption in enumerate(captions):
        try:
            ids = vocab.encode(caption)
        except InputError as exc:
            raise InputError(f"caption {i}: {exc}") from exc
        if on_unknown == "refuse" and all(t == vocab.unk_id for t in ids[1:-1]):
            raise InputError(f"caption {i} ({caption[:60]!r}) has no word the model knows (all tokens are "
                             f"<unk>); its score would mean nothing. Rephrase it with common words (or pass "
                             f"on_unknown='keep' to score it anyway, as evaluation does)")
        if len(ids) > max_len:
            if on_long == "refuse":
                raise InputError(f"caption {i} has {len(ids)} tokens (with <start>/<end>), more than the "
                                 f"bundle's max_caption_len {max_len}; shorten it, or pass on_long='truncate'")
            ids = truncate(ids, max_len)
            cut.append(i)
        id_lists.append(ids)
    if cut:
        warnings.warn(f"{len(cut)} caption(s) longer than max_caption_len {max_len} were truncated "
                      f"(first: {cut[0]})", CaptionTruncatedWarning, stacklevel=3)
    return pad_batch(id_lists)
