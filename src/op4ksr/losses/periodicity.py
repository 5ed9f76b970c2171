"""Autocorrelation-based periodicity loss L_AP (paper Sec. 3.2, Eq. 3).

The one-step Flux SR model leaves grid artifacts with the token period (32 px). L_AP splits
prediction and target into Q blocks (2×2 quadrants by default, so a grid confined to one
smooth region is not diluted by the rest of the image) and matches, per block, per channel and
along both axes, the unbiased normalised autocorrelation at a set of lags K = {8,…,40}.
Matching several evenly spaced lags, not only 32, asks the network to reproduce the target's
correlation structure instead of merely blurring the 32-px peak away.

    A_{i,c}^q(x, Δ) = [1/(N_pairs(Δ))] Σ x̃[p] x̃[p+Δ·e_i]  /  var(x̃)

with x̃ the block-channel minus its mean, the sum over all N_pairs(Δ) = rows·(cols−Δ)
(horizontal) or (rows−Δ)·cols (vertical) lagged pairs inside the block ("unbiased": divided
by the pair count, not the block size), and var the block-channel's (biased) variance, so
A(x, 0) = 1.

    L_AP = 1/(2·Q·C·|K|) Σ_q Σ_c Σ_Δ Σ_{i∈{h,v}} (A(x̂, Δ) − A(x, Δ))²,  averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from op4ksr.losses.base import Loss, register_loss

PAPER_LAGS: tuple[int, ...] = (8, 16, 24, 32, 40)


@dataclass(frozen=True)
class PeriodicityLossConfig:
    """Settings of L_AP; the defaults are the paper's.

    blocks: (rows, cols) of the block grid; Q = rows·cols (paper: 2×2 = 4 quadrants).
    lags: the lag set K in pixels (paper: 8, 16, 24, 32, 40).
    eps: added to the block variance. Keeps flat (zero-variance) blocks finite — their
        autocorrelation is then 0 — and is far below the variance of a ±1/255 pattern
        (≈1.5e-5), so real content is not damped.
    """

    blocks: tuple[int, int] = (2, 2)
    lags: tuple[int, ...] = PAPER_LAGS
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if len(self.blocks) != 2 or min(self.blocks) < 1:
            raise ValueError(f"blocks must be two positive integers, got {self.blocks!r}")
        if not self.lags or min(self.lags) < 1:
            raise ValueError(f"lags must be positive integers, got {self.lags!r}")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps!r}")


def _split_blocks(x: Tensor, blocks: tuple[int, int], max_lag: int) -> Tensor:
    """[B,C,H,W] → view [B,C,by,Hb,bx,Wb]; rows/cols left over by the split (< by or bx) are dropped."""
    by, bx = blocks
    height, width = x.shape[-2:]
    hb, wb = height // by, width // bx
    if hb <= max_lag or wb <= max_lag:
        raise ValueError(
            f"image {height}×{width} split into {by}×{bx} blocks gives {hb}×{wb} px blocks; "
            f"each block must be larger than the largest lag ({max_lag} px)"
        )
    x = x[..., : hb * by, : wb * bx]
    return x.unflatten(-2, (by, hb)).unflatten(-1, (bx, wb))


def block_autocorrelation(
    x: Tensor,
    lags: Sequence[int] = PAPER_LAGS,
    blocks: tuple[int, int] = (2, 2),
    eps: float = 1e-8,
) -> Tensor:
    """Unbiased normalised autocorrelation per block, channel, axis and lag.

    Args:
        x: images [B, C, H, W] (any float dtype; computed in fp32).
        lags: lags Δ in pixels.
        blocks: (rows, cols) of the block grid.
        eps: added to the block variance (see :class:`PeriodicityLossConfig`).

    Returns:
        fp32 tensor [B, C, Q, 2, |lags|] with Q = rows·cols in row-major block order and
        axis index 0 = horizontal (lag along the width), 1 = vertical (lag along the height).
    """
    if x.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    lags = tuple(int(lag) for lag in lags)
    # Autocast would run the products in half precision; the lagged sums over millions of
    # pixels need fp32, so compute outside autocast on an fp32 copy.
    with torch.autocast(device_type=x.device.type, enabled=False):
        blocks_view = _split_blocks(x.float(), blocks, max(lags))  # [B,C,by,Hb,bx,Wb]
        block_dims = (-3, -1)
        centred = blocks_view - blocks_view.mean(dim=block_dims, keepdim=True)
        variance = centred.square().mean(dim=block_dims) + eps  # [B,C,by,bx]
        per_axis: list[Tensor] = []
        for lagged_dim in (-1, -3):  # horizontal (along width), then vertical (along height)
            size = centred.shape[lagged_dim]
            values = []
            for lag in lags:
                head = centred.narrow(lagged_dim, 0, size - lag)
                tail = centred.narrow(lagged_dim, lag, size - lag)
                # mean() over the pairs = sum of lagged products / number of pairs (unbiased).
                values.append((head * tail).mean(dim=block_dims))
            per_axis.append(torch.stack(values, dim=-1))  # [B,C,by,bx,|K|]
        acf = torch.stack(per_axis, dim=-2) / variance[..., None, None]  # [B,C,by,bx,2,|K|]
    return acf.flatten(2, 3)


def periodicity_loss(
    prediction: Tensor,
    target: Tensor,
    config: PeriodicityLossConfig | None = None,
) -> Tensor:
    """L_AP (paper Eq. 3) between ``prediction`` and ``target`` images [B, C, H, W].

    The target side is detached, so gradients reach only the prediction. Returns an fp32
    scalar: the batch mean of Σ(ΔA)² / (2·Q·C·|K|).
    """
    config = config or PeriodicityLossConfig()
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    acf_pred = block_autocorrelation(prediction, config.lags, config.blocks, config.eps)
    with torch.no_grad():
        acf_target = block_autocorrelation(target.detach(), config.lags, config.blocks, config.eps)
    # Mean over [C, Q, 2, |K|] is exactly the 1/(2QC|K|) normalisation; then mean over batch.
    return (acf_pred - acf_target).square().mean()


@register_loss("periodicity")
class PeriodicityLoss(Loss):
    """Module form of :func:`periodicity_loss` (the paper's settings): ``[loss] periodicity = W``."""

    order = 40

    def __init__(self, config: PeriodicityLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or PeriodicityLossConfig()

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return periodicity_loss(prediction, target, self.config)

    @classmethod
    def check(cls, options: Mapping[str, Any], *, weight: float, crop_size: int) -> None:
        if weight > 0 and crop_size // 2 <= max(PAPER_LAGS):
            raise ValueError(f"data.crop_size: {crop_size} is too small for the periodicity loss "
                             f"(its 2×2 blocks must be larger than the largest lag, {max(PAPER_LAGS)} px): use ≥ 96")
