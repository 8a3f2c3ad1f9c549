"""An independent per-pair KIDRR scorer: one image, one caption of exact length, no padding, no
batching, float64. Written from kidrr-model.md, sharing only the weights with kidrr.model."""
import torch

EPS = 1e-8


def l2n(x):
    return x / (x.pow(2).sum(-1, keepdim=True).sqrt() + EPS)


def linear(layer, x):
    return x @ layer.weight.double().T + layer.bias.double()


def sv(layer, x, y):
    return l2n(linear(layer.fc, (x - y) ** 2))


def attend_one(query, context, lam, slope, norm):
    """One query vector over a context (C, D): SCAN attention with a single query."""
    a = torch.nn.functional.leaky_relu(context @ query, slope)           # (C,)
    if norm == "context":
        a = a / (a.pow(2).sum().sqrt() + EPS)
    alpha = torch.softmax(lam * a, dim=0)
    return l2n(alpha @ context)


def attend_words(cfg, V, T):
    """Local-local: each word (len, D) over the regions (R, D); attention l2-normalised over the words."""
    A = torch.nn.functional.leaky_relu(V @ T.T, cfg.leaky_slope)          # (R, len)
    A = A / (A.pow(2).sum(1, keepdim=True).sqrt() + EPS)
    return [l2n(torch.softmax(cfg.smooth_lambda * A[:, j], dim=0) @ V) for j in range(T.shape[0])]


def local_alignment(model, img_locals, cap_locals):
    """One pair's SCAN text-to-image average: mean over the words of cos(word, its attended regions)."""
    V, T = img_locals.double(), cap_locals.double()
    return torch.stack([a @ T[j] for j, a in enumerate(attend_words(model.cfg, V, T))]).mean()


def pair_score(model, img_locals, img_glob, cap_locals, cap_glob):
    """Score of one image (R, D) + (D,) against one caption (len, D) + (D,)."""
    cfg = model.cfg
    V, gv, T, gt = (x.double() for x in (img_locals, img_glob, cap_locals, cap_glob))
    nodes = [sv(model.sv_gg, gv, gt)]
    nodes.append(sv(model.sv_gl, attend_one(gt, V, cfg.smooth_lambda, cfg.leaky_slope, cfg.global_attn_norm), gt))
    nodes.append(sv(model.sv_gl, attend_one(gv, T, cfg.smooth_lambda, cfg.leaky_slope, cfg.global_attn_norm), gv))
    for j, attended in enumerate(attend_words(cfg, V, T)):
        nodes.append(sv(model.sv_ll, attended, T[j]))
    s = torch.stack(nodes)                                                # (len + 3, S)
    prev = None
    for step in model.relation:
        edges = torch.softmax(linear(step.query, s) @ linear(step.key, s).T, dim=1)
        if cfg.rgr_adaptive and prev is not None:
            gamma = torch.sigmoid(step.gamma_logit.double())
            edges = gamma * prev + (1 - gamma) * edges
        s = torch.relu(linear(step.update, edges @ s))
        prev = edges
    logit = linear(model.readout, s[0])[0]
    return torch.sigmoid(logit) if cfg.score_activation == "sigmoid" else logit
