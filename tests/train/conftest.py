import pytest
from tests_train_overrides import TINY_MODEL

TINY_OVERRIDES = TINY_MODEL + ["data.val_samples=3", "run.eval_every=0", "run.log_every=1"]


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY_OVERRIDES + [f"run.out_dir={tmp_path / 'run'}"]
