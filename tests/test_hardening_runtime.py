"""Runtime misuse, NaN from finite input (every backend, through the runner interface), and the
bench handling data exactly as kidrr eval does."""
import numpy as np
import pytest

import test_runtime_helpers as helpers
from kidrr.errors import InputError
from kidrr.runtime import open_bundle
from kidrr.runtime.runner import Runner


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    ck = helpers.small_checkpoint(root / "ckpt")
    return helpers.make_bundle(ck, root / "bundle"), ck


@pytest.fixture(scope="module")
def rt(made):
    with open_bundle(made[0], threads=1) as r:
        yield r


# ---- misuse ----------------------------------------------------------------------------
def test_score_and_search_refuse_what_is_not_a_gallery(rt):
    captions = rt.encode_texts(["a dog runs"])
    gallery = rt.encode_images(helpers.random_features(2))
    for call in (lambda: rt.score(None, captions), lambda: rt.score(captions, captions),
                 lambda: rt.score(gallery, gallery), lambda: rt.search_text("a dog", 1, gallery=np.zeros(3))):
        with pytest.raises(InputError, match="expected a (Gallery|list of caption strings)"):
            call()


def test_unknown_open_bundle_option(made):
    with pytest.raises(InputError, match=r"takes no option\(s\) \['thread'\]"):
        open_bundle(made[0], thread=2)


def test_spin_is_a_bool_and_changes_no_number(made, rt):
    with pytest.raises(InputError, match="spin must be True or False"):
        open_bundle(made[0], spin="yes")
    feats = helpers.random_features(6, seed=4)
    with open_bundle(made[0], threads=2, spin=True) as spinning, open_bundle(made[0], threads=2) as sleeping:
        a = spinning.score(spinning.encode_images(feats), ["a dog runs", "two cats"])
        b = sleeping.score(sleeping.encode_images(feats), ["a dog runs", "two cats"])
    np.testing.assert_array_equal(a, b)      # how idle threads wait is not arithmetic


def test_bad_caption_policy_fails_at_open(made):
    for kw in ({"on_long": "cut"}, {"on_unknown": "skip"}):
        with pytest.raises(InputError, match="must be one of"):
            open_bundle(made[0], **kw)


def test_retriever_after_close(made):
    r = open_bundle(made[0], threads=1)
    gallery = r.encode_images(helpers.random_features(2))
    r.close()
    for call in (lambda: r.encode_images(helpers.random_features(2)), lambda: r.encode_texts(["a dog"]),
                 lambda: r.score(gallery, ["a dog"])):
        with pytest.raises(InputError, match="was closed"):
            call()


@pytest.mark.parametrize("features, match", [
    ([[[0.0] * 24] * 5, [[0.0] * 24] * 4], "rectangular"), (None, "missing"), ([["a"] * 24] * 5, "3-D")])
def test_ragged_or_missing_features(rt, features, match):
    with pytest.raises(InputError, match=match):
        rt.encode_images(features)


# ---- finite input, non-finite output ------------------------------------------------
@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_overflowing_features_raise_instead_of_nan_scores(made, backend):
    options = {"checkpoint": made[1]} if backend == "torch" else {}
    with open_bundle(made[0], backend=backend, threads=1, **options) as r:
        feats = helpers.random_features(3)
        feats[1] = 3e38              # finite (float32 max 3.4e38), but overflows inside the encoder
        assert np.isfinite(feats).all()
        with pytest.raises(InputError, match=r"image encoder returned NaN/inf for rows \[1\].*from finite input"):
            r.encode_images(feats)
        ok = r.encode_images(helpers.random_features(3))     # the same call on ordinary features passes
        assert np.isfinite(ok.locals).all()


def test_every_backend_gets_the_check(made):
    """A backend written later inherits the check without calling anything: the runner interface does it."""
    from kidrr.runtime.bundle import load_bundle

    class Broken(Runner):
        name = "broken"

        def encode_images(self, features):
            return np.full((len(features), 5, 4), np.nan, np.float32), np.zeros((len(features), 4), np.float32)

        def encode_texts(self, ids, lengths):
            raise NotImplementedError

        def score(self, *a):
            return np.array([[np.inf]], np.float32)

    b = Broken(load_bundle(made[0]))
    with pytest.raises(InputError, match="image encoder returned NaN/inf"):
        b.encode_images(np.ones((2, 5, 24), np.float32))
    with pytest.raises(InputError, match="similarity graph returned NaN/inf"):
        b.score(np.ones((1, 5, 4), np.float32), np.ones((1, 4), np.float32), np.ones((1, 2, 4), np.float32),
                np.ones((1, 4), np.float32), np.array([2]))
    b.close()
    with pytest.raises(InputError, match="was closed"):
        b.encode_images(np.ones((2, 5, 24), np.float32))


# ---- the bench scores data exactly as kidrr eval --------------------------------------
def _split_with_odd_captions():
    from kidrr.data import Split
    rng = np.random.default_rng(3)
    captions = [" ".join(rng.choice(helpers.CAPTIONS[i % 6].split(), 3)) for i in range(50)]
    captions[7] = "zebra quokka xylophone"          # every word unknown to the vocabulary
    captions[12] = " ".join(["dog"] * 30)           # longer than max_caption_len 12
    return Split("test", helpers.random_features(10), captions)


def test_bench_full_retrieval_equals_kidrr_eval(made):
    """The bench's full retrieval (runtime, evaluation policy) against kidrr eval's evaluate_split on
    the same checkpoint, with an all-unknown and an over-long caption: the same recall, exactly."""
    import warnings
    from kidrr.bench.retrieval import full_retrieval
    from kidrr.bench.worker import _open
    from kidrr.checkpoint import load_checkpoint
    from kidrr.evaluate import evaluate_split
    split = _split_with_odd_captions()
    spec = {"bundle": made[0], "backend": "torch", "threads": 1, "checkpoint": made[1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the over-long caption's truncation warning
        full, _ = full_retrieval(_open(spec), split, "5fold")
    model, vocab, _ = load_checkpoint(made[1])
    expected = evaluate_split(model, vocab, split, "5fold", progress=False)
    assert full["folds"] == [[0, 2], [2, 4], [4, 6], [6, 8], [8, 10]] and expected["folds"] == 5
    assert full["recall"] == pytest.approx(expected["scorer"], abs=1e-9)


def test_runtime_evaluation_policy_gives_evaluation_ids(made):
    from kidrr.evaluate import tokenize_split
    from kidrr.runtime.captions import tokenize_captions
    from kidrr.tokenizer import pad_batch
    with open_bundle(made[0], threads=1) as r:
        vocab, limit = r.bundle.vocab, r.bundle.max_caption_len
    caps = _split_with_odd_captions().captions
    with pytest.warns(UserWarning, match="truncated"):
        ids, lengths = tokenize_captions(vocab, caps, limit, on_long="truncate", on_unknown="keep")
    ref_ids, ref_lengths = pad_batch(tokenize_split(vocab, caps, limit))
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(lengths, ref_lengths)
