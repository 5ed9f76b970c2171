"""Per-pixel reconstruction terms: MSE and L1 on images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from op4ksr.losses.base import Loss, register_loss


@register_loss("mse")
class MSELoss(Loss):
    """Mean squared error (on by default, weight 1)."""

    default_weight = 1.0
    order = 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


@register_loss("l1")
class L1Loss(Loss):
    """Mean absolute error."""

    order = 10

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred, target)
