"""Token-grid loss: the error's Fourier power at the harmonics of the token period.

Why it exists (beyond the paper): at compact scale the one-step DiT leaves a 32-px grid whose
amplitude is about 1/255 (docs/MODEL_CARD.md). Its share of the MSE is ~1 %, and on 256² training
crops its share of the autocorrelation that L_AP matches is as small, so neither term pulls hard on
it, while the inspector (whitened spectra over a whole 1024² image) sees it at 10–20 dB.

Averaging a signal over all positions with the same phase modulo P keeps exactly its Fourier
components at frequencies k/P (k = 0 … P−1) and cancels every other one. So the *phase mean* of
the error e = x̂ − x,

    G[c, u, v] = mean over all (i, j) of e[c, i·P + u, j·P + v],   u, v ∈ [0, P),

minus its own mean (the k = 0 term, a plain colour offset that MSE already handles), is the part
of the error that repeats with the token period, and

    L_grid = mean_{b,c,u,v} (G − mean G)²

is its power: 0 for any error without a period-P component, whatever its size, and
var(pattern) for a tiled pattern. By Parseval it is the part of the MSE carried by the harmonic
frequency bins, so a weight w on it multiplies the MSE's weight *at those bins only* by 1 + w,
independently of the crop size. It reads the same frequencies the inspector scores, on the
error instead of the output, so real image content at those frequencies is not penalised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from op4ksr.losses.base import Loss, register_loss

# One definition of the phase mean for the loss (training) and the notch (inference).
from op4ksr.models.grid_fix import TOKEN_PERIOD, phase_mean

__all__ = ["TOKEN_PERIOD", "TokenGridLoss", "phase_mean", "token_grid_loss", "windowed_phase_mean"]


def windowed_phase_mean(x: Tensor, period: int = TOKEN_PERIOD, window: int = 0) -> Tensor:
    """Phase means inside windows of ``window × window`` periods: [B, C, wy, wx, period, period].

    ``window = 0`` takes the whole image as one window. Pixels beyond the last whole window are dropped.
    """
    if window <= 0:
        return phase_mean(x, period)[:, :, None, None]
    if window < 2:
        raise ValueError(f"window must be 0 (whole image) or at least 2 periods, got {window}")
    side = window * period
    height, width = x.shape[-2:]
    wy, wx = height // side, width // side
    if wy < 1 or wx < 1:
        raise ValueError(f"image {height}×{width} is smaller than one window of {side} px")
    x = x[..., : wy * side, : wx * side]
    # [B, C, wy, window, period, wx, window, period] → mean over the tokens of each window
    x = x.unflatten(-2, (wy, window, period)).unflatten(-1, (wx, window, period))
    return x.mean(dim=(3, 6)).permute(0, 1, 2, 4, 3, 5)


def token_grid_loss(prediction: Tensor, target: Tensor, period: int = TOKEN_PERIOD, window: int = 0) -> Tensor:
    """Power of the period-``period`` component of ``prediction − target`` (fp32 scalar).

    ``window`` (in periods; 0 = the whole image) makes the loss local: the one-step DiT's grid
    depends on content, so its phase differs between regions and cancels in a whole-image mean
    (measured: removing it per 256-px window barely lowers the inspector's score, per 64-px window
    it does). With ``window = 2`` each 2×2-token neighbourhood contributes its own pattern.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        pattern = windowed_phase_mean(prediction.float() - target.detach().float(), period, window)
        pattern = pattern - pattern.mean(dim=(-2, -1), keepdim=True)
        return pattern.square().mean()


@register_loss("token_grid")
class TokenGridLoss(Loss):
    """Module form of :func:`token_grid_loss`: ``[loss] token_grid = W``, ``token_grid_window = N`` (tokens)."""

    options: ClassVar[Mapping[str, Any]] = {"window": 0}
    order = 50

    def __init__(self, period: int = TOKEN_PERIOD, window: int = 0) -> None:
        super().__init__()
        self.period, self.window = int(period), int(window)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return token_grid_loss(prediction, target, self.period, self.window)
