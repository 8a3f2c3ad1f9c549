"""all-MiniLM-L6-v2 as KIDRR's caption encoder: a concise BERT and the heads that make KIDRR's words.

Own code rather than transformers' BertModel: the network is 40 lines, kidrr's install stays light
(tokenizers alone), and export writes the same operations into ONNX by hand (export/graphs.py).
tests/test_minilm.py checks it against transformers' BertModel within 1e-5 on real captions.

Words: the encoder's contextual token states ([CLS] and [SEP] kept, like the BiGRU's <start>/<end>),
projected 384 -> D and l2-normalised. The caption's global (in KIDRR.encode_texts) joins the
attention pooling with the mean-pooled sentence embedding (sentence-transformers' pooling), projected
to D. The encoder is frozen by default; its token states can then be computed once per caption and
cached (kidrr/text_cache.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import l2norm
from .pretrained_text import load_pretrained_files


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.inner = nn.Linear(hidden, inner)
        self.out = nn.Linear(inner, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        m, length, hidden = x.shape
        split = lambda t: t.view(m, length, self.heads, hidden // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hidden // self.heads) + bias, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(m, length, hidden)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.out(F.gelu(self.inner(x))))   # exact (erf) GELU, as BERT


class Bert(nn.Module):
    """BERT encoder (inference only, no dropout): ids (m, L) + mask (m, L) -> token states (m, L, H)."""

    def __init__(self, config: dict):
        super().__init__()
        hidden, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word = nn.Embedding(config["vocab_size"], hidden)
        self.position = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(BertLayer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
                                    for _ in range(config["num_hidden_layers"]))

    def forward(self, ids, mask: torch.Tensor, first_layer: int = 0, last_layer: int | None = None,
                states=None) -> torch.Tensor:
        """Token states after layers[:last_layer]. With states given (the output of layer first_layer - 1,
        e.g. cached below a fine-tuned top), run layers[first_layer:last_layer] on them."""
        if states is None:
            pos = torch.arange(ids.shape[1], device=ids.device)
            states = self.norm(self.word(ids) + self.position(pos)[None] + self.token_type.weight[0])
        bias = (~mask)[:, None, None, :].to(states.dtype) * torch.finfo(states.dtype).min
        for layer in self.layers[first_layer:last_layer]:
            states = layer(states, bias)
        return states

    def load_package_weights(self, tensors: dict) -> None:
        """The package's BertModel names -> ours."""
        names = {"word.weight": "embeddings.word_embeddings.weight",
                 "position.weight": "embeddings.position_embeddings.weight",
                 "token_type.weight": "embeddings.token_type_embeddings.weight",
                 "norm.weight": "embeddings.LayerNorm.weight", "norm.bias": "embeddings.LayerNorm.bias"}
        for i in range(len(self.layers)):
            p = f"encoder.layer.{i}."
            for ours, theirs in (("query", "attention.self.query"), ("key", "attention.self.key"),
                                 ("value", "attention.self.value"), ("attn_out", "attention.output.dense"),
                                 ("attn_norm", "attention.output.LayerNorm"), ("inner", "intermediate.dense"),
                                 ("out", "output.dense"), ("out_norm", "output.LayerNorm")):
                for kind in ("weight", "bias"):
                    names[f"layers.{i}.{ours}.{kind}"] = p + f"{theirs}.{kind}"
        self.load_state_dict({ours: tensors[theirs] for ours, theirs in names.items()})


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling: the mean of the token states over the real tokens."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


class MiniLMTextEncoder(nn.Module):
    """Pretrained BERT (frozen, weights from the package at run time) + the KIDRR heads on its states.

    `bert` is never saved in a checkpoint (kidrr.checkpoint drops PRETRAINED_PREFIX): only the heads
    are kidrr's weights, the rest comes sha256-checked from the package.
    """

    def __init__(self, embed_size: int, finetune_layers: int = 0):
        super().__init__()
        from safetensors.torch import load as load_safetensors
        files = load_pretrained_files()
        self.bert = Bert(files.config)
        self.bert.load_package_weights(load_safetensors(files.weights))
        self.bert.requires_grad_(False)
        hidden = files.config["hidden_size"]
        self.word_proj = nn.Linear(hidden, embed_size)
        self.sentence_proj = nn.Linear(hidden, embed_size)
        self.set_finetune(finetune_layers)

    def set_finetune(self, layers: int) -> None:
        """Train the top `layers` BERT layers with the heads (0: frozen, the default)."""
        self.finetune_layers = layers
        for i, layer in enumerate(self.bert.layers):
            layer.requires_grad_(i >= len(self.bert.layers) - layers)

    @property
    def frozen_layers(self) -> int:
        return len(self.bert.layers) - self.finetune_layers

    def train(self, mode: bool = True):
        super().train(mode)
        self.bert.eval()          # no dropout in the pretrained part, trained or not
        return self

    def frozen_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Output of the frozen layers: what a training run may compute once per caption and cache."""
        return self.bert(ids, mask, last_layer=self.frozen_layers)

    def top_states(self, frozen: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The fine-tuned layers (none by default) on the frozen layers' output."""
        return self.bert(None, mask, first_layer=self.frozen_layers, states=frozen) if self.finetune_layers else frozen

    def heads(self, states: torch.Tensor, mask: torch.Tensor):
        """Token states (m, L, H) -> words (m, L, D) zero at padding, sentence vector (m, D)."""
        # Padded positions are forced away from zero before the norm: sqrt's gradient at 0 is inf
        # (cached states are exact zeros there), and they are zeroed right after anyway.
        words = l2norm(torch.where(mask.unsqueeze(-1), self.word_proj(states), 1.0))
        sentence = self.sentence_proj(mean_pool(states, mask))
        return words * mask.unsqueeze(-1).to(words.dtype), sentence
