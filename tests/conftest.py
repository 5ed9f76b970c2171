import os

import pytest
import torch

# Two cores are shared by the whole suite; deterministic single-threaded math also keeps
# bit-exact comparisons stable.
torch.set_num_threads(int(os.environ.get("OP4KSR_TEST_THREADS", "1")))


@pytest.fixture
def tiny_pipeline():
    from op4ksr.models.presets import build_pipeline

    return build_pipeline("tiny", seed=0)


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_pipeline):
    path = tmp_path / "tiny-model"
    tiny_pipeline.save_pretrained(path)
    return path
