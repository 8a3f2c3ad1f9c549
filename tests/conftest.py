import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


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
