import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """Four real photos from scikit-image (no network, no Debian packages)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(np.ascontiguousarray(getattr(data, name)())).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_init_dir(tmp_path_factory):
    from op4ksr.models.presets import build_pipeline

    path = tmp_path_factory.mktemp("init") / "model"
    build_pipeline("tiny", seed=0).save_pretrained(path)
    return path
