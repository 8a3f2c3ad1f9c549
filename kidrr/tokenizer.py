"""Caption tokenizer and vocabulary (torch-free; the runtime and the C++ port use the same rules).

The rules are written down in docs/tokenizer.md; keep both in step.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Iterable, Sequence

from .errors import InputError, CheckpointError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
VOCAB_FORMAT = "kidrr-vocab/1"
TOKENIZER_RULES = "kidrr-basic/1"
_SPACE = " \t\n\r\v\f"
MAX_VOCAB_BYTES = 64 << 20


def _is_word_char(ch: str) -> bool:
    # ASCII letters and digits, and every non-ASCII code point (so UTF-8 words stay whole).
    return ("a" <= ch <= "z") or ("0" <= ch <= "9") or ord(ch) >= 0x80


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case words and single-character punctuation tokens."""
    text = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)  # ASCII-only lowering
    tokens, word = [], []
    for ch in text:
        if _is_word_char(ch):
            word.append(ch)
            continue
        if word:
            tokens.append("".join(word))
            word = []
        if ch not in _SPACE:
            tokens.append(ch)
    if word:
        tokens.append("".join(word))
    return tokens


class Vocabulary:
    """Maps tokens to ids: <pad>=0, <start>=1, <end>=2, <unk>=3, then words."""

    unk_id = UNK_ID
    kind = "basic"

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[:4]) != SPECIALS:
            raise CheckpointError(f"vocabulary must start with {SPECIALS}, got {words[:4]}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        if len(self.index) != len(words):
            raise CheckpointError("vocabulary holds duplicate words")

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> "Vocabulary":
        counts = Counter(tok for cap in captions for tok in tokenize(cap))
        # Sorted by count then word so the same captions always give the same ids.
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """Token ids wrapped in <start>/<end>. Raises InputError on an empty caption or one over max_len."""
        tokens = tokenize(caption)
        if not tokens:
            raise InputError(f"caption {caption[:60]!r} is empty after tokenisation; give at least one word")
        ids = [START_ID] + [self.index.get(t, UNK_ID) for t in tokens] + [END_ID]
        if max_len is not None and len(ids) > max_len:
            raise InputError(f"caption has {len(ids)} tokens (with <start>/<end>), more than the model's "
                             f"max_caption_len {max_len}; shorten it")
        return ids

    def to_json(self) -> dict:
        return {"format": VOCAB_FORMAT, "tokenizer": TOKENIZER_RULES, "words": self.words}

    @classmethod
    def from_json(cls, data: dict) -> "Vocabulary":
        if not isinstance(data, dict):
            raise CheckpointError(f"a vocabulary must be a JSON object, got {type(data).__name__}")
        if data.get("format") != VOCAB_FORMAT or data.get("tokenizer") != TOKENIZER_RULES:
            raise CheckpointError(f"vocabulary format {data.get('format')!r} / tokenizer "
                                  f"{data.get('tokenizer')!r} unknown; expected {VOCAB_FORMAT} / {TOKENIZER_RULES}")
        words = data.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
            raise CheckpointError("vocabulary 'words' must be a list of non-empty strings")
        return cls(words)

    def save(self, path: str) -> None:
        from .fileio import write_atomic
        write_atomic(path, json.dumps(self.to_json(), ensure_ascii=False).encode("utf-8"))

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        try:
            size = os.stat(path).st_size
            if size > MAX_VOCAB_BYTES:
                raise CheckpointError(f"vocabulary file {path} is {size} bytes, more than any vocabulary "
                                      f"({MAX_VOCAB_BYTES})")
            with open(path, "rb") as fh:
                data = json.loads(fh.read(MAX_VOCAB_BYTES + 1).decode("utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"vocabulary file {path} is missing") from None
        except OSError as exc:
            raise CheckpointError(f"cannot read vocabulary file {path} ({exc.strerror or exc})") from exc
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CheckpointError(f"vocabulary file {path} is not valid JSON ({str(exc)[:200]})") from exc
        return cls.from_json(data)


def truncate(ids: list, max_len: int) -> list:
    """Cut an over-long id list to max_len, keeping its closing token (<end>, or WordPiece's [SEP]):
    the one cut rule everywhere."""
    return ids if len(ids) <= max_len else ids[:max_len - 1] + [ids[-1]]


def pad_batch(id_lists: Sequence[Sequence[int]]):
    """(ids (m, L) int64 padded with 0, lengths (m,) int64) as numpy arrays."""
    import numpy as np
    lengths = np.array([len(x) for x in id_lists], dtype=np.int64)
    ids = np.zeros((len(id_lists), max(1, int(lengths.max(initial=1)))), dtype=np.int64)
    for row, x in enumerate(id_lists):
        ids[row, :len(x)] = x
    return ids, lengths
