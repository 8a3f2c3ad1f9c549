"""The C/C++ runtime (runtime/cpp) against the Python side: tokenizer, scores, search, bad input.

Builds runtime/cpp once into build/cpp/release (cached). Parity: the C++ tokenizer gives exactly
kidrr.tokenizer's tokens and ids; C++ scores match the Python runtime within 1e-5 and the PyTorch
model within 2e-5 (fp32 ONNX Runtime vs torch kernels, the runtime tests' tolerance).
"""
import os
import subprocess

import numpy as np
import pytest

import test_cpp_support as cpp
from kidrr.tokenizer import Vocabulary, tokenize
from kidrr.errors import InputError

FEATURES, EMBED, MAX_LEN = 24, 32, 12
TRAIN_CAPTIONS = ["a dog runs on the grass", "a red car", "two cats sleep", "a man rides a red bike",
                  "the child holds a ball", "a big dog and a small cat"]
QUERIES = ["a dog runs on the grass", "two cats", "a red car parked near the big dog", "dog", "A MAN, riding!",
           "zebra quokka dog", "the child holds a ball and a dog runs"]

# Tricky strings: unicode (accents, CJK, emoji, combining marks, odd spaces), punctuation, control
# characters, empty and blank, very long, unknown words. (No NUL: C strings cannot hold one.)
CORPUS = [
    "", " ", "\t\n\r\v\f", "A Dog runs.", "ÉCOLE école Ecole", "naïve café", "日本語のテキスト です",
    "emoji 😀🐶!!", "mixed😀word", "tabs\tand\nnewlines\r\n", "\x1c\x1d\x1e\x1f unit separators",
    "\x85nel\xa0nbsp\u2028line\u3000ideographic", "don't stop-believing", "e-mail: a@b.c", "3.14 $5 100%",
    "(brackets) [x] {y} <z>", "\"quoted\" 'single'", "back\\slash", "~`^|_#&*+=?/;:", "ALLCAPS MiXeD",
    "İstanbul ǅemal ΣΑΣ ẞ", "\x7f del", "e\u0301 combining", "ＡＢＣ full width", "zero\u200bwidth\u200djoiner",
    "dog " * 3000, "a" * 10000, "zebra quokka axolotl", ",", "...", "a  dog", "\x01\x02ctrl",
    "right-to-left עברית العربية", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙", "a,b;c", "DOG", "dog.", "dog's", "12abc ABC12",
]


def _checkpoint(folder):
    import torch
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.model import KIDRR
    torch.manual_seed(1)
    vocab = Vocabulary.build(TRAIN_CAPTIONS * 4)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=FEATURES, embed_size=EMBED, sim_size=16,
                                    knowledge_nodes=4, max_caption_len=MAX_LEN)).eval()
    save_checkpoint(str(folder), model, vocab)
    return str(folder)


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from kidrr.export.bundle import export_bundle
    root = tmp_path_factory.mktemp("cpp")
    ckpt = _checkpoint(root / "ckpt")
    export_bundle(ckpt, str(root / "bundle"), force=True, verify=False, progress=False, log=lambda m: None)
    return str(root / "bundle"), ckpt, root


@pytest.fixture(scope="module")
def retriever(bundle):
    from kidrr.runtime import open_bundle
    with open_bundle(bundle[0], threads=1) as r:
        yield r


def features(n, regions, seed):
    return np.random.default_rng(seed).normal(size=(n, regions, FEATURES)).astype(np.float32)


def tool(built, *args):
    proc = cpp.run([os.path.join(built, "kidrr_tool"), *map(str, args)])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_cpp_unit_tests_pass(built, bundle, tmp_path):
    """Internals (sha256, JSON, UTF-8), null pointers, missing/tampered bundle, wrong feature size,
    empty/over-long/invalid captions, concurrent searches: all inside the C++ test program."""
    import shutil
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle[0], tampered)
    with open(tampered / "similarity.onnx", "ab") as fh:
        fh.write(b"\0")
    proc = cpp.run([os.path.join(built, "kidrr_tests"), bundle[0], str(tampered), str(FEATURES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout and "not run" not in proc.stdout


def test_tokens_equal_python(built, tmp_path):
    corpus = tmp_path / "corpus.hex"
    corpus.write_text(cpp.hex_lines(CORPUS))
    got = tool(built, "tokens", corpus)
    assert len(got) == len(CORPUS)
    for text, line in zip(CORPUS, got):
        tokens = [bytes.fromhex(t).decode("utf-8") for t in line.split()[1:]]
        assert line.split()[0] == "OK" and tokens == tokenize(text), f"{text[:40]!r}: C++ {tokens[:10]}"


def test_ids_equal_python_including_errors(built, bundle, tmp_path):
    vocab = Vocabulary.load(os.path.join(bundle[0], "vocab.json"))
    corpus = tmp_path / "corpus.hex"
    corpus.write_text(cpp.hex_lines(CORPUS + QUERIES))
    got = tool(built, "ids", os.path.join(bundle[0], "vocab.json"), MAX_LEN, corpus)
    errors = 0
    for text, line in zip(CORPUS + QUERIES, got):
        try:
            want = "OK " + " ".join(map(str, vocab.encode(text, MAX_LEN)))
        except InputError:  # empty after tokenising, or longer than max_caption_len
            want, errors = "ERR KIDRR_ERR_INPUT", errors + 1
        assert line == want, f"{text[:40]!r}"
    assert 5 <= errors < len(CORPUS)  # the corpus exercises both outcomes


def test_scores_match_python_runtime_and_pytorch(built, bundle, retriever, tmp_path):
    import torch
    from kidrr.checkpoint import load_checkpoint
    from kidrr.tokenizer import pad_batch
    feats = features(11, 7, seed=3)
    np.save(tmp_path / "feats.npy", feats)
    (tmp_path / "q.hex").write_text(cpp.hex_lines(QUERIES))
    got = np.array([[float(x) for x in row.split()] for row in tool(built, "score", bundle[0], tmp_path / "feats.npy",
                                                                      tmp_path / "q.hex")], dtype=np.float32)
    python = retriever.score(retriever.encode_images(feats), QUERIES)
    model, vocab, _ = load_checkpoint(bundle[1])
    ids, lens = pad_batch([vocab.encode(q) for q in QUERIES])
    with torch.no_grad():
        il, ig = model.encode_images(torch.from_numpy(feats))
        cl, cg = model.encode_texts(torch.from_numpy(ids), torch.from_numpy(lens))
        reference = model.score(il, ig, cl, cg, torch.from_numpy(lens)).numpy()
    assert got.shape == python.shape == (11, len(QUERIES))
    print(f"\nC++ vs Python runtime max |diff| {np.abs(got - python).max():.2e}; "
          f"C++ vs PyTorch {np.abs(got - reference).max():.2e}")
    np.testing.assert_allclose(got, python, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, reference, atol=2e-5, rtol=0)
    assert got.std() > 1e-4  # scores differ between pairs: the comparison is not vacuous


@pytest.mark.parametrize("k,shortlist", [(5, 0), (3, 6)])
def test_search_on_python_gallery_matches_python(built, bundle, retriever, tmp_path, k, shortlist):
    gallery = retriever.encode_images(features(20, 5, seed=4))
    gallery.save(str(tmp_path / "gallery.npz"))
    query = "a dog runs on the grass"
    want = retriever.search_text(query, k, gallery=gallery, shortlist=shortlist or None)
    got = [line.split() for line in tool(built, "search", bundle[0], tmp_path / "gallery.npz", query, k, shortlist)]
    assert [int(i) for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([float(s) for _, s in got], [s for _, s in want], atol=1e-5, rtol=0)


def test_example_prints_top_k(built, bundle, retriever, tmp_path):
    retriever.encode_images(features(9, 5, seed=5)).save(str(tmp_path / "g.npz"))
    proc = cpp.run([os.path.join(built, "kidrr_search"), bundle[0], str(tmp_path / "g.npz"),
                    "a dog runs on the grass", "-k", "4", "--repeat", "3"])
    assert proc.returncode == 0, proc.stderr
    hits = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    want = retriever.search_text("a dog runs on the grass", 4, gallery=retriever.load_gallery(str(tmp_path / "g.npz")))
    assert [int(h.split("\t")[1].split()[1]) for h in hits] == [i for i, _ in want]
    assert "latency_ms median" in proc.stdout


def test_example_refuses_bad_input_with_messages(built, bundle, tmp_path):
    exe = os.path.join(built, "kidrr_search")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, FEATURES + 1), dtype=np.float32))
    cases = [([str(tmp_path / "missing"), str(tmp_path / "wrong.npy"), "a dog"], "does not exist"),
             ([bundle[0], str(tmp_path / "wrong.npy"), "a dog"], "features have size 25"),
             ([bundle[0], str(tmp_path / "none.npz"), "a dog"], "cannot read")]
    np.save(tmp_path / "ok.npy", features(3, 2, seed=0))
    cases.append(([bundle[0], str(tmp_path / "ok.npy"), "   "], "empty after tokenisation"))
    for args, message in cases:
        proc = cpp.run([exe, *args])
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)


def test_gallery_of_another_bundle_is_refused(built, bundle, retriever, tmp_path):
    g = retriever.encode_images(features(4, 3, seed=6))
    np.savez(tmp_path / "other.npz", format=np.array("kidrr-gallery/1"), bundle_id=np.array("0" * 64),
             locals=g.locals, globals=g.globals)
    proc = cpp.run([os.path.join(built, "kidrr_search"), bundle[0], str(tmp_path / "other.npz"), "a dog"])
    assert proc.returncode == 1 and "encoded by another bundle" in proc.stderr


def test_sha256_matches_python(built, bundle):
    import hashlib
    path = os.path.join(bundle[0], "similarity.onnx")
    assert tool(built, "sha256", path) == [hashlib.sha256(open(path, "rb").read()).hexdigest()]


def test_installed_package_works_from_another_cmake_project(built, tmp_path):
    """cmake --install, then a consumer project: find_package(kidrr CONFIG) + kidrr::kidrr."""
    prefix = tmp_path / "prefix"
    proc = subprocess.run(["cmake", "--install", built, "--prefix", str(prefix)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(app C)\nfind_package(kidrr 0.1 CONFIG REQUIRED)\n"
        "add_executable(app main.c)\ntarget_link_libraries(app PRIVATE kidrr::kidrr)\n")
    (app / "main.c").write_text(
        '#include <kidrr.h>\n#include <stdio.h>\nint main(void){kidrr_bundle* b=0;\n'
        'kidrr_status s=kidrr_open("/nonexistent",0,&b);printf("%s|%s\\n",kidrr_status_name(s),kidrr_last_error());'
        'return s==KIDRR_ERR_BUNDLE?0:1;}\n')
    for cmd in (["cmake", "-S", str(app), "-B", str(app / "b"), f"-DCMAKE_PREFIX_PATH={prefix}"],
                ["cmake", "--build", str(app / "b")]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = cpp.run([str(app / "b" / "app")])
    assert proc.returncode == 0 and proc.stdout.startswith("KIDRR_ERR_BUNDLE|"), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    """The shipped model's bundle: the one docs/cpp.md's commands are run on."""
    from kidrr.export.bundle import export_bundle
    out = str(tmp_path_factory.mktemp("shipped") / "bundle")
    export_bundle(None, out, force=True, verify=False, progress=False, log=lambda m: None)
    return out


def test_cpp_unit_tests_pass_on_the_shipped_models_bundle(built, shipped_bundle, tmp_path):
    """Kidrr_tests captions come from the bundle's own vocabulary (the shipped
    vocabulary has no "two" or "cats", and the hard-coded "two cats" failed there), so the
    documented command passes on any bundle, as check_memory.sh runs it."""
    import json
    import shutil
    from kidrr.tokenizer import Vocabulary as V
    words = V.load(os.path.join(shipped_bundle, "vocab.json")).index
    assert "two" not in words and "cats" not in words  # the case that used to fail
    tampered = tmp_path / "tampered"
    shutil.copytree(shipped_bundle, tampered)
    with open(tampered / "similarity.onnx", "ab") as fh:
        fh.write(b"\0")
    feature_size = json.load(open(os.path.join(shipped_bundle, "manifest.json")))["model"]["feature_size"]
    proc = cpp.run([os.path.join(built, "kidrr_tests"), shipped_bundle, str(tampered), str(feature_size)])
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_bundle_identity_equals_python(built, bundle, tmp_path):
    """The C runtime tags and checks galleries with kidrr.identity.bundle_id (the canonical JSON of
    the number-changing manifest fields), so it must compute it byte for byte as Python does: on
    the real manifest, and on variants with non-ASCII, control characters, odd floats, a missing
    field and an extra graph."""
    import copy
    import json
    from kidrr.identity import bundle_id
    from kidrr.runtime import open_bundle
    real = json.load(open(os.path.join(bundle[0], "manifest.json")))
    variants = {"real": real}
    v = copy.deepcopy(real)
    v["model"].update(note="café 日本 😀 \x7f \x01\n\t\"\\/", tiny=1e-05, big=1e16, tenth=0.1, nine=9.0, neg=-0.0,
                      third=1 / 3, huge=1.7976931348623157e308, nested={"b": [1, 2.5, None, True], "a": {}})
    variants["odd values"] = v
    v = copy.deepcopy(real)
    del v["precision"]
    v["graphs"]["extra"] = {"file": "x.onnx", "opset": 18}
    v["export_seconds"] = {"image_encoder": 1.25}  # not part of the identity
    variants["missing and extra"] = v
    for name, manifest in variants.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        assert tool(built, "identity", path) == [bundle_id(manifest)], name
    with open_bundle(bundle[0], threads=1) as r:
        assert tool(built, "identity", os.path.join(bundle[0], "manifest.json")) == [r.bundle_id]
