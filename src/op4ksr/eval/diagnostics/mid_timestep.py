"""Mid-timestep search (OMGSR's rule): pick σ so that the LR latent sits where the flow has the
same signal-to-noise ratio.

For normalised latents, z_σ = (1−σ)·z_HR + σ·ε has SNR(σ) = (1−σ)²·P(z_HR)/σ² (ε has unit power),
and the LR latent E(LR), read as z_HR plus a perturbation, has SNR_LR = P(z_HR)/P(E(LR) − z_HR).
σ* = argmin_σ mean_images |SNR(σ) − SNR_LR| over a grid of σ. This settles the paper's t_mid
ambiguity (t = 0.3 vs σ = 0.3) with a measurement on a given VAE and degradation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class MidTimestepResult:
    sigma: float
    sigmas: list[float]
    mean_abs_gap: list[float]
    snr_lr: list[float] = field(default_factory=list)  # per image
    hr_power: list[float] = field(default_factory=list)

    def snr_curve(self, sigma: float) -> float:
        """Mean SNR(z_σ) over the images at ``sigma``."""
        p = np.asarray(self.hr_power)
        return float(np.mean((1 - sigma) ** 2 * p / sigma**2))


def snr_gap(sigmas: np.ndarray, hr_power: np.ndarray, snr_lr: np.ndarray) -> np.ndarray:
    """mean over images of |SNR(σ) − SNR_LR| for every σ in ``sigmas``."""
    snr = (1 - sigmas[:, None]) ** 2 * hr_power[None, :] / sigmas[:, None] ** 2
    return np.abs(snr - snr_lr[None, :]).mean(axis=1)


@torch.inference_mode()
def search_mid_timestep(pipe, hr: torch.Tensor, lr: torch.Tensor, *, grid: int = 99) -> MidTimestepResult:
    """``hr`` [B,3,H,W] and its ``lr`` [B,3,H/s,W/s] in [0,1] → the SNR-matched σ."""
    device, dtype = pipe.device, pipe.dtype
    z_hr = pipe.encode(hr.to(device, dtype)).float()
    z_lr = pipe.lr_latent(lr.to(device, dtype)).latent.float()[..., : z_hr.shape[-2], : z_hr.shape[-1]]
    dims = tuple(range(1, z_hr.ndim))
    hr_power = (z_hr**2).mean(dim=dims).cpu().numpy().astype(np.float64)
    err_power = ((z_lr - z_hr) ** 2).mean(dim=dims).clamp_min(1e-12).cpu().numpy().astype(np.float64)
    snr_lr = hr_power / err_power
    sigmas = np.linspace(0.01, 0.99, grid)
    gap = snr_gap(sigmas, hr_power, snr_lr)
    return MidTimestepResult(sigma=float(sigmas[int(np.argmin(gap))]), sigmas=sigmas.tolist(),
                             mean_abs_gap=gap.tolist(), snr_lr=snr_lr.tolist(), hr_power=hr_power.tolist())
