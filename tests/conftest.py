import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# The suite's budget on the 2-core CI machine (README: "under 15 minutes"). Every run prints its wall
# time; under CI=true a run over budget fails, so a slow test cannot creep in unnoticed.
SUITE_BUDGET_S = 900
_SUITE_START = time.monotonic()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    wall = time.monotonic() - _SUITE_START
    terminalreporter.write_line(f"suite wall time: {wall:.0f} s (budget {SUITE_BUDGET_S} s on 2 cores)")


def pytest_sessionfinish(session, exitstatus):
    wall = time.monotonic() - _SUITE_START
    if os.environ.get("CI") == "true" and wall > SUITE_BUDGET_S and exitstatus == 0:
        print(f"\nsuite took {wall:.0f} s, over its {SUITE_BUDGET_S} s budget: speed up or trim the slowest tests "
              f"(listed by --durations above)", file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture
def tiny_model():
    """A small random model and vocabulary (never the shipped checkpoint)."""
    import torch
    from kidrr.config import ModelConfig
    from kidrr.model import KIDRR
    from kidrr.tokenizer import Vocabulary
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a dog runs on the grass", "a red car", "two cats sleep"] * 4)
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=24, embed_size=32, sim_size=16,
                                    knowledge_nodes=4)).eval()
    return model, vocab


@pytest.fixture(scope="session")
def backbone_cache(tmp_path_factory):
    """A KIDRR_CACHE for the traced backbone graph kidrr features runs (never the user's ~/.cache)."""
    return str(tmp_path_factory.mktemp("kidrr-cache"))


@pytest.fixture
def in_backbone_cache(backbone_cache, monkeypatch):
    monkeypatch.setenv("KIDRR_CACHE", backbone_cache)
    return backbone_cache


@pytest.fixture(scope="session")
def features_data(tmp_path_factory, backbone_cache):
    """A kidrr features data folder (train: 4 photos, dev: 2), extracted once per test session."""
    from image_files import photo_folder, write_tsv
    from kidrr.images.features import extract_features
    saved = os.environ.get("KIDRR_CACHE")
    os.environ["KIDRR_CACHE"] = backbone_cache
    try:
        return _extract_features_data(tmp_path_factory, photo_folder, write_tsv, extract_features)
    finally:
        if saved is None:
            os.environ.pop("KIDRR_CACHE", None)
        else:
            os.environ["KIDRR_CACHE"] = saved


def _extract_features_data(tmp_path_factory, photo_folder, write_tsv, extract_features):
    root = tmp_path_factory.mktemp("features")
    folder = os.path.join(root, "photos")
    names = photo_folder(folder, 6, seed=5)
    out = os.path.join(root, "data")
    for split, part in (("train", names[:4]), ("dev", names[4:])):
        write_tsv(os.path.join(root, f"{split}.tsv"), part)
        extract_features(folder, os.path.join(root, f"{split}.tsv"), out, split, progress=False)
    return out


@pytest.fixture(scope="session")
def pixel_bundle(tmp_path_factory):
    """(bundle folder, checkpoint folder) of a tiny random KIDRR model on Lite0 features, exported once
    per session with the preprocessing and backbone graphs (and verified at export)."""
    import torch
    from kidrr.backbone import features_record
    from kidrr.checkpoint import save_checkpoint
    from kidrr.config import ModelConfig
    from kidrr.export.bundle import export_bundle
    from kidrr.model import KIDRR
    from kidrr.tokenizer import Vocabulary
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red circle", "a blue square on the grass", "two dogs play in the snow"] * 3)
    record = {k: v for k, v in features_record("efficientnet-lite0").items()}
    model = KIDRR(ModelConfig.small(vocab_size=len(vocab), feature_size=1280, embed_size=32, sim_size=16,
                                    knowledge_nodes=4, image_backbone=record)).eval()
    root = tmp_path_factory.mktemp("pixel-bundle")
    ckpt, bundle = os.path.join(root, "ckpt"), os.path.join(root, "bundle")
    save_checkpoint(ckpt, model, vocab)
    export_bundle(ckpt, bundle, progress=False, log=lambda m: None)
    return bundle, ckpt
