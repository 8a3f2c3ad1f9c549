import json
import os

import numpy as np
import pytest
import torch

from kidrr.checkpoint import load_checkpoint
from kidrr.config import ModelConfig, TrainConfig
from kidrr.errors import KidrrError
from kidrr.model import KIDRR
from kidrr.synthetic import SyntheticConfig, make_synthetic
from kidrr.tokenizer import Vocabulary, pad_batch
from kidrr.train import Trainer, in_batch_recall, plateau, run, triplet_loss


def test_triplet_loss_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.0, 0.3, 0.7]])
    ids = torch.tensor([0, 1, 2])
    # image->caption hardest: row0 max(0.2+0.8-0.9)=0.1, row1 0.2+0.6-0.5=0.3, row2 0.2+0.3-0.7=0 ->0.4
    # caption->image hardest: col0 0.2+0.2-0.9=0, col1 0.2+0.8-0.5=0.5, col2 0.2+0.6-0.7=0.1 -> 0.6
    assert float(triplet_loss(scores, ids, 0.2, hardest=True)) == pytest.approx(1.0)
    all_neg = triplet_loss(scores, ids, 0.2, hardest=False)
    assert float(all_neg) == pytest.approx(0.1 + 0.3 + 0.5 + 0.1)
    # A repeated image is a true match, never a negative.
    same = torch.tensor([0, 0, 2])
    assert float(triplet_loss(scores, same, 0.2, hardest=True)) < float(triplet_loss(scores, ids, 0.2, hardest=True))


def test_constant_scores_sit_on_the_plateau():
    scores = torch.full((8, 8), 0.5)
    assert float(triplet_loss(scores, torch.arange(8), 0.2, hardest=True)) == pytest.approx(plateau(8, 0.2))


def test_a_few_hundred_steps_leave_the_plateau():
    """Hardest negatives from the first step on a fixed small batch: the loss must fall well below
    2 x batch x margin (the value of a collapsed, constant scorer)."""
    torch.manual_seed(0)
    split = make_synthetic("train", SyntheticConfig(train_images=16, regions=6, feature_size=16))
    vocab = Vocabulary.build(split.captions, min_count=1)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=16, embed_size=32, sim_size=16,
                                    knowledge_nodes=4, dropout=0.0))
    trainer = Trainer(model, vocab, TrainConfig(batch_size=16, lr=1e-3))
    idx = np.arange(0, 80, 5)  # one caption of each of the 16 images
    ids, lengths = pad_batch([vocab.encode(split.captions[i]) for i in idx])
    args = (torch.from_numpy(split.images[idx // 5]), torch.from_numpy(ids), torch.from_numpy(lengths),
            torch.from_numpy(idx // 5))
    first = trainer.step(*args, hardest=True)["hardest"]
    for _ in range(250):   # at most; it leaves the plateau after ~75 steps (stop there: the suite's time)
        out = trainer.step(*args, hardest=True)
        loss, gloss = out["hardest"], out["hardest_globals"]
        if loss < 0.25 * plateau(16, 0.2) and gloss < 0.5 * plateau(16, 0.2):
            break
    assert first > 0.5 * plateau(16, 0.2)
    assert loss < 0.25 * plateau(16, 0.2), (first, loss)
    assert gloss < 0.5 * plateau(16, 0.2)


def test_in_batch_recall_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.0, 0.3, 0.7]])
    # rows: 0 wins, 1 loses (0.6 > 0.5), 2 wins; columns: 0 wins, 1 loses (0.8), 2 wins (0.7 > 0.6)
    assert in_batch_recall(scores, torch.arange(3)) == pytest.approx(2 / 3)
    # image 1 repeated: (1, 2) is a true match, so row 1 no longer loses
    assert in_batch_recall(scores, torch.tensor([0, 1, 1])) == pytest.approx((3 / 3 + 2 / 3) / 2)


def test_switch_to_hardest_waits_until_they_are_informative(tiny_model):
    model, vocab = tiny_model
    trainer = Trainer(model, vocab, TrainConfig(warmup_epochs=1, hardest_switch_recall=0.5))
    assert not trainer.use_hardest()                 # warm-up epoch
    trainer.epoch = 1
    trainer.history = [{"hardest": False, "in_batch_recall_last": 0.15}]
    assert not trainer.use_hardest()                 # positives mostly lose: hardest would collapse
    trainer.history = [{"hardest": False, "in_batch_recall_last": 0.6}]
    assert trainer.use_hardest()
    trainer.history.append({"hardest": True, "in_batch_recall_last": 0.1})
    assert trainer.use_hardest()                     # never switches back
    trainer.tcfg.hardest_switch_recall = 0
    trainer.history = [{"hardest": False, "in_batch_recall_last": 0.15}]
    assert trainer.use_hardest()                     # the plain recipe: right after warm-up


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny data folder in the published layout (synthetic content)."""
    folder = tmp_path_factory.mktemp("data")
    cfg = SyntheticConfig(train_images=40, dev_images=10, test_images=10, regions=5, feature_size=12)
    for name in ("train", "dev", "test"):
        split = make_synthetic(name, cfg)
        np.save(folder / f"{name}_ims.npy", split.images.astype(np.float16))
        (folder / f"{name}_caps.txt").write_text("\n".join(split.captions) + "\n")
    return str(folder)


SMALL = ["embed_size=24", "sim_size=8", "knowledge_nodes=2", "word_dim=16"]


def test_train_writes_resumable_checkpoints(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    trainer = run(tiny_data, out, "small", SMALL, ["batch_size=16", "warmup_epochs=1", "hardest_switch_recall=0"],
                  epochs=2)
    assert [h["hardest"] for h in trainer.history] == [False, True]
    for sub in ("best", "last"):
        model, vocab, sha = load_checkpoint(os.path.join(out, sub))
        assert model.cfg.embed_size == 24 and model.cfg.feature_size == 12 and len(sha) == 64
    with pytest.raises(KidrrError, match="--resume"):
        run(tiny_data, out, "small", SMALL, epochs=3)
    resumed = run(tiny_data, out, "small", epochs=3, resume=True)
    assert len(resumed.history) == 3 and resumed.history[:2] == trainer.history
    history = json.load(open(os.path.join(out, "history.json")))["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    with open(os.path.join(out, "curve.png"), "rb") as fh:   # redrawn after every epoch
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_neighbour_groups_recover_clusters():
    """Tight clusters of 8 images: every group of 8 neighbours is exactly one cluster."""
    from kidrr.train import neighbour_groups
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, 32))
    g = np.repeat(centres, 8, axis=0) + 0.01 * rng.standard_normal((96, 32))
    g = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
    groups = neighbour_groups(g, rng, 8)
    assert sorted(np.concatenate(groups).tolist()) == list(range(96))
    assert sorted(sorted((m // 8).tolist()) for m in groups) == [[c] * 8 for c in range(12)]


def test_neighbour_order_is_one_epoch_of_every_caption():
    from kidrr.train import neighbour_order
    rng = np.random.default_rng(1)
    g = rng.standard_normal((37, 8)).astype(np.float32)   # 37: the last group of each round is short
    order = neighbour_order(g / np.linalg.norm(g, axis=1, keepdims=True), rng, 8)
    assert sorted(order.tolist()) == list(range(37 * 5))


def test_neighbour_batches_train(tiny_data, tmp_path):
    trainer = run(tiny_data, str(tmp_path / "run"), "small", SMALL,
                  ["batch_size=16", "warmup_epochs=0", "hardest_switch_recall=0", "neighbour_group=4"], epochs=1)
    assert trainer.history[0]["hardest"] and np.isfinite(trainer.history[0]["loss"])


def test_compare_curves_plot(tmp_path):
    from kidrr.curve import main as curve_main
    row = {"epoch": 1, "dev_rsum": 100.0, "dev_rsum_globals": 101.0}
    for name, rsum in (("a", 100.0), ("b", 150.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"history": [row, dict(row, epoch=2, dev_rsum=rsum)]}))
    curve_main(["--compare", f"A={tmp_path / 'a.json'}", f"B={tmp_path / 'b.json'}", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.json").write_text(json.dumps({"history": []}))
    with pytest.raises(SystemExit, match="no epochs"):
        curve_main(["--compare", f"E={tmp_path / 'empty.json'}", str(tmp_path / "d.png")])
