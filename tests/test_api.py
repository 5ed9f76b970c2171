"""The Python API: op4ksr.upscale() and Upscaler for repeated calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from doubles import InterpolationPipeline
from PIL import Image

import op4ksr
import op4ksr.api
from op4ksr.api import Upscaler


def test_upscale_accepts_pil_numpy_and_path(tmp_path: Path) -> None:
    pipe = InterpolationPipeline()
    rgb = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    from_pil = op4ksr.upscale(Image.fromarray(rgb), model=pipe)
    from_array = op4ksr.upscale(rgb, model=pipe)
    from_path = op4ksr.upscale(tmp_path / "in.png", model=pipe)
    assert from_pil.size == from_array.size == from_path.size == (52, 36)
    np.testing.assert_array_equal(np.asarray(from_pil), np.asarray(from_path))
    # Independent check of the pixels: torch bicubic ×4 of the same input, rounded.
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    ref = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic").clamp(0, 1)
    ref8 = np.rint(ref[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.abs(ref8.astype(int) - np.asarray(from_array).astype(int)).max() <= 1


def test_upscaler_loads_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []

    def fake_load(model=None, **kwargs):
        loads.append(model)
        return InterpolationPipeline()

    monkeypatch.setattr(op4ksr.api, "load_model", fake_load)
    upscaler = Upscaler("some/model/dir", device="cpu")
    for _ in range(3):
        assert op4ksr.upscale(np.zeros((4, 4, 3), np.uint8), scale=2, model=upscaler).size == (8, 8)
    assert loads == ["some/model/dir"]


def test_scale_outside_model_range_is_refused() -> None:
    upscaler = Upscaler(InterpolationPipeline(scale=4))
    for bad in (1, 5, 2.5):
        with pytest.raises(ValueError, match="scale must be an integer from 2"):
            upscaler(np.zeros((4, 4, 3), np.uint8), scale=bad)


def test_nan_in_half_precision_reruns_in_fp32_and_says_so() -> None:
    pipe = InterpolationPipeline(dtype=torch.float16, nan_in_half=True)
    upscaler = Upscaler(pipe)
    data = op4ksr.api.load_image(np.full((4, 4, 3), 128, np.uint8))
    result = upscaler.upscale_data(data, 4)
    assert np.isfinite(result.pixels).all() and result.pixels.shape == (16, 16, 3)
    assert pipe.dtype == torch.float32 and len(pipe.calls) == 2
    assert result.notes == ["non-finite output in float16: re-ran in float32"]


def test_nan_in_fp32_is_a_clear_failure() -> None:
    class AlwaysNaN(InterpolationPipeline):
        def __call__(self, images, tiled=False):
            return torch.full_like(super().__call__(images), float("nan"))

    with pytest.raises(op4ksr.api.ImageError, match="NaN/Inf"):
        Upscaler(AlwaysNaN())(np.zeros((4, 4, 3), np.uint8))


def test_missing_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(op4ksr.api.ModelLoadError) as info:
        Upscaler(str(tmp_path / "no-such-model"))
    assert "\n" not in str(info.value) and "no-such-model" in str(info.value)


@pytest.mark.slow
def test_tiny_preset_through_a_saved_folder(tmp_path: Path) -> None:
    presets = pytest.importorskip("op4ksr.models.presets")
    presets.build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "tiny")
    upscaler = Upscaler(str(tmp_path / "tiny"), device="cpu")
    out = upscaler(np.random.default_rng(0).integers(0, 256, (24, 40, 4), dtype=np.uint8), scale=3)
    assert (out.mode, out.size) == ("RGBA", (120, 72))


# --- in-memory inputs get the file path's limits (issue 24) -----------------------------------
def test_max_pixels_applies_to_pil_images_and_arrays_before_decoding():
    from op4ksr.io.images import ImageError

    pipe = InterpolationPipeline()  # records each call in pipe.calls
    upscaler = Upscaler(pipe)
    big = Image.new("RGB", (3000, 3000))
    with pytest.raises(ImageError, match="3000×3000 = 9,000,000 pixels exceeds the limit of 100"):
        upscaler(big, max_pixels=100)
    with pytest.raises(ImageError, match="exceeds the limit of 100"):
        upscaler(np.zeros((20, 20, 3), np.uint8), max_pixels=100)
    assert pipe.calls == []
    assert upscaler(Image.new("RGB", (10, 10)), max_pixels=100).size == (40, 40)  # at the limit: fine


@pytest.mark.parametrize("limit", [0, -5, 2.5, True])
def test_a_limit_that_is_no_limit_is_refused(tmp_path, limit):
    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(image)
    upscaler = Upscaler(InterpolationPipeline())
    with pytest.raises(ValueError, match="max_pixels must be a positive whole number"):
        upscaler(Image.new("RGB", (4, 4)), max_pixels=limit)
    with pytest.raises(ValueError, match="max_pixels must be a positive whole number"):
        upscaler.upscale_file(image, tmp_path / "out.png", max_pixels=limit)
    assert not (tmp_path / "out.png").exists()


def test_a_float_image_holding_nan_never_reaches_the_model():
    from op4ksr.io.images import ImageError

    pipe = InterpolationPipeline()  # records each call in pipe.calls
    values = np.full((8, 8), 0.5, np.float32)
    values[3, 4] = np.nan
    with pytest.raises(ImageError, match="32-bit float image holds NaN or Inf"):
        Upscaler(pipe)(Image.fromarray(values, mode="F"))
    assert pipe.calls == []
