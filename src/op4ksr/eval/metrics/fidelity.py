"""PSNR-Y and SSIM-Y with the SR literature's (MATLAB/BasicSR) conventions, in float64."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from op4ksr.eval.metrics.base import Metric, quantize_8bit, register_metric, rgb_to_y, shave


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    # The 2-D Gaussian is separable: two 1-D passes equal the 11x11 window, ~5x cheaper.
    x = F.conv2d(x, taps.view(1, 1, -1, 1))
    return F.conv2d(x, taps.view(1, 1, 1, -1))


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Wang et al. SSIM map of ``[B,H,W]`` images ('valid' region, 11x11 Gaussian σ 1.5), float64."""
    taps = _gaussian_taps().to(x.device)
    if min(x.shape[-2:]) < taps.numel():
        raise ValueError(f"SSIM needs images of at least {taps.numel()} pixels per side, got {tuple(x.shape[-2:])}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    x, y = x[:, None].to(torch.float64), y[:, None].to(torch.float64)
    mx, my = _gaussian_valid(x, taps), _gaussian_valid(y, taps)
    sxx = _gaussian_valid(x * x, taps) - mx**2
    syy = _gaussian_valid(y * y, taps) - my**2
    sxy = _gaussian_valid(x * y, taps) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))


class _YMetric(Metric):
    full_reference = True

    def __init__(self, crop_border: int | None = None, scale: int = 4, quantize: bool = True) -> None:
        self.crop_border = scale if crop_border is None else crop_border
        self.quantize = quantize

    def _y_pair(self, images: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prep = quantize_8bit if self.quantize else (lambda t: t.to(torch.float64).clamp(0, 1) * 255)
        return (
            shave(rgb_to_y(prep(images)), self.crop_border),
            shave(rgb_to_y(prep(reference)), self.crop_border),
        )


@register_metric
class PSNRY(_YMetric):
    """PSNR (dB) on the Y channel; ``inf`` for identical images."""

    name = "psnr_y"
    lower_better = False

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        assert reference is not None
        y, r = self._y_pair(images, reference)
        mse = ((y - r) ** 2).mean(dim=(1, 2))
        return 10 * torch.log10(255.0**2 / mse)


@register_metric
class SSIMY(_YMetric):
    """SSIM on the Y channel (Gaussian 11×11, σ 1.5)."""

    name = "ssim_y"
    lower_better = False

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        assert reference is not None
        y, r = self._y_pair(images, reference)
        return ssim_map(y, r).mean(dim=(1, 2, 3))


@register_metric
class DeltaE(Metric):
    """Mean CIEDE2000 colour difference (ΔE00) between 8-bit sRGB images, on a shaved border.

    Colour fidelity, which PSNR-Y cannot see: a network that turns purple olive green keeps its
    luma PSNR but not its ΔE. Below ≈ 1 is invisible, 2–3 is noticed side by side.
    """

    name = "delta_e"
    lower_better = True
    full_reference = True

    def __init__(self, crop_border: int | None = None, scale: int = 4) -> None:
        self.crop_border = scale if crop_border is None else crop_border

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        from skimage.color import deltaE_ciede2000, rgb2lab

        assert reference is not None
        values = []
        for img, ref in zip(quantize_8bit(images), quantize_8bit(reference), strict=True):
            a = shave(img, self.crop_border).permute(1, 2, 0).cpu().numpy() / 255.0
            b = shave(ref, self.crop_border).permute(1, 2, 0).cpu().numpy() / 255.0
            values.append(float(deltaE_ciede2000(rgb2lab(a), rgb2lab(b)).mean()))
        return torch.tensor(values, dtype=torch.float64)
