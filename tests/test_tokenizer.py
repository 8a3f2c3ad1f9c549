import pytest

from kidrr.errors import CheckpointError, InputError
from kidrr.tokenizer import END_ID, START_ID, UNK_ID, Vocabulary, tokenize


@pytest.mark.parametrize("text, tokens", [
    ("A Dog runs.", ["a", "dog", "runs", "."]),
    ("  two\tdogs\n", ["two", "dogs"]),
    ("dog's ball", ["dog", "'", "s", "ball"]),
    ("3-year-old", ["3", "-", "year", "-", "old"]),
    ("CAFÉ crème", ["cafÉ", "crème"]),          # ASCII-only lower-casing; non-ASCII stays in the word
    ("naïve,résumé!", ["naïve", ",", "résumé", "!"]),
    ("", []),
    ("...", [".", ".", "."]),
    ("東京 tower", ["東京", "tower"]),
])
def test_tokenize_rules(text, tokens):
    assert tokenize(text) == tokens


def test_vocabulary_counts_and_ids():
    caps = ["a dog", "a dog", "a dog", "a dog", "a cat"]
    vocab = Vocabulary.build(caps, min_count=4)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert set(vocab.words[4:]) == {"a", "dog"}
    assert vocab.encode("A cat dog") == [START_ID, vocab.index["a"], UNK_ID, vocab.index["dog"], END_ID]


def test_encode_rejects_empty_and_overlong():
    vocab = Vocabulary.build(["a dog"] * 4)
    with pytest.raises(InputError, match="empty"):
        vocab.encode("  \t ")
    with pytest.raises(InputError, match="max_caption_len"):
        vocab.encode("a " * 10, max_len=5)


def test_vocab_json_roundtrip_and_rejects_foreign(tmp_path):
    vocab = Vocabulary.build(["a dog on grass"] * 4)
    path = tmp_path / "vocab.json"
    vocab.save(str(path))
    assert Vocabulary.load(str(path)).words == vocab.words
    path.write_text('{"format": "other", "words": []}')
    with pytest.raises(CheckpointError, match="format"):
        Vocabulary.load(str(path))


def test_truncate_keeps_end():
    from kidrr.tokenizer import truncate
    assert truncate([1, 5, 6, 7, 2], 4) == [1, 5, 6, 2]
    assert truncate([1, 5, 2], 4) == [1, 5, 2]
