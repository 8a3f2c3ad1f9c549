"""The C ABI's WordPiece tokenizer (runtime/cpp/src/wordpiece.cpp) against the `tokenizers` library
on all-MiniLM-L6-v2's tokenizer.json: the same ids, or the same refusal, on

- every code point, alone and between letters (exhaustive: the generated Unicode tables in the real
  pipeline);
- random Unicode text and text dense in the hard cases (hypothesis): case, accents and combining
  marks in and out of canonical order, CJK, Hangul, emoji, punctuation, control and format
  characters, odd spaces, special tokens written in the caption, vocabulary pieces, words over 100
  characters;
- the other settings a BERT tokenizer.json may hold (strip_accents true/false, no lower-casing, no
  clean_text, no CJK padding, BertProcessing), on a seeded random corpus.

The reference is tokenizers.Tokenizer.from_file(...) with truncation and padding off, encode(text).ids;
a caption with nothing between [CLS] and [SEP] is refused, so is one over max_caption_len. Captions
travel hex-encoded through `kidrr_tool ids` (kidrr_vocab_open + kidrr_vocab_encode, so C strings:
no NUL). Tokenizer files other than the BERT kinds are refused with KIDRR_ERR_BUNDLE.
"""
import copy
import functools
import json
import os
import random
import string

import pytest
from hypothesis import given, settings, strategies as st

import test_cpp_support as cpp

MAX_LEN = 16


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return cpp.minilm_tokenizer_json(tmp_path_factory.mktemp("minilm"))


@functools.lru_cache(maxsize=4)
def reference(path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    return tok


def expected(tok, texts, max_len=0):
    out = []
    for enc in tok.encode_batch(texts):
        ids = enc.ids
        if len(ids) <= 2 or (max_len and len(ids) > max_len):
            out.append("ERR KIDRR_ERR_INPUT")
        else:
            out.append("OK " + " ".join(map(str, ids)))
    return out


def c_ids(built, tokenizer_json, texts, max_len=0, tmp=None):
    hex_file = os.path.join(tmp or os.path.dirname(tokenizer_json), "captions.hex")
    with open(hex_file, "w") as fh:
        fh.write(cpp.hex_lines(texts))
    proc = cpp.run([os.path.join(built, "kidrr_tool"), "ids", tokenizer_json, str(max_len), hex_file])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(texts)
    return lines


def assert_same(built, tok, path, texts, max_len=0):
    texts = [t.replace("\0", "") for t in texts]  # C strings
    got = c_ids(built, path, texts, max_len)
    for text, g, w in zip(texts, got, expected(tok, texts, max_len)):
        assert g == w, f"{text!r}: C {g[:200]} != tokenizers {w[:200]}"


# The hard cases, as pieces to glue together.
EDGY = (list(string.ascii_letters + string.digits + string.punctuation)
        + list(" \t\n\r\v\f\x85\xa0\u1680\u2000\u2028\u202f\u3000")           # whitespace, some of it Cc
        + list("\x01\x1f\x7f\u00ad\u200b\u200d\u2060\ufeff\ufffd\ue000\U000f0000\U000e0001\u0378")  # drop or keep
        + list("éÉèçñöÅǅǄǆﬁΩÅẞßİıIiΣσςΑΆ\u0345\u1f82\u1e9e")               # case, accents, specials of lowercasing
        + list("\u0301\u0300\u0327\u0308\u0323\u0334\u05b0\u0591\u1dce\u302a\u0f71\u0f72\u0f80")  # Mn of many classes
        + list("\U0001D165\U0001D166\U0001D16D\U0001D16E\u0903\u093e\u20dd\u0488")  # Mc (some reordered), Me
        + list("日本語中文\u3400\U00020000\uf900\U0002f800\u3007\uff21\uff41")    # CJK (and compatibility) ideographs
        + ["한국어", "\u1100\u1161\u11a8", "\uac00\u11a8"]                      # Hangul syllables and jamo
        + ["😀", "🐶", "👍🏽", "🇫🇷", "\ufe0f", "स्ते", "สวัสดี", "مرحبا", "שָׁלוֹם"]
        + ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[cls]", "[MASK", "MASK]", "[[SEP]]"])
LONG_WORDS = st.one_of(st.integers(95, 130).map(lambda n: "x" * n), st.integers(95, 110).map(lambda n: "é" * n),
                       st.integers(30, 60).map(lambda n: "un" + "believ" * n))


def _vocab_pieces():
    if not hasattr(_vocab_pieces, "cache"):
        with open(os.environ["KIDRR_TEST_MINILM_JSON"], encoding="utf-8") as fh:
            vocab = json.load(fh)["model"]["vocab"]
        _vocab_pieces.cache = sorted(w[2:] if w.startswith("##") else w for w in vocab)
    return _vocab_pieces.cache


PIECES = st.one_of(st.sampled_from(EDGY), st.deferred(lambda: st.sampled_from(_vocab_pieces())), LONG_WORDS,
                   st.characters(codec="utf-8"))
EDGY_TEXT = st.tuples(st.sampled_from(["", " ", ""]), st.lists(PIECES, max_size=16)).map(lambda t: t[0].join(t[1]))
ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
TEXTS = st.lists(st.one_of(ANY_TEXT, EDGY_TEXT), min_size=1, max_size=24)


@pytest.fixture(scope="module")
def minilm_env(minilm):
    os.environ["KIDRR_TEST_MINILM_JSON"] = minilm  # the vocabulary pieces' strategy reads it
    yield minilm
    os.environ.pop("KIDRR_TEST_MINILM_JSON", None)


def test_every_code_point_alone_and_in_words(built, minilm):
    """Each code point of planes 0-3 and 14 (all but private use and unassigned planes, which are
    sampled), alone, between letters, and doubled before a mark: the tables in the real pipeline."""
    tok = reference(minilm)
    cps = [chr(c) for c in list(range(1, 0x40000)) + list(range(0xE0000, 0xE1000)) + list(range(0x40000, 0x110000, 97))
           if not 0xD800 <= c < 0xE000]
    texts = [f"{c} a{c}b {c}{c}\u0301" for c in cps]
    got = c_ids(built, minilm, texts)
    want = expected(tok, texts)
    bad = [(t, g, w) for t, g, w in zip(texts, got, want) if g != w]
    assert not bad, f"{len(bad)} code points differ, e.g. {bad[:5]}"


HAND_PICKED = [
    "A Dog runs on the GRASS, quickly!!", "naïve café résumé ÉCOLE", "unaffable jumping unbelievably",
    "a [MASK] dog", "e[SEP]\u0301x", "[cls] [CLS][CLS] [MASK][UNK] [PAD]", "x" * 100, "x" * 101, "é" * 101,
    "İstanbul ΣΑΣ ὈΔΥΣΣΕΎΣ ẞ ǅemal", "日本語のテキスト です", "한국어 텍스트", "emoji 😀🐶 👍🏽!!", "mixed😀word",
    "\x85nel\xa0nbsp\u2028line\u3000ideographic", "zero\u200bwidth\u200djoiner\ufeff", "ＡＢＣ ｆｕｌｌ width",
    "don't stop-believing", "e-mail: a@b.c 3.14 $5 100%", "a\u0301\u0327 c\u0327\u0301 \u1e0b\u0323",
    "x\U0001D16D\U0001D16E y\u0345\u0301", "\uf900\uf901 \U0002f800", "\ue000private\U000f0000",
    "", " ", "\t\n\r\v\f", "\x01\x02\x7f", "\ufffd", "\u0301", "\u00ad", "right-to-left עברית العربية",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙", "supercalifragilisticexpialidocious", "dog " * 300, "a" * 10000,
]


def test_hand_picked_cases(built, minilm):
    tok = reference(minilm)
    assert_same(built, tok, minilm, HAND_PICKED)
    assert_same(built, tok, minilm, HAND_PICKED, MAX_LEN)
    got = c_ids(built, minilm, ["a [MASK] dog", "😀", "x" * 101, "", "\x01", "İ"])
    assert got[:3] == ["OK 101 1037 103 3899 102", "OK 101 100 102", "OK 101 100 102"]
    assert got[3:5] == ["ERR KIDRR_ERR_INPUT"] * 2 and got[5] == "OK 101 1045 102"


@settings(max_examples=200, deadline=None)
@given(texts=TEXTS)
def test_ids_equal_tokenizers_on_random_text(built, minilm_env, texts):
    assert_same(built, reference(minilm_env), minilm_env, texts)


@settings(max_examples=40, deadline=None)
@given(texts=TEXTS)
def test_ids_and_refusals_equal_tokenizers_with_a_length_limit(built, minilm_env, texts):
    assert_same(built, reference(minilm_env), minilm_env, texts, MAX_LEN)


def test_invalid_utf8_is_an_input_error(built, minilm, tmp_path):
    bad = [b"\xff", b"caf\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"ok \xf4\x90\x80\x80", b"[MASK]\x80"]
    hex_file = tmp_path / "bad.hex"
    hex_file.write_text("".join(b.hex() + "\n" for b in bad))
    proc = cpp.run([os.path.join(built, "kidrr_tool"), "ids", minilm, "0", str(hex_file)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ERR KIDRR_ERR_INPUT"] * len(bad)


def _variant(minilm, folder, edit):
    with open(minilm, encoding="utf-8") as fh:
        doc = json.load(fh)
    doc = copy.deepcopy(doc)
    edit(doc)
    path = os.path.join(str(folder), "tokenizer.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False)
    return path


def _norm(**kw):
    return lambda d: d["normalizer"].update(kw)


def _bert_processing(d):
    d["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}


# Canonical order only shows through the vocabulary: these words exist in it only in NFD's order
# (U+1D16E, class 216, before U+1D16D, 226: musical marks that are spacing, so strip_accents keeps them).
MARKS = ["x\U0001D16D\U0001D16E", "x\U0001D16D\u0301\U0001D16E", "x\U0001D16D\u0900\U0001D16E", "y\u302f\U0001D16D\U0001D165",
         "x\U0001D16E\U0001D16D", "\U0001D16D\U0001D16Ex"]


def _vocab_with_marks(d):
    for word in ["x\U0001D16E\U0001D16D", "##\U0001D16E\U0001D16D", "\U0001D16E\U0001D16D", "y\U0001D165\U0001D16D\u302f"]:
        d["model"]["vocab"][word] = len(d["model"]["vocab"])


VARIANTS = {
    "vocab_with_reordered_marks": _vocab_with_marks,
    "strip_accents_false": _norm(strip_accents=False),
    "strip_accents_true_no_lowercase": _norm(strip_accents=True, lowercase=False),
    "no_lowercase_no_strip": _norm(strip_accents=None, lowercase=False),
    "no_clean_text": _norm(clean_text=False),
    "no_chinese_chars": _norm(handle_chinese_chars=False),
    "bert_processing_and_short_words": lambda d: (_bert_processing(d), d["model"].update(max_input_chars_per_word=8)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_bert_settings_equal_tokenizers(built, minilm, tmp_path, variant):
    path = _variant(minilm, tmp_path, VARIANTS[variant])
    rng = random.Random(variant)
    pool = EDGY + ["dog", "runs", "Grass", "CAFÉ", "unbelievable"]
    texts = HAND_PICKED + MARKS + ["".join(rng.choice(pool) if rng.random() < 0.7 else chr(rng.choice(
        [rng.randrange(0x20, 0x2000), rng.randrange(0x2000, 0x30000)])) for _ in range(rng.randrange(1, 14)))
        for _ in range(1500)]
    texts = [t for t in texts if not any(0xD800 <= ord(c) < 0xE000 for c in t)]
    assert_same(built, reference(path), path, texts)


def _refused(built, path, tmp_path):
    hex_file = tmp_path / "one.hex"
    hex_file.write_text(cpp.hex_lines(["a dog"]))
    proc = cpp.run([os.path.join(built, "kidrr_tool"), "ids", path, "0", str(hex_file)])
    assert proc.returncode == 1 and "KIDRR" not in proc.stdout, proc.stdout + proc.stderr
    return proc.stderr


UNSUPPORTED = {
    "normalizer_sequence": (lambda d: d.update(normalizer={"type": "Sequence", "normalizers": []}), "normalizer is 'Sequence'"),
    "no_normalizer": (lambda d: d.update(normalizer=None), "'normalizer' is missing"),
    "whitespace_pretokenizer": (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer is 'Whitespace'"),
    "bpe_model": (lambda d: d["model"].update(type="BPE"), "model is 'BPE'"),
    "roberta_processing": (lambda d: d.update(post_processor={"type": "RobertaProcessing"}), "post_processor is 'RobertaProcessing'"),
    "pair_only_template": (lambda d: d["post_processor"].update(single=d["post_processor"]["pair"]), "not [CLS] $A [SEP]"),
    "normalized_added_token": (lambda d: d["added_tokens"][0].update(normalized=True), "has normalized set"),
    "lstrip_added_token": (lambda d: d["added_tokens"][2].update(lstrip=True), "has lstrip set"),
    "unk_not_in_vocab": (lambda d: d["model"].update(unk_token="<unk>"), "is not in model.vocab"),
    "negative_id": (lambda d: d["model"]["vocab"].update(dog=-1), "is not a token id"),
    "strip_accents_string": (_norm(strip_accents="yes"), "strip_accents is not null/true/false"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_other_tokenizers_are_refused_with_a_typed_error(built, minilm, tmp_path, case):
    edit, message = UNSUPPORTED[case]
    err = _refused(built, _variant(minilm, tmp_path, edit), tmp_path)
    assert message in err and "BERT WordPiece tokenizers only" in err, err
