"""The rectified-flow convention, in one place (reference.md, OMGSR/Flux).

    z_σ = (1 − σ)·z₀ + σ·ε,   v = ε − z₀,   ẑ₀ = z_σ − σ·v.

The paper's Eq. (1) writes z_t = t·z_HR + (1 − t)·ε, i.e. **t = 1 − σ**: its t_mid = 0.3 read
literally is σ = 0.7. op4ksr always stores and passes σ (the noise fraction), which is also what
diffusers' Flux transformer receives as ``timestep`` (it multiplies by 1000 internally). The
default σ and why it is not 0.7: ``op4ksr.models.constants.DEFAULT_SIGMA``.
"""

from __future__ import annotations

import torch


def noisy_latent(z0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """z_σ = (1 − σ)·z₀ + σ·ε."""
    sigma = _as_batch(sigma, z0)
    return (1.0 - sigma) * z0 + sigma * noise


def velocity_target(z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = ε − z₀, what the DiT is trained to predict."""
    return noise - z0


def x0_from_velocity(z_sigma: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """One Euler step from σ to 0: ẑ₀ = z_σ − σ·v."""
    return z_sigma - _as_batch(sigma, z_sigma) * velocity


def paper_t_to_sigma(t: float) -> float:
    """The paper's Eq. (1) time t to op4ksr's σ."""
    return 1.0 - t


def _as_batch(sigma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        return sigma.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)
    return sigma
