"""Test fixtures for the runtime: a small random checkpoint and a bundle made from it.

The bundle comes from the real exporter (kidrr.export.bundle.export_bundle) when it is importable.
Until it lands, a throwaway builder (tests only, never shipped) writes the three graphs with
torch.onnx's legacy exporter and a manifest per docs/bundle.md, so the runtime can be tested.
"""
import hashlib
import json
import os

import numpy as np

CAPTIONS = ["a dog runs on the grass", "a red car", "two cats sleep", "a man rides a red bike",
            "the child holds a ball", "a big dog and a small cat"]


def small_checkpoint(folder, feature_size=24, embed_size=32, sim_size=16, seed=0, max_caption_len=12):
    import torch
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.model import KIDRR
    from kidrr.tokenizer import Vocabulary
    torch.manual_seed(seed)
    vocab = Vocabulary.build(CAPTIONS * 4)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=feature_size, embed_size=embed_size,
                                    sim_size=sim_size, knowledge_nodes=4, max_caption_len=max_caption_len)).eval()
    save_checkpoint(str(folder), model, vocab)
    return str(folder)


def make_bundle(checkpoint, out_dir, precision="fp32"):
    try:
        from kidrr.export.bundle import export_bundle
    except ImportError:
        return _throwaway_bundle(checkpoint, out_dir)
    export_bundle(checkpoint, str(out_dir), precision=precision, force=True, verify=False, progress=False,
                  log=lambda msg: None)
    return str(out_dir)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _throwaway_bundle(checkpoint, out_dir):
    import warnings

    import torch
    from kidrr.checkpoint import load_checkpoint
    model, vocab, sha = load_checkpoint(checkpoint)
    cfg = model.cfg
    os.makedirs(out_dir, exist_ok=True)

    class Wrap(torch.nn.Module):
        def __init__(self, method):
            super().__init__()
            self.model, self.method = model, method

        def forward(self, *args):
            return getattr(self.model, self.method)(*args)

    n, r, m, L, D = 3, 5, 2, 6, cfg.embed_size
    specs = {
        "image_encoder": (Wrap("encode_images"), (torch.randn(n, r, cfg.feature_size),), ["features"], ["img_locals", "img_global"],
                          {"features": {0: "n", 1: "R"}, "img_locals": {0: "n", 1: "R"}, "img_global": {0: "n"}}),
        "text_encoder": (Wrap("encode_texts"), (torch.randint(4, cfg.vocab_size, (m, L)), torch.tensor([L, 4])), ["ids", "lengths"],
                         ["cap_locals", "cap_global"], {"ids": {0: "m", 1: "L"}, "lengths": {0: "m"},
                                                        "cap_locals": {0: "m", 1: "L"}, "cap_global": {0: "m"}}),
        "similarity": (Wrap("score"), (torch.randn(n, r, D), torch.randn(n, D), torch.randn(m, L, D), torch.randn(m, D),
                               torch.tensor([L, 4])),
                       ["img_locals", "img_global", "cap_locals", "cap_global", "cap_lengths"], ["scores"],
                       {"img_locals": {0: "n", 1: "R"}, "img_global": {0: "n"}, "cap_locals": {0: "m", 1: "L"},
                        "cap_global": {0: "m"}, "cap_lengths": {0: "m"}, "scores": {0: "n", 1: "m"}}),
    }
    graphs = {}
    for name, (mod, args, ins, outs, axes) in specs.items():
        path = os.path.join(out_dir, name + ".onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(mod, args, path, input_names=ins, output_names=outs, dynamic_axes=axes,
                              opset_version=17, dynamo=False)
        graphs[name] = {"file": name + ".onnx", "sha256": _sha(path), "opset": 17,
                        "inputs": [{"name": x} for x in ins], "outputs": [{"name": x} for x in outs]}
    vocab.save(os.path.join(out_dir, "vocab.json"))
    manifest = {"format": "kidrr-bundle/1", "model": cfg.to_dict(),
                "tokenizer": {"rules": "kidrr-basic/1", "vocab": "vocab.json",
                              "max_caption_len": cfg.max_caption_len},
                "precision": "fp32", "graphs": graphs,
                "files": {"vocab.json": _sha(os.path.join(out_dir, "vocab.json"))},
                "source_checkpoint_sha256": sha, "exporter": {"kidrr": "test-fixture"}}
    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    return str(out_dir)


def random_features(n, regions=5, feature_size=24, seed=0):
    return np.random.default_rng(seed).normal(size=(n, regions, feature_size)).astype(np.float32)
