"""The KIDRR model as ../shared/design/kidrr-model.md reads it.

Per item (cheap, once per image / caption): encoders -> attention pooling -> knowledge graph
iterative dissemination (KGID). Per pair (the cost): multi-perspective similarity vectors ->
relation graph reconstruction (RGR) -> score. The scorer works on tiles of n images x m captions
as batched tensor products with masks; nothing loops over captions or pairs.

Shapes: images (n, R, F); captions ids (m, L) + lengths (m,); D joint size, S similarity size.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


def l2norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / (x.pow(2).sum(dim, keepdim=True).sqrt() + 1e-8)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(m, L) bool, True at real tokens."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(x.masked_fill(~mask, float("-inf")), dim=dim)


def init_linear(module: nn.Module, keep: nn.Module | None = None) -> None:
    """Xavier-uniform weights and zero biases for every linear layer (as the published code does),
    except those inside keep."""
    kept = {id(m) for m in keep.modules()} if keep is not None else set()
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m) not in kept:
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AttentionPool(nn.Module):
    """SGRAF self-attention pooling: g = l2norm(sum_i softmax_i(w.[tanh(W_l x_i) * tanh(W_g mean x)]) x_i)."""

    def __init__(self, dim: int):
        super().__init__()
        self.local = nn.Linear(dim, dim)
        self.glob = nn.Linear(dim, dim)
        self.weight = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        mean = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        logits = self.weight(torch.tanh(self.local(x)) * torch.tanh(self.glob(mean)).unsqueeze(1)).squeeze(-1)
        weights = masked_softmax(logits, mask, dim=1)
        return l2norm((weights.unsqueeze(-1) * x).sum(1))


class DisseminationStep(nn.Module):
    """One KGID step: broadcast the global, attend over {locals, global, knowledge}, re-pool."""

    def __init__(self, dim: int, ln_gain: float, broadcast_gain: float):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        self.broadcast = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ln_gain, self.broadcast_gain = ln_gain, broadcast_gain

    def reset_branches(self) -> None:
        # Both residual branches start small, so KGID starts close to the identity and cannot wash
        # out the encoders' per-node signal (see "Training stability" in kidrr-model.md).
        nn.init.constant_(self.norm.weight, self.ln_gain)
        nn.init.zeros_(self.norm.bias)
        with torch.no_grad():
            self.broadcast.weight.mul_(self.broadcast_gain)

    def forward(self, x, g, mask, knowledge):
        n, length, dim = x.shape
        keep = mask.unsqueeze(-1).to(x.dtype)
        gx = g.unsqueeze(1).expand(n, length, dim)
        x = (x + torch.sigmoid(self.gate(torch.cat([x, gx], -1))) * self.broadcast(g).unsqueeze(1)) * keep
        nodes = [x, g.unsqueeze(1)]
        node_mask = [mask, torch.ones(n, 1, dtype=torch.bool, device=x.device)]
        if knowledge is not None:
            nodes.append(knowledge.unsqueeze(0).expand(n, -1, -1))
            node_mask.append(torch.ones(n, knowledge.shape[0], dtype=torch.bool, device=x.device))
        nodes = torch.cat(nodes, 1)
        node_mask = torch.cat(node_mask, 1)
        logits = self.query(x) @ self.key(nodes).transpose(1, 2) / math.sqrt(dim)
        attn = masked_softmax(logits, node_mask.unsqueeze(1), dim=-1) @ self.value(nodes)
        return l2norm(x + F.relu(self.norm(self.out(attn)))) * keep


class Dissemination(nn.Module):
    """Knowledge graph iterative dissemination for one modality (T steps, separate weights)."""

    def __init__(self, dim: int, steps: int, ln_gain: float, broadcast_gain: float):
        super().__init__()
        self.steps = nn.ModuleList(DisseminationStep(dim, ln_gain, broadcast_gain) for _ in range(steps))

    def forward(self, x, mask, pool: AttentionPool, knowledge):
        g = pool(x, mask)
        for step in self.steps:
            x = step(x, g, mask, knowledge)
            g = pool(x, mask)
        return x, g


class ImageEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.feature_size, cfg.embed_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return l2norm(self.fc(features))


class TextEncoder(nn.Module):
    """Word embedding -> dropout -> BiGRU over the true length, directions averaged, l2norm.

    The backward direction runs a forward GRU over each caption reversed within its own length
    (a gather), so padding never reaches a real token and no packed sequences are needed: the
    same code trains and exports to ONNX.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru_fwd = nn.GRU(cfg.word_dim, cfg.embed_size, batch_first=True)
        self.gru_bwd = nn.GRU(cfg.word_dim, cfg.embed_size, batch_first=True)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = length_mask(lengths, ids.shape[1])
        words = self.dropout(self.embed(ids))
        forward, _ = self.gru_fwd(words)
        # Index that reverses the first len positions of each row and leaves the padding in place.
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        rev = torch.where(mask, lengths.unsqueeze(1) - 1 - pos, pos)
        backward, _ = self.gru_bwd(torch.gather(words, 1, rev.unsqueeze(-1).expand_as(words)))
        backward = torch.gather(backward, 1, rev.unsqueeze(-1).expand_as(backward))
        out = l2norm((forward + backward) / 2)
        return out * mask.unsqueeze(-1).to(out.dtype)


class SimilarityVector(nn.Module):
    """sv(x, y) = l2norm(W (x - y)^2): a vector, not a scalar, per aligned pair."""

    def __init__(self, dim: int, sim: int):
        super().__init__()
        self.fc = nn.Linear(dim, sim)

    def forward(self, x, y):
        return l2norm(self.fc((x - y).pow(2)))


class RelationStep(nn.Module):
    """One RGR step over the similarity nodes of every pair in a tile."""

    def __init__(self, sim: int):
        super().__init__()
        self.query = nn.Linear(sim, sim)
        self.key = nn.Linear(sim, sim)
        self.update = nn.Linear(sim, sim)
        self.gamma_logit = nn.Parameter(torch.zeros(()))

    def forward(self, s, mask, prev_adj, adaptive: bool, rows: int | None = None):
        """s (..., N, S), mask (..., N) -> updated nodes, the adjacency used (for the next step).

        rows=k updates only the first k nodes (against all N): the last step needs node 0 alone.
        """
        query = s if rows is None else s[..., :rows, :]
        logits = self.query(query) @ self.key(s).transpose(-1, -2)
        adj = masked_softmax(logits, mask.unsqueeze(-2), dim=-1)
        if adaptive and prev_adj is not None:
            gamma = torch.sigmoid(self.gamma_logit)
            adj = gamma * prev_adj[..., :adj.shape[-2], :] + (1 - gamma) * adj
        keep = mask if rows is None else mask[..., :rows]
        return F.relu(self.update(adj @ s)) * keep.unsqueeze(-1).to(s.dtype), adj


class KIDRR(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, s = cfg.embed_size, cfg.sim_size
        self.image_encoder = ImageEncoder(cfg)
        if cfg.text_encoder == "minilm-l6":
            from .minilm import MiniLMTextEncoder   # needs the pretrained encoder's package
            self.text_encoder = MiniLMTextEncoder(d)
        else:
            self.text_encoder = TextEncoder(cfg)
        self.image_pool = AttentionPool(d)
        self.text_pool = AttentionPool(d)
        self.image_kgid = Dissemination(d, cfg.kgid_steps, cfg.kgid_ln_gain, cfg.kgid_broadcast_gain)
        self.text_kgid = Dissemination(d, cfg.kgid_steps, cfg.kgid_ln_gain, cfg.kgid_broadcast_gain)
        self.knowledge = nn.Parameter(torch.empty(cfg.knowledge_nodes, d)) if cfg.knowledge_nodes else None
        self.sv_gg = SimilarityVector(d, s)
        self.sv_ll = SimilarityVector(d, s)
        self.sv_gl = SimilarityVector(d, s)
        self.relation = nn.ModuleList(RelationStep(s) for _ in range(cfg.rgr_steps))
        self.readout = nn.Linear(s, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear(self, keep=getattr(self.text_encoder, "bert", None))   # the pretrained encoder keeps its weights
        for kgid in (self.image_kgid, self.text_kgid):
            for step in kgid.steps:
                step.reset_branches()
        if self.knowledge is not None:
            nn.init.normal_(self.knowledge, std=1.0 / math.sqrt(self.cfg.embed_size))

    # ---- per item -------------------------------------------------------------------------
    def encode_images(self, features: torch.Tensor):
        """(n, R, F) -> locals (n, R, D), global (n, D)."""
        v = self.image_encoder(features)
        mask = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        return self.image_kgid(v, mask, self.image_pool, self.knowledge)

    def encode_texts(self, ids: torch.Tensor, lengths: torch.Tensor):
        """(m, L) ids + (m,) lengths -> locals (m, L, D) zero at padding, global (m, D)."""
        mask = length_mask(lengths, ids.shape[1])
        if self.cfg.text_encoder == "minilm-l6":
            return self.encode_text_states(self.text_encoder.frozen_states(ids, mask), lengths)
        return self.text_kgid(self.text_encoder(ids, lengths), mask, self.text_pool, self.knowledge)

    def encode_text_states(self, frozen: torch.Tensor, lengths: torch.Tensor):
        """Pretrained encoder: the frozen layers' token states (m, L, H) -> locals, global.

        The global joins KIDRR's attention pooling with the projected mean-pooled sentence embedding.
        """
        mask = length_mask(lengths, frozen.shape[1])
        enc = self.text_encoder
        words, sentence = enc.heads(enc.top_states(frozen, mask), mask)
        x, g = self.text_kgid(words, mask, self.text_pool, self.knowledge)
        return x, l2norm(g + sentence)

    # ---- per pair -------------------------------------------------------------------------
    # The attention products are written as einsums over unbroadcast operands so torch runs them
    # as one large GEMM or a batched GEMM, never materialising (n, m, R, D) broadcast copies.
    def _smooth(self, a, mask, norm_dim, softmax_dim):
        """SCAN: LeakyReLU, l2norm over norm_dim (masked), softmax of lambda * a over softmax_dim."""
        cfg = self.cfg
        a = F.leaky_relu(a, cfg.leaky_slope)
        if mask is not None:
            a = a.masked_fill(~mask, 0.0)
        if norm_dim is not None:
            a = l2norm(a, norm_dim)
        a = cfg.smooth_lambda * a
        return torch.softmax(a if mask is None else a.masked_fill(~mask, float("-inf")), dim=softmax_dim)

    def attend_words(self, img_locals, cap_locals):
        """Local-local attention: every word over the regions, l2-normalised over the words.

        Returns the weights (n, m, L, R) and each word's attended region vector (n, m, L, D).
        Padded words are exact zeros, so they add nothing to that norm; callers mask their rows.
        """
        a = torch.einsum("nrd,mld->nmlr", img_locals, cap_locals)
        alpha = self._smooth(a, None, -2, -1)
        return alpha, l2norm(torch.einsum("nmlr,nrd->nmld", alpha, img_locals))

    def similarity_nodes(self, img_locals, img_glob, cap_locals, cap_glob, cap_len):
        """Similarity nodes (n, m, 3 + L, S) and their mask (m, 3 + L): gg, tv, vt, then words."""
        m, length, _ = cap_locals.shape
        word_mask = length_mask(cap_len, length)                                   # (m, L)
        ctx_norm = -1 if self.cfg.global_attn_norm == "context" else None
        gg = self.sv_gg(img_glob.unsqueeze(1), cap_glob.unsqueeze(0))              # (n, m, S)
        ll = self.sv_ll(self.attend_words(img_locals, cap_locals)[1], cap_locals.unsqueeze(0))  # (n, m, L, S)
        # global-local: the caption's global over the regions ...
        alpha = self._smooth(torch.einsum("nrd,md->nmr", img_locals, cap_glob), None, ctx_norm, -1)
        tv = self.sv_gl(l2norm(torch.einsum("nmr,nrd->nmd", alpha, img_locals)), cap_glob.unsqueeze(0))
        # ... and the image's global over the words (masked).
        beta = self._smooth(torch.einsum("mld,nd->nml", cap_locals, img_glob), word_mask.unsqueeze(0), ctx_norm, -1)
        vt = self.sv_gl(l2norm(torch.einsum("nml,mld->nmd", beta, cap_locals)), img_glob.unsqueeze(1))
        nodes = torch.cat([gg.unsqueeze(2), tv.unsqueeze(2), vt.unsqueeze(2), ll], dim=2)
        node_mask = torch.cat([torch.ones(m, 3, dtype=torch.bool, device=cap_locals.device), word_mask], dim=1)
        return nodes * node_mask[None, :, :, None].to(nodes.dtype), node_mask

    def reason(self, nodes, node_mask):
        """Relation graph reconstruction, then the score read from the global-global node."""
        adj, s = None, nodes
        for k, step in enumerate(self.relation):
            last = k == len(self.relation) - 1  # the readout reads node 0 only
            s, adj = step(s, node_mask.unsqueeze(0), adj, self.cfg.rgr_adaptive, rows=1 if last else None)
        logit = self.readout(s[:, :, 0]).squeeze(-1)
        return torch.sigmoid(logit) if self.cfg.score_activation == "sigmoid" else logit

    def score(self, img_locals, img_glob, cap_locals, cap_glob, cap_len):
        """One tile: n encoded images x m encoded captions -> scores (n, m)."""
        return self.reason(*self.similarity_nodes(img_locals, img_glob, cap_locals, cap_glob, cap_len))

    def score_tiled(self, images, captions, tile_images: int = 32, tile_captions: int = 8):
        """Full (n, m) score matrix, computed tile by tile (cache-friendly, bounded memory).

        images: (locals, globals); captions: (locals, globals, lengths). Each caption tile is cut
        to its own longest caption so short captions do not pay for long ones.
        """
        img_locals, img_glob = images
        cap_locals, cap_glob, cap_len = captions
        rows = []
        for i in range(0, img_locals.shape[0], tile_images):
            row = []
            for j in range(0, cap_locals.shape[0], tile_captions):
                lens = cap_len[j:j + tile_captions]
                lmax = int(lens.max())
                row.append(self.score(img_locals[i:i + tile_images], img_glob[i:i + tile_images],
                                      cap_locals[j:j + tile_captions, :lmax], cap_glob[j:j + tile_captions], lens))
            rows.append(torch.cat(row, 1))
        return torch.cat(rows, 0)
