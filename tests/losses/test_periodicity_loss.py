"""L_AP (paper Eq. 3): hand-computed autocorrelations, invariants and gradient flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from op4ksr.eval.diagnostics.synthetic import add_token_grid
from op4ksr.losses.periodicity import (
    PeriodicityLoss,
    PeriodicityLossConfig,
    block_autocorrelation,
    periodicity_loss,
)


def _photo() -> torch.Tensor:
    """skimage's astronaut as [1, 3, 512, 512] in [0, 1]."""
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].double().div(255).float()


def test_hand_computed_ramp_rows() -> None:
    # Every row is 1 2 3 4: centred −1.5 −0.5 0.5 1.5, variance 1.25.
    # horizontal lag 1: (0.75 − 0.25 + 0.75)/3 pairs = 5/12 → /1.25 = 1/3
    # horizontal lag 2: (−0.75 − 0.75)/2 = −0.75 → −0.6;  lag 3: −2.25/1 → −1.8
    # vertical: rows identical, so every lag gives mean(x̃²)/var = 1.
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 4)[None, None]
    acf = block_autocorrelation(x, lags=(1, 2, 3), blocks=(1, 1), eps=1e-12)
    assert acf.shape == (1, 1, 1, 2, 3)
    torch.testing.assert_close(acf[0, 0, 0, 0], torch.tensor([1 / 3, -0.6, -1.8]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(acf[0, 0, 0, 1], torch.ones(3), rtol=1e-6, atol=1e-6)


def test_hand_computed_alternating_columns_per_block() -> None:
    # Columns alternate +1/−1 (mean 0, var 1): horizontal A = (−1)^Δ; rows identical: vertical A = 1.
    # Left half uses amplitude 3 to show the variance normalisation removes scale.
    row = np.tile([1.0, -1.0], 6)
    row[:6] *= 3.0
    x = torch.tensor(np.tile(row, (8, 1)), dtype=torch.float32)[None, None]
    acf = block_autocorrelation(x, lags=(1, 2, 3), blocks=(2, 2), eps=1e-12)
    assert acf.shape == (1, 1, 4, 2, 3)
    expected_h = torch.tensor([-1.0, 1.0, -1.0]).expand(4, 3)
    torch.testing.assert_close(acf[0, 0, :, 0], expected_h, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(acf[0, 0, :, 1], torch.ones(4, 3), rtol=1e-6, atol=1e-6)


def test_matches_loop_reference_with_leftover_rows() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 43, 50))  # 43 and 50 are not multiples of the 2×3 grid: remainder dropped
    lags = (1, 4, 7)
    acf = block_autocorrelation(torch.from_numpy(img), lags=lags, blocks=(2, 3), eps=0.0).double()
    hb, wb = 43 // 2, 50 // 3
    for b in range(2):
        for c in range(3):
            for q in range(6):
                by, bx = divmod(q, 3)
                blk = img[b, c, by * hb : (by + 1) * hb, bx * wb : (bx + 1) * wb]
                blk = blk - blk.mean()
                var = (blk**2).mean()
                for k, lag in enumerate(lags):
                    h = sum(blk[r, j] * blk[r, j + lag] for r in range(hb) for j in range(wb - lag))
                    v = sum(blk[r, j] * blk[r + lag, j] for r in range(hb - lag) for j in range(wb))
                    assert acf[b, c, q, 0, k].item() == pytest.approx(h / (hb * (wb - lag)) / var, abs=2e-6)
                    assert acf[b, c, q, 1, k].item() == pytest.approx(v / ((hb - lag) * wb) / var, abs=2e-6)


def test_normalisation_is_one_over_2QCK() -> None:
    rng = np.random.default_rng(1)
    pred = torch.from_numpy(rng.random((1, 2, 96, 96))).float()
    target = torch.from_numpy(rng.random((1, 2, 96, 96))).float()
    config = PeriodicityLossConfig(blocks=(2, 2), lags=(8, 16, 24, 32, 40))
    a = block_autocorrelation(pred, config.lags, config.blocks, config.eps)
    b = block_autocorrelation(target, config.lags, config.blocks, config.eps)
    q, c, k = 4, 2, 5
    expected = (a - b).square().sum() / (2 * q * c * k)
    torch.testing.assert_close(periodicity_loss(pred, target, config), expected)


def test_zero_for_identical_inputs() -> None:
    photo = _photo()
    assert periodicity_loss(photo, photo.clone()).item() == 0.0


def test_grid_on_photo_is_penalised_more_than_noise_of_same_mse() -> None:
    photo_u8 = data.astronaut()
    photo = _photo()
    gridded = torch.from_numpy(add_token_grid(photo_u8, period=32, amplitude=2 / 255)).permute(2, 0, 1)[None]
    gridded = gridded.double().div(255).float()
    mse = (gridded - photo).square().mean()
    assert mse.item() == pytest.approx((2 / 255) ** 2, rel=0.1)  # only clipped pixels lose the grid

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(photo.shape, generator=generator)
    noisy = photo + noise * (mse.sqrt() / noise.square().mean().sqrt())

    grid_loss = periodicity_loss(gridded, photo).item()
    noise_loss = periodicity_loss(noisy, photo).item()
    assert grid_loss > 0.0
    assert grid_loss > 5 * noise_loss


def test_gradient_reaches_only_prediction() -> None:
    photo = _photo()[..., :128, :128]
    pred = (photo + 0.01 * torch.randn_like(photo)).requires_grad_(True)
    target = photo.clone().requires_grad_(True)
    loss = PeriodicityLoss()(pred, target)
    loss.backward()
    assert target.grad is None
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_flat_blocks_are_finite_with_finite_gradient() -> None:
    flat = torch.full((2, 3, 96, 96), 0.5)
    pred = flat.clone().requires_grad_(True)
    loss = periodicity_loss(pred, flat)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(pred.grad).all()
    # A flat target against a textured prediction: finite, positive.
    textured = (flat + 0.1 * torch.randn_like(flat)).requires_grad_(True)
    loss = periodicity_loss(textured, flat)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(textured.grad).all()


def test_batched_is_mean_of_per_image_losses() -> None:
    rng = np.random.default_rng(2)
    pred = torch.from_numpy(rng.random((3, 3, 100, 90))).float()
    target = torch.from_numpy(rng.random((3, 3, 100, 90))).float()
    per_image = torch.stack([periodicity_loss(pred[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(periodicity_loss(pred, target), per_image.mean())


def test_fp32_under_autocast_and_half_inputs() -> None:
    photo = _photo()[..., :128, :128]
    noisy = photo + 0.02 * torch.randn_like(photo)
    reference = periodicity_loss(noisy, photo)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = periodicity_loss(noisy, photo)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference)
    half = periodicity_loss(noisy.bfloat16(), photo.bfloat16())
    assert half.dtype == torch.float32


def test_rejects_blocks_smaller_than_largest_lag() -> None:
    with pytest.raises(ValueError, match="larger than the largest lag"):
        periodicity_loss(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))  # 32-px blocks, lag 40
    with pytest.raises(ValueError, match="differ in shape"):
        periodicity_loss(torch.zeros(1, 1, 96, 96), torch.zeros(1, 1, 96, 97))
