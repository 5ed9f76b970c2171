"""Haar wavelet sub-band loss: L1 on all four sub-bands with equal weight (as in Diffusion-4K)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from op4ksr.losses.base import Loss, register_loss


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level of the orthonormal 2D Haar transform: (LL, LH, HL, HH), each half size.

    Odd sizes are reflect-padded by one pixel first.
    """
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), mode="reflect")
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    lh = (a - b + c - d) / 2  # horizontal detail (differences along x)
    hl = (a + b - c - d) / 2  # vertical detail (differences along y)
    hh = (a - b - c + d) / 2
    return ll, lh, hl, hh


def wavelet_loss(pred: torch.Tensor, target: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """Mean of the L1 distances of every Haar sub-band, over ``levels`` levels (LL recursed)."""
    losses = []
    for _ in range(levels):
        bands_p, bands_t = haar_dwt(pred), haar_dwt(target)
        losses.extend(F.l1_loss(p, t) for p, t in zip(bands_p, bands_t))
        pred, target = bands_p[0], bands_t[0]
    return torch.stack(losses).mean()


@register_loss("wavelet")
class WaveletLoss(Loss):
    """Module form of :func:`wavelet_loss` (one level)."""

    order = 30

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return wavelet_loss(pred, target)
