"""The method's numbers, each in one place, importable without torch (the CLI's option defaults
read them on every ``--help``).

* ``PATCH`` — Flux packs 2×2 latent pixels into one DiT token.
* ``F16_FACTOR`` — output pixels per latent pixel of the F16 VAE (a VAE's own
  ``spatial_factor`` is computed from its config; this is the F16 value the method is built on).
* ``TOKEN_PERIOD`` — output pixels per token side, 16 × 2 = 32: the period of the grid a one-step
  Flux SR model leaves (paper Sec. 3.3) and the multiple every input is padded to.
* ``OP4KSR_ROPE_THETA`` / ``FLUX_ROPE_THETA`` — RoPE base θ after RFR (paper Sec. 3.2) and Flux's.
* ``DEFAULT_SIGMA`` — the mid timestep σ (the noise fraction of Flux's flow, z_σ = (1−σ)·z₀ + σ·ε)
  at which the LR latent is placed for the full-size model: OMGSR-F's released value, σ ≈ 0.505
  (``mid_timestep`` 244 on its shifted schedule), which OMGSR chose by the SNR-matching rule that
  ``op4ksr analyze mid-timestep`` implements. The paper's "t = 0.3" read literally (σ = 0.7) puts
  the LR latent at far more noise than E(LR) has; read as a noise level it is σ = 0.3, what the rule
  measures for the compact model (σ* = 0.31, docs/MODEL_CARD.md). σ stays a config value
  (``model_index.json``, ``sr.sigma``): measure it for a given VAE and degradation with that command.
"""

from __future__ import annotations

PATCH = 2
F16_FACTOR = 16
TOKEN_PERIOD = F16_FACTOR * PATCH
OP4KSR_ROPE_THETA = 100.0
FLUX_ROPE_THETA = 10000.0
DEFAULT_SIGMA = 0.505  # OMGSR-F's (see above); measure with `op4ksr analyze mid-timestep`


def check_sigma(sigma: float, *, what: str = "sigma") -> float:
    """σ as a float in (0, 1], or a ValueError naming ``what`` (σ = 0 would be no noise at all:
    the DiT step would be asked to denoise a clean latent)."""
    value = float(sigma)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {sigma}")
    return value
