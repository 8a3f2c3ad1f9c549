"""The pretrained caption encoder's WordPiece tokenizer (torch-free: the runtime uses it too).

`tokenizers` reads the tokenizer.json shipped with the encoder; we turn off the file's own
truncation and padding so that over-long captions meet kidrr's on_long policy, as with the basic
tokenizer. A caption encodes to [CLS] pieces... [SEP]; docs/tokenizer.md has the rules.
"""
from __future__ import annotations

import hashlib
import json

from .errors import CheckpointError, InputError

MAX_TOKENIZER_BYTES = 16 << 20   # the MiniLM file is 466 kB
RECORD_FORMAT = "kidrr-tokenizer-record/1"
EXPECTED = {"normalizer": "BertNormalizer", "pre_tokenizer": "BertPreTokenizer", "model": "WordPiece"}


class WordPieceTokenizer:
    """Caption -> WordPiece ids with [CLS]/[SEP], exactly as `tokenizers` does."""

    kind = "wordpiece"

    def __init__(self, data: bytes):
        from tokenizers import Tokenizer
        if len(data) > MAX_TOKENIZER_BYTES:
            raise CheckpointError(f"tokenizer file is {len(data)} bytes, more than a WordPiece tokenizer "
                                  f"({MAX_TOKENIZER_BYTES})")
        try:
            spec = json.loads(data.decode("utf-8"))
            kinds = {key: (spec.get(key) or {}).get("type") for key in EXPECTED}
            self._tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:   # bad JSON or UTF-8, a non-object field; tokenizers raises plain Exception
            raise CheckpointError(f"tokenizer file is not a valid tokenizers JSON file ({str(exc)[:200]})") from None
        if kinds != EXPECTED:
            raise CheckpointError(f"tokenizer file holds {kinds}, not the BERT WordPiece tokenizer {EXPECTED}")
        self._tok.no_truncation()
        self._tok.no_padding()
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest()
        vocab = self._tok.get_vocab()
        self.unk_id = vocab[spec["model"]["unk_token"]]
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.size = len(vocab)

    def __len__(self) -> int:
        return self.size

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """[CLS] pieces [SEP]. InputError on a caption with no pieces, or one over max_len."""
        ids = self._tok.encode(caption).ids
        if len(ids) <= 2:
            raise InputError(f"caption {caption[:60]!r} is empty after tokenisation; give at least one word")
        if max_len is not None and len(ids) > max_len:
            raise InputError(f"caption has {len(ids)} tokens (with [CLS]/[SEP]), more than the model's "
                             f"max_caption_len {max_len}; shorten it")
        return ids

    def encode_batch(self, captions: list[str]) -> list[list[int]]:
        """Ids of many captions at once (tokenizers' parallel batch path), for training data."""
        out = [e.ids for e in self._tok.encode_batch(captions)]
        empty = [i for i, ids in enumerate(out) if len(ids) <= 2]
        if empty:
            raise InputError(f"caption {empty[0]} ({captions[empty[0]][:60]!r}) is empty after tokenisation")
        return out

    def to_json(self) -> dict:
        """A checkpoint's vocab.json for this tokenizer: which file, by hash (the file itself comes with
        the encoder's package)."""
        return {"format": RECORD_FORMAT, "kind": self.kind, "sha256": self.sha256, "size": self.size}

    def check_record(self, record, where: str) -> None:
        """CheckpointError unless record (a checkpoint's vocab.json) names this tokenizer file."""
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or record.get("kind") != self.kind:
            raise CheckpointError(f"{where} is not a {RECORD_FORMAT} WordPiece record; the checkpoint was "
                                  f"not written by kidrr for a pretrained text encoder")
        if record.get("sha256") != self.sha256:
            raise CheckpointError(f"{where} was trained with tokenizer.json sha256 {record.get('sha256')}, but the "
                                  f"installed encoder package has {self.sha256}; install the package version the "
                                  f"model was trained with")

    def save(self, path: str) -> None:
        from .fileio import write_atomic
        write_atomic(path, self.data)


def package_tokenizer() -> WordPieceTokenizer:
    """The pretrained encoder's own tokenizer file, from its package (kidrr.pretrained_text)."""
    from .pretrained_text import load_pretrained_files
    return WordPieceTokenizer(load_pretrained_files().tokenizer)
