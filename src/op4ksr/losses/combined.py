"""The image-space loss terms every training stage shares, weighted by the config.

MSE, L1, LPIPS, Haar wavelet, the periodicity loss L_AP and the token-grid loss, each switched off by a zero weight
(its backbone is then never built). Returns the weighted sum and the unweighted terms for logs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageLosses(nn.Module):
    def __init__(self, *, mse: float = 1.0, l1: float = 0.0, lpips: float = 0.0, lpips_net: str = "vgg16",
                 wavelet: float = 0.0, periodicity: float = 0.0, token_grid: float = 0.0,
                 token_grid_window: int = 0):
        super().__init__()
        self.weights = {"mse": mse, "l1": l1, "lpips": lpips, "wavelet": wavelet, "periodicity": periodicity,
                        "token_grid": token_grid}
        self.lpips = None
        if lpips > 0:
            from op4ksr.losses.perceptual import LPIPSLoss

            self.lpips = LPIPSLoss(net=lpips_net)
        self.token_grid_window = token_grid_window
        self.periodicity = None
        if periodicity > 0:
            from op4ksr.losses.periodicity import PeriodicityLoss

            self.periodicity = PeriodicityLoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        terms: dict[str, torch.Tensor] = {}
        w = self.weights
        if w["mse"] > 0:
            terms["mse"] = F.mse_loss(pred, target)
        if w["l1"] > 0:
            terms["l1"] = F.l1_loss(pred, target)
        if self.lpips is not None:
            terms["lpips"] = self.lpips(pred, target)
        if w["wavelet"] > 0:
            from op4ksr.losses.wavelet import wavelet_loss

            terms["wavelet"] = wavelet_loss(pred, target)
        if self.periodicity is not None:
            terms["periodicity"] = self.periodicity(pred, target)
        if w["token_grid"] > 0:
            from op4ksr.losses.token_grid import token_grid_loss

            terms["token_grid"] = token_grid_loss(pred, target, window=self.token_grid_window)
        total = sum((w[k] * v for k, v in terms.items()), pred.new_zeros(()))
        return total, {k: float(v.detach()) for k, v in terms.items()}
