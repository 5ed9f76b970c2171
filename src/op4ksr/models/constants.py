"""The method's numbers, each in one place, importable without torch (the CLI's option defaults
read them on every ``--help``).

* ``PATCH`` — Flux packs 2×2 latent pixels into one DiT token.
* ``F16_FACTOR`` — output pixels per latent pixel of the F16 VAE (a VAE's own
  ``spatial_factor`` is computed from its config; this is the F16 value the method is built on).
* ``TOKEN_PERIOD`` — output pixels per token side, 16 × 2 = 32: the period of the grid a one-step
  Flux SR model leaves (paper Sec. 3.3) and the multiple every input is padded to.
* ``OP4KSR_ROPE_THETA`` / ``FLUX_ROPE_THETA`` — RoPE base θ after RFR (paper Sec. 3.2) and Flux's.
* ``DEFAULT_SIGMA`` — the mid timestep σ (σ = 1 − the paper's t) at which the LR latent is placed
  for the full-size model (OMGSR's t_mid; the compact presets measure their own,
  ``op4ksr analyze mid-timestep``).
"""

from __future__ import annotations

PATCH = 2
F16_FACTOR = 16
TOKEN_PERIOD = F16_FACTOR * PATCH
OP4KSR_ROPE_THETA = 100.0
FLUX_ROPE_THETA = 10000.0
DEFAULT_SIGMA = 0.7


def check_sigma(sigma: float, *, what: str = "sigma") -> float:
    """σ as a float in (0, 1], or a ValueError naming ``what`` (σ = 0 would be no noise at all:
    the DiT step would be asked to denoise a clean latent)."""
    value = float(sigma)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {sigma}")
    return value
