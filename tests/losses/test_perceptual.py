"""LPIPS / DISTS training losses and their networks (op4ksr.nets.perceptual): frozen,
differentiable, offline assets, clear error when missing."""

from __future__ import annotations

import pytest
import torch

from op4ksr import assets
from op4ksr.losses import perceptual
from op4ksr.nets import perceptual as nets


def test_missing_asset_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("OP4KSR_CACHE", str(tmp_path))
    with pytest.raises(assets.AssetMissingError, match="op4ksr assets fetch vgg16"):
        perceptual.LPIPSLoss()
    with pytest.raises(assets.AssetMissingError, match="op4ksr assets fetch vgg16"):
        perceptual.DISTSLoss()


def test_vgg_taps_shapes_without_weights():
    taps = nets.VGG16Features("max")(torch.zeros(1, 3, 64, 48))
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 64, 48), (128, 32, 24), (256, 16, 12), (512, 8, 6), (512, 4, 3)]
    alex = nets.AlexNetFeatures()(torch.zeros(1, 3, 64, 64))
    # 64 -> conv11/4 (pad 2): 15 -> pool 3/2: 7 -> pool: 3
    assert [tuple(t.shape[1:]) for t in alex] == [(64, 15, 15), (192, 7, 7), (384, 3, 3), (256, 3, 3), (256, 3, 3)]


def test_l2pool_of_constant_is_constant_inside():
    pool = nets.L2Pool(2)
    out = pool(torch.full((1, 2, 8, 8), 3.0))
    assert out.shape == (1, 2, 4, 4)
    # Hann [0.5,1,0.5]^2/4 sums to 1: sqrt(sum w·9) = 3 away from the zero padding.
    torch.testing.assert_close(out[..., 1:, 1:], torch.full((1, 2, 3, 3), 3.0))
    # Top-left output sees one padded row and column: weight 1 - (0.25+0.25-0.0625) = 0.5625.
    assert out[0, 0, 0, 0].item() == pytest.approx((9 * 0.5625) ** 0.5, abs=1e-5)


@pytest.mark.parametrize("loss_cls", [perceptual.LPIPSLoss, perceptual.DISTSLoss])
def test_loss_is_frozen_and_differentiable(with_assets, loss_cls):
    torch.manual_seed(0)
    loss = loss_cls()
    assert all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not any(m.training for m in loss.modules() if m is not loss)  # stays in eval mode
    target = torch.rand(2, 3, 64, 64)
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    value = loss(pred, target)
    assert value.ndim == 0 and value.item() > 0
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-5)


def test_lpips_loss_gradient_descent_reduces_it(with_assets):
    torch.manual_seed(0)
    loss = perceptual.LPIPSLoss()
    target = torch.rand(1, 3, 48, 48)
    pred = torch.rand(1, 3, 48, 48, requires_grad=True)
    opt = torch.optim.Adam([pred], lr=0.05)
    start = loss(pred, target).item()
    for _ in range(5):
        opt.zero_grad()
        loss(pred, target).backward()
        opt.step()
    assert loss(pred, target).item() < start


def test_user_weights_path_wins(with_assets, tmp_path, monkeypatch):
    src = assets.asset_path("vgg16")
    monkeypatch.setenv("OP4KSR_CACHE", str(tmp_path / "empty"))
    net = nets.LPIPSNet("vgg16", weights=src)
    x = torch.rand(1, 3, 32, 32)
    assert net(x, x).item() == pytest.approx(0.0, abs=1e-6)
