"""Token-grid loss: phase means by hand, exact values for tiled patterns, zero for non-periodic errors."""

from __future__ import annotations

import math

import pytest
import torch
from skimage import data

from op4ksr.losses.combined import ImageLosses
from op4ksr.losses.token_grid import TokenGridLoss, phase_mean, token_grid_loss, windowed_phase_mean


def _photo() -> torch.Tensor:
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].double().div(255)[..., :256, :256]


def test_phase_mean_by_hand() -> None:
    # 4×5 image, period 2: the last column is dropped; phase (0,0) averages x[0,0], x[0,2], x[2,0], x[2,2].
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    g = phase_mean(x, period=2)
    assert g.shape == (1, 1, 2, 2)
    assert g[0, 0, 0, 0] == (0 + 2 + 10 + 12) / 4
    assert g[0, 0, 1, 1] == (6 + 8 + 16 + 18) / 4


def test_tiled_pattern_gives_its_variance() -> None:
    generator = torch.Generator().manual_seed(0)
    target = _photo()
    pattern = torch.randn(1, 3, 32, 32, generator=generator, dtype=torch.float64) / 255
    prediction = target + pattern.repeat(1, 1, 8, 8)
    centred = pattern - pattern.mean(dim=(-2, -1), keepdim=True)
    expected = centred.square().mean()
    assert token_grid_loss(prediction, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_offsets_and_off_period_errors_cost_nothing() -> None:
    target = _photo()
    # a colour offset is the k = 0 term, left to MSE
    assert token_grid_loss(target + 0.1, target).item() == pytest.approx(0.0, abs=1e-12)
    # a period-64 cosine over a whole number of periods has no component at k/32 → exactly 0,
    # although its MSE is large
    x = torch.arange(256, dtype=torch.float64)
    wave = (0.2 * torch.cos(2 * math.pi * x / 64))[None, None, None, :].expand(1, 3, 256, 256)
    assert token_grid_loss(target + wave, target).item() == pytest.approx(0.0, abs=1e-10)
    # the same amplitude at period 32 (a harmonic) costs amplitude² / 2
    wave32 = (0.2 * torch.cos(2 * math.pi * x / 32))[None, None, None, :].expand(1, 3, 256, 256)
    assert token_grid_loss(target + wave32, target).item() == pytest.approx(0.02, rel=1e-5)


def test_gradient_reaches_only_the_prediction() -> None:
    target = _photo().float().requires_grad_(True)
    prediction = (target.detach() + torch.rand_like(target) * 0.01).requires_grad_(True)
    TokenGridLoss()(prediction, target).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert target.grad is None


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="fewer than 2×2 periods"):
        token_grid_loss(torch.zeros(1, 3, 48, 64), torch.zeros(1, 3, 48, 64))
    with pytest.raises(ValueError, match="differ in shape"):
        token_grid_loss(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 96))


def test_image_losses_weights_the_term() -> None:
    target = _photo().float()
    prediction = target + (torch.arange(256.0) % 32 == 0).float() * 0.05
    losses = ImageLosses(mse=0.0, token_grid=10.0)
    total, terms = losses(prediction, target)
    assert set(terms) == {"token_grid"}
    assert total.item() == pytest.approx(10 * token_grid_loss(prediction, target).item(), rel=1e-6)


def test_window_sees_a_grid_whose_sign_flips_between_regions() -> None:
    # left half +pattern, right half −pattern: the whole-image phase mean cancels, 2×2-token windows don't
    generator = torch.Generator().manual_seed(1)
    target = _photo()
    pattern = torch.randn(1, 3, 32, 32, generator=generator, dtype=torch.float64) / 255
    tiled = pattern.repeat(1, 1, 8, 8)
    tiled[..., 128:] *= -1
    centred = pattern - pattern.mean(dim=(-2, -1), keepdim=True)
    assert token_grid_loss(target + tiled, target).item() == pytest.approx(0.0, abs=1e-12)
    assert token_grid_loss(target + tiled, target, window=2).item() == pytest.approx(
        centred.square().mean().item(), rel=1e-5)


def test_windowed_phase_mean_by_hand() -> None:
    # 1×1×8×8 image, period 2, windows of 2×2 periods (4×4 px): window (0,1), phase (0,0)
    # averages x[0,4], x[0,6], x[2,4], x[2,6] = 4, 6, 20, 22
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    g = windowed_phase_mean(x, period=2, window=2)
    assert g.shape == (1, 1, 2, 2, 2, 2)
    assert g[0, 0, 0, 1, 0, 0] == (4 + 6 + 20 + 22) / 4
    with pytest.raises(ValueError, match="at least 2 periods"):
        windowed_phase_mean(x, period=2, window=1)
