"""Token-harmonic notch: shrinks what stands out at the token harmonics, locally and seamlessly,
and leaves content without such peaks alone."""

from __future__ import annotations

import math

import pytest
import torch
from skimage import data

from op4ksr.eval.diagnostics.inspector import DEFAULT_THRESHOLD_DB, grid_score
from op4ksr.models.grid_fix import NOTCH_PASSES, notch_pass, periodic_spectrum, tent_weights, token_notch, window_starts


def _photo_at_sr_scale() -> torch.Tensor:
    """scikit-image's astronaut, a 256² crop bicubic ×4 (1024²): a real photo with the spectrum of
    a ×4 output."""
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].double() / 255
    return torch.nn.functional.interpolate(img[..., :256, :256], scale_factor=4, mode="bicubic").clamp(0, 1)


def _token_grid(rms: float, seed: int = 1) -> torch.Tensor:
    """A random zero-mean 32 × 32 pattern [1, 3, 32, 32] with the given RMS."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    p -= p.mean(dim=(-2, -1), keepdim=True)
    return p * (rms / p.square().mean().sqrt())


def _no_token_harmonics(height: int, width: int) -> torch.Tensor:
    """Content with periods 64 and 128 px only: every 128-px window holds whole periods and no
    energy at multiples of 1/32 cycle per pixel."""
    y = torch.arange(height, dtype=torch.float64)[:, None]
    x = torch.arange(width, dtype=torch.float64)[None, :]
    detail = 0.05 * torch.cos(2 * math.pi * x / 64) * torch.cos(2 * math.pi * y / 128) + 0.03 * torch.sin(2 * math.pi * x / 128)
    return (0.5 + detail).expand(1, 3, height, width).clone()


def test_window_starts_cover_the_axis_on_the_period() -> None:
    assert window_starts(320, 128, 64) == [0, 64, 128, 192]
    assert window_starts(352, 128, 64) == [0, 64, 128, 192, 224]  # last window ends at the edge
    assert window_starts(96, 96, 64) == [0]


def test_tent_weights_interpolate_between_window_centres() -> None:
    weights, index = tent_weights(256, 128, [0, 64, 128])  # centres 63.5, 127.5, 191.5
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(256, dtype=torch.float64))
    assert (weights >= 0).all()
    assert (index[:, 1] - index[:, 0] == 1).all()
    # pixel 95 lies 31.5 px past centre 0 of a 64-px gap
    assert index[95].tolist() == [0, 1]
    torch.testing.assert_close(weights[95], torch.tensor([1 - 31.5 / 64, 31.5 / 64], dtype=torch.float64))
    # before the first centre and after the last: that window alone
    assert weights[0].tolist() == [1.0, 0.0] and index[0].tolist() == [0, 1]
    assert weights[255].tolist() == [0.0, 1.0] and index[255].tolist() == [1, 2]


def test_periodic_spectrum_matches_the_explicit_poisson_solution() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 64, 96, generator=g, dtype=torch.float64)
    m, n = u.shape[-2:]
    # boundary image v (Moisan 2011) built pixel by pixel, then ŝ = v̂ / Laplacian symbol
    v = torch.zeros_like(u)
    v[:, 0, :] += u[:, -1, :] - u[:, 0, :]
    v[:, -1, :] -= u[:, -1, :] - u[:, 0, :]
    v[:, :, 0] += u[:, :, -1] - u[:, :, 0]
    v[:, :, -1] -= u[:, :, -1] - u[:, :, 0]
    q = 2 * math.pi * torch.arange(m, dtype=torch.float64)[:, None] / m
    r = 2 * math.pi * torch.arange(n, dtype=torch.float64)[None, :] / n
    symbol = 2 * torch.cos(q) + 2 * torch.cos(r) - 4
    symbol[0, 0] = 1
    expected = torch.fft.fft2(u) - torch.fft.fft2(v) / symbol
    expected[..., 0, 0] = 0
    torch.testing.assert_close(periodic_spectrum(u), expected[..., : n // 2 + 1], rtol=0, atol=1e-10)


def test_periodic_spectrum_removes_the_edge_cross_of_a_smooth_window() -> None:
    # a smooth ramp is no periodic texture, but its plain DFT has a bright cross along the axes
    # (the jump between opposite edges); the periodic component's has almost none
    y, x = torch.meshgrid(torch.arange(128.0), torch.arange(96.0), indexing="ij")
    ramp = (0.3 + 0.002 * x - 0.001 * y + 1e-5 * x * y).double()
    plain = torch.fft.rfft2(ramp).abs()
    periodic = periodic_spectrum(ramp).abs()
    assert periodic[1:, 0].max() < 0.05 * plain[1:, 0].max()
    assert periodic[0, 1:].max() < 0.05 * plain[0, 1:].max()


def test_a_grid_on_a_photo_is_removed_and_the_inspector_agrees() -> None:
    photo = _photo_at_sr_scale()
    for rms in (0.002, 0.004):  # ½ and 1 grey level of 255: faint, yet flagged
        gridded = photo + _token_grid(rms).repeat(1, 1, 32, 32)
        assert grid_score(photo[0].float()) < DEFAULT_THRESHOLD_DB < grid_score(gridded[0].float())
        assert grid_score(token_notch(gridded.clone())[0].float()) < DEFAULT_THRESHOLD_DB


def test_a_blotchy_latent_pixel_pattern_is_removed() -> None:
    # the compact DiT's other artifact: a 16-px pattern whose strength follows the content
    photo = _photo_at_sr_scale()
    g = torch.Generator().manual_seed(3)
    tile = torch.randn(1, 1, 16, 16, generator=g, dtype=torch.float64)
    tile = (tile - tile.mean()) / (tile - tile.mean()).square().mean().sqrt()
    envelope = torch.nn.functional.interpolate(torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64),
                                               size=photo.shape[-2:], mode="bicubic", align_corners=False)
    patterned = photo + 0.003 * tile.repeat(1, 3, 64, 64) * (0.25 + envelope.clamp(0, 1))
    assert grid_score(photo[0].float(), period=16) < DEFAULT_THRESHOLD_DB < grid_score(patterned[0].float(), period=16)
    restored = token_notch(patterned.clone())
    assert grid_score(restored[0].float(), period=16) < DEFAULT_THRESHOLD_DB  # measured 21.9 → 1.0 dB
    assert grid_score(restored[0].float()) < DEFAULT_THRESHOLD_DB


def test_a_photo_without_a_grid_is_barely_changed() -> None:
    photo = _photo_at_sr_scale()
    change = token_notch(photo.clone()) - photo
    psnr = -10 * math.log10(change.square().mean().item())
    # measured 47.2 dB: only harmonics 4× (then 8×) above their surroundings are touched, but a
    # strong straight edge puts a line through some of them (docs/MODEL_CARD.md)
    assert psnr > 44.0


def test_content_without_token_harmonics_is_left_alone() -> None:
    image = _no_token_harmonics(256, 320) + 0.1  # a colour offset is not a grid either
    # Not bit-exact: the periodic component's smooth part spreads a trace of every window's edge
    # jumps over all bins (measured 1.8e-4), far below one grey level (3.9e-3).
    torch.testing.assert_close(token_notch(image.clone()), image, rtol=0, atol=1e-3)


def test_a_local_grid_is_removed_where_it_is_and_nowhere_else() -> None:
    content = _no_token_harmonics(256, 512)
    grid = torch.zeros_like(content)
    grid[..., :128] = _token_grid(0.01).repeat(1, 1, 8, 4)
    # one pass of 128-px windows: those that start at ≥ 128 px see no grid; from the centre of
    # the first of them (191.5) on, only such windows contribute: left alone (as above)
    restored = notch_pass(content + grid, window=4, kappa=4.0)
    torch.testing.assert_close(restored[..., 192:], content[..., 192:], rtol=0, atol=1e-3)
    left = (restored - content)[..., :128]
    assert left.square().mean() < 0.1 * grid[..., :128].square().mean()  # measured 0.044
    # the default passes (256-px windows, then 128-px ones) reach at most 256 + 64 px further
    assert NOTCH_PASSES == ((8, 4.0), (4, 8.0))
    restored = token_notch(content + grid)
    torch.testing.assert_close(restored[..., 320:], content[..., 320:], rtol=0, atol=1e-3)
    left = (restored - content)[..., :128]
    assert left.square().mean() < 0.1 * grid[..., :128].square().mean()


def test_tiny_and_bad_inputs() -> None:
    tiny = torch.rand(1, 3, 32, 64)
    assert torch.equal(token_notch(tiny.clone()), tiny)  # one period: left alone
    with pytest.raises(ValueError, match="multiple of the period"):
        token_notch(torch.rand(1, 3, 70, 64))
    with pytest.raises(ValueError, match="at least 2 periods"):
        notch_pass(torch.rand(1, 3, 64, 64), window=1)
    with pytest.raises(ValueError, match="kappa"):
        notch_pass(torch.rand(1, 3, 64, 64), kappa=-1.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        token_notch(torch.rand(3, 64, 64))
    # windows smaller than the default (96 px side) still work and keep the shape
    odd = torch.rand(1, 3, 96, 160)
    assert token_notch(odd.clone()).shape == odd.shape


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
