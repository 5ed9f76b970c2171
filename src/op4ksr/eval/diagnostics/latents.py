"""Latent view (paper Fig. 6): PCA-to-RGB of the latent before the DiT and after it.

Both latents are projected on the same three principal components (fitted on both together), so
colours are comparable: a 2×2 periodic pattern that appears only *after* the DiT is the
intra-token ambiguity the paper describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LatentViews:
    before: np.ndarray  # [h, w, 3] uint8, z_σ = E(LR) (normalised), latent resolution
    after: np.ndarray   # [h, w, 3] uint8, ẑ₀ unpacked from the DiT's output
    explained_variance: list[float]


def pca_rgb(latents: list[torch.Tensor]) -> tuple[list[np.ndarray], list[float]]:
    """Project [C, h, w] latents on their 3 shared principal components → uint8 RGB images."""
    flats = [z.detach().float().cpu().reshape(z.shape[0], -1).T.numpy() for z in latents]  # [hw, C]
    stacked = np.concatenate(flats)
    mean = stacked.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(stacked - mean, full_matrices=False)
    basis = vt[:3].T  # [C, 3]
    projected = [(f - mean) @ basis for f in flats]
    both = np.concatenate(projected)
    lo, hi = np.percentile(both, 1, axis=0), np.percentile(both, 99, axis=0)
    images = []
    for p, z in zip(projected, latents, strict=True):
        rgb = np.clip((p - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
        images.append((rgb.reshape(z.shape[1], z.shape[2], 3) * 255 + 0.5).astype(np.uint8))
    var = s**2
    return images, [float(v) for v in (var[:3] / var.sum())]


@torch.inference_mode()
def latent_views(pipe, image01: torch.Tensor) -> LatentViews:
    """Run the pipeline's encode and DiT stages on one LR image [1, 3, h, w] in [0, 1]."""
    z_sigma = pipe.lr_latent(image01.to(pipe.device, pipe.dtype)).latent
    z0 = pipe.denoise(z_sigma)
    (before, after), explained = pca_rgb([z_sigma[0], z0[0]])
    return LatentViews(before=before, after=after, explained_variance=explained)
