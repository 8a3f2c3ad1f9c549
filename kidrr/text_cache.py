"""Token states of a frozen pretrained caption encoder, computed once per training caption.

With the encoder frozen, its output for a caption never changes during training: computing it once
(float16, about 12 kB a caption) makes an epoch cost what it costs with the BiGRU, instead of a full
BERT forward per caption per epoch. Kept in memory (30,000 captions: about 350 MB).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .model import length_mask
from .tokenizer import pad_batch


class FrozenTextStates:
    def __init__(self, encoder, id_lists: list, batch: int = 128, progress: bool = True):
        lengths = np.array([len(x) for x in id_lists], dtype=np.int64)
        self.lengths = torch.from_numpy(lengths)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        hidden = encoder.bert.word.embedding_dim
        self.flat = torch.empty((int(self.offsets[-1]), hidden), dtype=torch.float16)
        order = np.argsort(lengths, kind="stable")    # batches of like lengths: little padding
        chunks = range(0, len(order), batch)
        with torch.no_grad():
            for start in tqdm(chunks, desc="caption states (frozen encoder)", unit="batch", disable=not progress):
                rows = order[start:start + batch]
                ids, lens = (torch.from_numpy(a) for a in pad_batch([id_lists[i] for i in rows]))
                states = encoder.frozen_states(ids, length_mask(lens, ids.shape[1]))
                for r, i in enumerate(rows):
                    self.flat[self.offsets[i]:self.offsets[i + 1]] = states[r, :lengths[i]].to(torch.float16)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (b, L, H) float32 zero-padded, lengths (b,)) of the captions idx."""
        lens = self.lengths[idx]
        out = torch.zeros((len(idx), int(lens.max()), self.flat.shape[1]), dtype=torch.float32)
        for r, i in enumerate(idx):
            out[r, :lens[r]] = self.flat[self.offsets[i]:self.offsets[i + 1]]
        return out, lens
