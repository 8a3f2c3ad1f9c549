"""Property test (hypothesis): the C++ tokenizer and encoder equal kidrr/tokenizer.py on random
Unicode text. The reference is the Python implementation; equality is exact (same tokens, same
ids, or the same refusal). One kidrr_tool process per example, texts travel hex-encoded.
"""
import os
import tempfile

from hypothesis import given, settings, strategies as st

import test_cpp_support as cpp
from kidrr.errors import InputError
from kidrr.tokenizer import Vocabulary, tokenize
from test_cpp_runtime import MAX_LEN, TRAIN_CAPTIONS

import pytest

# Any code point but surrogates (not encodable as UTF-8), plus text dense in the tokenizer's
# boundary cases: ASCII case, the six spaces and their look-alikes, punctuation, multi-byte words.
ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
EDGY_PIECES = st.one_of(st.sampled_from(list("aAzZ09 .,!'\t\n\r\v\f\x00\x1c\x1f\x7f\x80\x85\xa0\u2028\u3000éÉ日😀İẞ\u0301")),
                        st.sampled_from(sorted({w for c in TRAIN_CAPTIONS for w in c.split()})))
EDGY_TEXT = st.lists(EDGY_PIECES, max_size=16).map("".join)
TEXTS = st.lists(st.one_of(ANY_TEXT, EDGY_TEXT), min_size=1, max_size=20)


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


@pytest.fixture(scope="module")
def vocab_file():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "vocab.json")
        Vocabulary.build(TRAIN_CAPTIONS * 4).save(path)
        yield path


def _tool(built, *args, texts):
    with tempfile.NamedTemporaryFile("w", suffix=".hex", delete=False) as fh:
        fh.write(cpp.hex_lines(texts))
    try:
        proc = cpp.run([os.path.join(built, "kidrr_tool"), *args, fh.name])
    finally:
        os.unlink(fh.name)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(texts)
    return lines


@settings(max_examples=60, deadline=None)
@given(texts=TEXTS)
def test_cpp_tokens_equal_python_on_random_unicode(built, texts):
    for text, line in zip(texts, _tool(built, "tokens", texts=texts)):
        status, *hex_tokens = line.split()
        assert status == "OK", f"C++ refused valid UTF-8 {text!r}"
        assert [bytes.fromhex(t).decode("utf-8") for t in hex_tokens] == tokenize(text), repr(text)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.one_of(ANY_TEXT, EDGY_TEXT).map(lambda t: t.replace("\0", "")), min_size=1, max_size=20))
def test_cpp_ids_equal_python_on_random_unicode(built, vocab_file, texts):
    """Through the C ABI (kidrr_vocab_encode; C strings, so no NUL): ids, or the same refusal."""
    vocab = Vocabulary.load(vocab_file)
    for text, line in zip(texts, _tool(built, "ids", vocab_file, str(MAX_LEN), texts=texts)):
        try:
            want = "OK " + " ".join(map(str, vocab.encode(text, MAX_LEN)))
        except InputError:  # empty after tokenising, or longer than max_caption_len
            want = "ERR KIDRR_ERR_INPUT"
        assert line == want, repr(text)
