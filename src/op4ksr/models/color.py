"""Colour anchoring to the LR image (users.md: "keep the LR's low frequencies available as a
colour anchor"; StableSR's wavelet colour fix).

A one-step generator can shift colours; the bicubic-upscaled LR has the right colours at low
frequencies. ``wavelet`` keeps the SR output's high-frequency bands and takes the lowest band
from the LR; ``adain`` matches per-channel mean and standard deviation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("none", "wavelet", "adain")


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3×3 binomial blur with holes (à trous), replicate-padded, per channel.

    Computed separably, [1, 2, 1]/4 along rows then columns, as shifted sums: equal to the 3×3
    depthwise convolution (replicate padding commutes with a per-row filter) and about 4× faster
    on a CPU at 4096² (``benchmarks/startup.py``, docs/PERFORMANCE.md).
    """
    d = dilation
    p = F.pad(x, (d, d, 0, 0), mode="replicate")
    x = (p[..., :, : -2 * d] + p[..., :, 2 * d:]).add_(p[..., :, d:-d], alpha=2.0)
    p = F.pad(x, (0, 0, d, d), mode="replicate")
    del x
    x = (p[..., : -2 * d, :] + p[..., 2 * d:, :]).add_(p[..., d:-d, :], alpha=2.0)
    return x.mul_(1.0 / 16.0)


def low_frequency(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The residual low band after ``levels`` à-trous wavelet levels (dilations 1, 2, 4, …)."""
    for i in range(levels):
        x = _blur(x, 2**i)
    return x


def wavelet_color_fix(sr: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """High frequencies of ``sr`` + low frequencies of ``reference`` (same size).

    ``sr − low(sr) + low(reference)`` is computed as ``sr + low(reference − sr)``: the low-pass
    is linear, so one full-size low-pass instead of two (equal to float rounding, ≤ 3e-7).
    """
    return sr + low_frequency(reference - sr, levels)


def adain_color_fix(sr: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image, per-channel mean/std of ``sr`` matched to ``reference``."""
    dims = (-2, -1)
    mu_s, sd_s = sr.mean(dims, keepdim=True), sr.std(dims, keepdim=True)
    mu_r, sd_r = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True)
    return (sr - mu_s) / (sd_s + eps) * sd_r + mu_r


def apply_color_fix(sr: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    if method == "none":
        return sr
    if method == "wavelet":
        return wavelet_color_fix(sr, reference)
    if method == "adain":
        return adain_color_fix(sr, reference)
    raise ValueError(f"unknown colour fix {method!r}; choose one of {', '.join(COLOR_FIXES)}")
