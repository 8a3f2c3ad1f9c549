"""The C runtime on MiniLM bundles (manifest `tokenizer.kind` "wordpiece", tokenizer.json in `files`,
`model.text_encoder` "minilm-l6"): opened, checked, tokenized with WordPiece, scored.

Two bundles:
- a *contract* bundle, built here without the MiniLM export: a tiny model's graphs (its word
  embedding sized to MiniLM's 30,522 ids) re-labelled as the MiniLM contract says (tokenizer.json
  instead of vocab.json). Its scores are checked against ONNX Runtime run from Python on the ids
  `tokenizers` gives, so the C tokenizer and the C text path are tested end to end now;
- the real export of a tiny MiniLM checkpoint (kidrr.export: the pretrained BERT in
  text_encoder.onnx), scored by the C runtime and the Python runtime within 1e-5.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import test_cpp_support as cpp
from test_cpp_runtime import EMBED, FEATURES, features

MAX_LEN = 32
QUERIES = ["a dog runs on the grass", "Two CATS sleep, curled up!", "naïve café: résumé", "日本語のテキスト",
           "unbelievably supercalifragilistic", "a [MASK] dog", "emoji 😀 dog", "İstanbul ΣΑΣ"]


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


def _tiny_checkpoint(folder):
    import torch
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.model import KIDRR
    from kidrr.tokenizer import SPECIALS, Vocabulary
    torch.manual_seed(2)
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(30522 - len(SPECIALS))])
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=FEATURES, embed_size=EMBED, sim_size=16,
                                    knowledge_nodes=4, max_caption_len=MAX_LEN, word_dim=16)).eval()
    save_checkpoint(str(folder), model, vocab)
    return str(folder)


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _write_manifest(folder, manifest):
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)


@pytest.fixture(scope="module")
def contract_bundle(tmp_path_factory):
    from kidrr.export.bundle import export_bundle
    root = tmp_path_factory.mktemp("minilm_contract")
    folder = str(root / "bundle")
    export_bundle(_tiny_checkpoint(root / "ckpt"), folder, force=True, verify=False, progress=False, log=lambda m: None)
    tok = cpp.minilm_tokenizer_json(folder)
    with open(os.path.join(folder, "manifest.json")) as fh:
        manifest = json.load(fh)
    vocab_rel = manifest["tokenizer"].get("vocab", "vocab.json")
    os.remove(os.path.join(folder, vocab_rel))
    del manifest["files"][vocab_rel]
    manifest["files"]["tokenizer.json"] = _sha(tok)
    manifest["tokenizer"] = {"kind": "wordpiece", "file": "tokenizer.json", "max_caption_len": MAX_LEN}
    manifest["model"]["text_encoder"] = "minilm-l6"
    manifest["model"]["vocab_size"] = 30522
    _write_manifest(folder, manifest)
    return folder, manifest


def _reference_scores(folder, manifest, feats, captions):
    """The contract, from Python: tokenizers' ids, padded with 0, through the bundle's three graphs."""
    import onnxruntime as ort
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    id_lists = [e.ids for e in tok.encode_batch(captions)]
    lengths = np.array([len(x) for x in id_lists], dtype=np.int64)
    ids = np.zeros((len(captions), lengths.max()), dtype=np.int64)
    for row, x in enumerate(id_lists):
        ids[row, :len(x)] = x
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1

    def run(name, *arrays):
        g = manifest["graphs"][name]
        sess = ort.InferenceSession(os.path.join(folder, g["file"]), opts, providers=["CPUExecutionProvider"])
        return sess.run([o["name"] for o in g["outputs"]], {i["name"]: a for i, a in zip(g["inputs"], arrays)})

    il, ig = run("image_encoder", feats)
    cl, cg = run("text_encoder", ids, lengths)
    return run("similarity", il, ig, cl, cg, lengths)[0], id_lists


def _tool(built, *args):
    return cpp.run([os.path.join(built, "kidrr_tool"), *map(str, args)])


def test_contract_bundle_scores_equal_onnxruntime_on_tokenizers_ids(built, contract_bundle, tmp_path):
    folder, manifest = contract_bundle
    feats = features(9, 6, seed=11)
    np.save(tmp_path / "feats.npy", feats)
    (tmp_path / "q.hex").write_text(cpp.hex_lines(QUERIES))
    proc = _tool(built, "score", folder, tmp_path / "feats.npy", tmp_path / "q.hex")
    assert proc.returncode == 0, proc.stderr
    got = np.array([[float(x) for x in row.split()] for row in proc.stdout.splitlines()], dtype=np.float32)
    want, id_lists = _reference_scores(folder, manifest, feats, QUERIES)
    assert got.shape == want.shape == (9, len(QUERIES))
    print(f"\nC vs ONNX Runtime on tokenizers' ids: max |diff| {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert got.std() > 1e-4
    # kidrr_tokenize on the bundle gives the same ids.
    proc = _tool(built, "tokenize", folder, tmp_path / "q.hex")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["OK " + " ".join(map(str, x)) for x in id_lists]


def test_contract_bundle_refuses_bad_captions(built, contract_bundle, tmp_path):
    folder, _ = contract_bundle
    np.save(tmp_path / "feats.npy", features(2, 3, seed=1))
    cases = {"": "empty after tokenisation", " \t\x01": "empty after tokenisation",
             "dog " * 40: "more than the model's max_caption_len 32", "😀 🐶": "all tokens are unknown"}
    for caption, message in cases.items():
        (tmp_path / "q.hex").write_text(cpp.hex_lines(["a dog", caption]))
        proc = _tool(built, "score", folder, tmp_path / "feats.npy", tmp_path / "q.hex")
        assert proc.returncode == 1 and "caption 1:" in proc.stderr and message in proc.stderr, (caption, proc.stderr)
    (tmp_path / "bad.hex").write_text("ff\n")
    proc = _tool(built, "tokenize", folder, tmp_path / "bad.hex")
    assert proc.stdout.splitlines() == ["ERR KIDRR_ERR_INPUT"], proc.stdout + proc.stderr


def _broken(folder, tmp_path, edit):
    copy = str(tmp_path / "broken")
    shutil.copytree(folder, copy)
    with open(os.path.join(copy, "manifest.json")) as fh:
        manifest = json.load(fh)
    edit(manifest, copy)
    _write_manifest(copy, manifest)
    return copy


def _append(rel):
    def edit(m, copy):
        with open(os.path.join(copy, rel), "ab") as fh:
            fh.write(b" ")
    return edit


BROKEN = {
    "tampered_tokenizer": (_append("tokenizer.json"), "tokenizer.json does not match its sha256"),
    "unlisted_tokenizer": (lambda m, c: m["files"].pop("tokenizer.json"), "tokenizer tokenizer.json has no sha256"),
    "unknown_kind": (lambda m, c: m["tokenizer"].update(kind="sentencepiece"), "tokenizer kind 'sentencepiece' is unknown"),
    "unknown_encoder": (lambda m, c: m["model"].update(text_encoder="mpnet"), "text encoder 'mpnet' is unknown"),
    "bigru_with_wordpiece": (lambda m, c: m["model"].update(text_encoder="bigru"), "does not go with tokenizer wordpiece"),
    "too_long": (lambda m, c: m["tokenizer"].update(max_caption_len=513), "more than the 512 tokens"),
    "outside": (lambda m, c: (m["tokenizer"].update(file="../tokenizer.json"),
                              m["files"].update({"../tokenizer.json": m["files"]["tokenizer.json"]})), "outside the bundle folder"),
    "not_bert": (lambda m, c: None, "BERT WordPiece tokenizers only"),
    "vocab_size": (lambda m, c: m["model"].update(vocab_size=30000), "30522 words but the manifest says vocab_size 30000"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_minilm_bundles_are_refused(built, contract_bundle, tmp_path, case):
    folder, _ = contract_bundle
    edit, message = BROKEN[case]
    copy = _broken(folder, tmp_path, edit)
    if case == "not_bert":  # a tokenizer.json of another kind, re-hashed so only its content is wrong
        path = os.path.join(copy, "tokenizer.json")
        with open(path) as fh:
            doc = json.load(fh)
        doc["pre_tokenizer"] = {"type": "Metaspace"}
        with open(path, "w") as fh:
            json.dump(doc, fh)
        with open(os.path.join(copy, "manifest.json")) as fh:
            m = json.load(fh)
        m["files"]["tokenizer.json"] = _sha(path)
        _write_manifest(copy, m)
    np.save(tmp_path / "feats.npy", features(2, 3, seed=1))
    (tmp_path / "q.hex").write_text(cpp.hex_lines(["a dog"]))
    proc = _tool(built, "score", copy, tmp_path / "feats.npy", tmp_path / "q.hex")
    assert proc.returncode == 1 and "kidrr_open failed" in proc.stderr and message in proc.stderr, proc.stderr


def _has_minilm_export():
    from kidrr.config import ModelConfig
    return "text_encoder" in getattr(ModelConfig, "__dataclass_fields__", {})


@pytest.mark.skipif(not _has_minilm_export(), reason="the MiniLM export (ModelConfig.text_encoder) is not in this tree yet")
def test_exported_minilm_bundle_scores_equal_python_runtime(built, tmp_path):
    """The real path: a tiny MiniLM checkpoint exported by kidrr.export, scored by C and by Python."""
    import torch
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.export.bundle import export_bundle
    from kidrr.model import KIDRR
    from kidrr.pretrained_text import load_pretrained_files
    from kidrr.runtime import open_bundle
    from kidrr.wordpiece import WordPieceTokenizer
    torch.manual_seed(3)
    tokenizer = WordPieceTokenizer(load_pretrained_files().tokenizer)
    model = KIDRR(ModelConfig.small(text_encoder="minilm-l6", vocab_size=len(tokenizer), feature_size=FEATURES,
                                    embed_size=EMBED, sim_size=16, knowledge_nodes=4, max_caption_len=MAX_LEN)).eval()
    save_checkpoint(str(tmp_path / "ckpt"), model, tokenizer)
    folder = str(tmp_path / "bundle")
    export_bundle(str(tmp_path / "ckpt"), folder, force=True, verify=False, progress=False, log=lambda m: None)
    with open(os.path.join(folder, "manifest.json")) as fh:
        manifest = json.load(fh)
    assert manifest["tokenizer"]["kind"] == "wordpiece" and manifest["model"]["text_encoder"] == "minilm-l6"
    feats = features(9, 6, seed=12)
    np.save(tmp_path / "feats.npy", feats)
    (tmp_path / "q.hex").write_text(cpp.hex_lines(QUERIES))
    proc = _tool(built, "score", folder, tmp_path / "feats.npy", tmp_path / "q.hex")
    assert proc.returncode == 0, proc.stderr
    got = np.array([[float(x) for x in row.split()] for row in proc.stdout.splitlines()], dtype=np.float32)
    with open_bundle(folder, threads=1) as rt:
        python = rt.score(rt.encode_images(feats), QUERIES)
    want, _ = _reference_scores(folder, manifest, feats, QUERIES)
    print(f"\nMiniLM bundle: C vs Python runtime max |diff| {np.abs(got - python).max():.2e}")
    np.testing.assert_allclose(got, python, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert got.std() > 1e-4
