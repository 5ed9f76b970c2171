"""Latent-space terms: the sr stage's alignment L_vae and the vae stage's KL."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from op4ksr.losses.base import Loss, register_loss


@register_loss("vae_align")
class LatentAlignmentLoss(Loss):
    """L_vae (OMGSR, paper Fig. 4): MSE between E_LoRA(LR), taken as z_σ, and the frozen encoder's
    z_HR noised to σ. The sr stage computes it when it trains the encoder LoRA."""

    kind = "latent"
    default_weight = 5.0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


@register_loss("kl")
class KLLoss(Loss):
    """KL divergence of the VAE's posterior from N(0, I), batch mean (vae stage; tiny by default)."""

    kind = "posterior"
    default_weight = 1e-6

    def forward(self, posterior: Any) -> torch.Tensor:
        return posterior.kl().mean()
