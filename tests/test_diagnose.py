"""kidrr.diagnose: the local-alignment ranking against a per-pair loop, the attention profile's
extremes, and the whole report on a small split."""
import numpy as np
import pytest
import torch

from kidrr.data import Split
from kidrr.diagnose import attention_profile, diagnose, local_alignment
from kidrr.evaluate import encode_captions, encode_images, evaluate_split, tokenize_split
from kidrr.metrics import recall
from oracle import local_alignment as pair_local_alignment

CAPTIONS = ["a dog runs on the grass", "a red car", "two cats sleep", "a dog", "the red car runs on the grass ."]


def _split(model, n_images=4, regions=7, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_images, regions, model.cfg.feature_size)).astype(np.float32)
    return Split("dev", feats, [CAPTIONS[(i + j) % 5] for i in range(n_images) for j in range(5)])


def _encoded(model, vocab, split):
    images = encode_images(model, split.images)
    return images, encode_captions(model, tokenize_split(vocab, split.captions, model.cfg.max_caption_len))


def test_local_alignment_matches_a_per_pair_loop(tiny_model):
    model, vocab = tiny_model
    split = _split(model)
    images, captions = _encoded(model, vocab, split)
    got = local_alignment(model, images, captions, tile_captions=3)  # tiles of mixed caption lengths
    for i in range(len(split.images)):
        for j, n in enumerate(captions[2].tolist()):
            expected = pair_local_alignment(model, images[0][i], captions[0][j, :n])
            assert abs(got[i, j] - float(expected)) < 1e-5, (i, j)


@pytest.mark.parametrize("smooth, expected", [(0.0, 7.0), (1e4, 1.0)])
def test_attention_profile_extremes(tiny_model, smooth, expected):
    # lambda 0 spreads every word evenly over all 7 regions; a huge lambda puts it on one.
    model, vocab = tiny_model
    model.cfg.smooth_lambda = smooth
    split = _split(model)
    images, captions = _encoded(model, vocab, split)
    profile = attention_profile(model, images, captions, split.caption_image)
    assert profile["regions"] == 7
    assert profile["effective_regions_per_word"] == pytest.approx(expected, abs=1e-3)
    if smooth == 0.0:
        # Uniform attention: each attended vector is the normalised mean of the image's regions.
        mean = torch.nn.functional.normalize(images[0].mean(1), dim=-1)
        cos = (mean * images[1]).sum(-1)[split.caption_image]
        assert profile["cos_attended_to_image_global"] == pytest.approx(float(cos.mean()), abs=1e-5)


def test_diagnose_agrees_with_kidrr_eval_and_the_per_pair_loop(tiny_model):
    model, vocab = tiny_model
    split = _split(model, n_images=6)
    result = diagnose(model, vocab, split, progress=False)
    assert (result["images"], result["captions"]) == (6, 30)
    # The scorer's and the globals' rSum are what kidrr eval reports for the same split.
    evaluated = evaluate_split(model, vocab, split, progress=False)
    assert result["rsum"]["scorer"] == pytest.approx(evaluated["scorer"]["rsum"])
    assert result["rsum"]["globals"] == pytest.approx(evaluated["globals"]["rsum"])
    # The local alignment's rSum, from a matrix built pair by pair.
    images, captions = _encoded(model, vocab, split)
    by_pair = np.array([[float(pair_local_alignment(model, images[0][i], captions[0][j, :n]))
                         for j, n in enumerate(captions[2].tolist())] for i in range(6)])
    # Compared as matrices: with 6 images, near-ties between the tiled and the per-pair float sums can
    # swap two ranks (seen on an AMX machine), which an rSum comparison would call a failure.
    batched = local_alignment(model, images, captions)
    np.testing.assert_allclose(batched, by_pair, atol=1e-5)
    assert result["rsum"]["local_alignment"] == pytest.approx(recall(batched, split.caption_image)["rsum"])


def test_rank_correlation_ignores_monotone_maps():
    from kidrr.diagnose import rank_correlation
    x = np.random.default_rng(0).standard_normal((20, 30))
    assert rank_correlation(1 / (1 + np.exp(-5 * x)), x) == pytest.approx(1.0)
    assert rank_correlation(-x ** 3, x) == pytest.approx(-1.0)
