"""Token-harmonic notch: removes exactly what repeats with the token period, per window, and nothing else."""

from __future__ import annotations

import math

import pytest
import torch

from op4ksr.models.grid_fix import _spans, token_notch


def _smooth(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image (bilinear-upsampled noise), [1, 3, H, W] in float64."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, height // 16, width // 16, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


def _pattern(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64) * 0.01
    return p - p.mean(dim=(-2, -1), keepdim=True)


def test_spans_tile_from_zero_and_cover_the_remainder_on_the_period() -> None:
    assert _spans(256, 256) == [(0, 256, 0, 256)]
    assert _spans(96, 256) == [(0, 96, 0, 96)]
    # 320 = one 256 window + 64 px owned by a window whose statistics span the last 256 px
    assert _spans(320, 256) == [(0, 256, 0, 256), (64, 320, 256, 320)]
    assert _spans(512, 256) == [(0, 256, 0, 256), (256, 512, 256, 512)]


def test_a_tiled_grid_is_removed_exactly_per_window() -> None:
    # one pattern per image would leave both grids half in place; one per window removes each exactly
    reference = _smooth(512, 320)
    grid = torch.zeros_like(reference)
    # a different grid in each 256-px band of rows; columns are one window plus a 64-px remainder
    # whose statistics come from the last 256 px (same grid there)
    grid[..., :256, :] = _pattern(1).repeat(1, 1, 8, 10)
    grid[..., 256:, :] = _pattern(2).repeat(1, 1, 8, 10)
    restored = token_notch(reference + grid, reference.clone())
    torch.testing.assert_close(restored, reference, rtol=0, atol=1e-12)


def test_content_without_token_harmonics_is_untouched() -> None:
    reference = _smooth(256, 256)
    x = torch.arange(256, dtype=torch.float64)
    # period 64 over whole windows: no component at k/32, so nothing to remove
    detail = 0.05 * torch.cos(2 * math.pi * x / 64)[None, None, None, :] * torch.cos(2 * math.pi * x / 128)[None, None, :, None]
    # a colour offset is not a grid either
    image = reference + detail + 0.1
    torch.testing.assert_close(token_notch(image.clone(), reference), image, rtol=0, atol=1e-12)


def test_what_the_reference_already_has_is_kept() -> None:
    # the input's own 32-px structure (e.g. upscaled 8-px JPEG blocks) stays: only the *added* part goes
    reference = _smooth(256, 256) + _pattern(4).repeat(1, 1, 8, 8)
    added = _pattern(5).repeat(1, 1, 8, 8)
    torch.testing.assert_close(token_notch(reference + added, reference), reference, rtol=0, atol=1e-12)


def test_tiny_and_bad_inputs() -> None:
    tiny = torch.rand(1, 3, 32, 64)
    assert torch.equal(token_notch(tiny.clone(), torch.zeros_like(tiny)), tiny)  # one period: left alone
    with pytest.raises(ValueError, match="multiple of the period"):
        token_notch(torch.rand(1, 3, 70, 64), torch.rand(1, 3, 70, 64))
    with pytest.raises(ValueError, match="differ in shape"):
        token_notch(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 96))
    with pytest.raises(ValueError, match="at least 2 periods"):
        token_notch(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), window=1)


def test_pipeline_option_round_trips_and_overrides(tmp_path) -> None:
    from op4ksr.models.loading import from_pretrained
    from op4ksr.models.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    pipe.register_to_config(grid_fix="notch")
    pipe.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config.grid_fix == "notch"
    lr = torch.rand(1, 3, 40, 24)
    with_fix, without = loaded(lr), loaded(lr, grid_fix="none")
    assert with_fix.shape == without.shape == (1, 3, 160, 96)
    assert not torch.equal(with_fix, without)
    with pytest.raises(ValueError, match="grid_fix must be one of"):
        loaded(lr, grid_fix="blur")
    assert loaded.estimate(160, 96).decode_bytes > build_pipeline("tiny", seed=0).estimate(160, 96).decode_bytes
