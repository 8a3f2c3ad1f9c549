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
