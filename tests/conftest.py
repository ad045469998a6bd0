import os

import pytest
import torch

from stamp.tiny import build_tiny_model

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("STAMP_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_pair():
    """(the tiny random model, its processor), built once."""
    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_pair):
    return tiny_pair[0]


@pytest.fixture(scope="session")
def tiny_processor(tiny_pair):
    return tiny_pair[1]
