"""No-reference image statistics used by curation (stages i and ii).

All functions take a greyscale image as a 2-D float array in 8-bit grey levels ([0, 255]) unless
stated, so thresholds read in familiar units.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_gray255(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 float in [0,1] → HxW float32 luma in [0,255]."""
    return (rgb.astype(np.float32) @ _LUMA) * 255.0


def _padded(gray: np.ndarray) -> np.ndarray:
    # "symmetric" = scipy.ndimage's "reflect" (edge pixel repeated). Array slicing instead of
    # ndimage filters: ~5x faster on 4-megapixel images, which dominates stage (i).
    return np.pad(gray.astype(np.float32, copy=False), 1, mode="symmetric")


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low for blurred or flat images."""
    p = _padded(gray)
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * p[1:-1, 1:-1]
    return float(lap.var(dtype=np.float64))


def sobel_energy(gray: np.ndarray) -> float:
    """Mean Sobel gradient magnitude in grey levels per pixel (/8: the 1-2-1 smoothing sums to 4 and the central difference spans 2 px)."""
    p = _padded(gray)
    dx = p[:, 2:] - p[:, :-2]  # central difference along x, all rows
    dy = p[2:, :] - p[:-2, :]
    gx = dx[:-2] + 2.0 * dx[1:-1] + dx[2:]  # 1-2-1 smoothing across rows
    gy = dy[:, :-2] + 2.0 * dy[:, 1:-1] + dy[:, 2:]
    return float(np.hypot(gx, gy).mean(dtype=np.float64) / 8.0)


def quantize(gray: np.ndarray, levels: int) -> np.ndarray:
    return np.clip(gray * (levels / 256.0), 0, levels - 1).astype(np.uint8)


def glcm_contrast_correlation(gray: np.ndarray, levels: int = 64) -> tuple[float, float]:
    """GLCM contrast and correlation at distance 1, averaged over 0°, 45°, 90°, 135°.

    ``levels`` grey levels (64 by default: 256 makes a sparse, noisy matrix and costs 16× more).
    Contrast is in units of quantised levels squared; correlation lies in [-1, 1] and is 1 for a
    constant image (skimage's convention), so flat images read as fully correlated.
    """
    from skimage.feature import graycomatrix, graycoprops

    q = quantize(gray, levels)
    glcm = graycomatrix(q, distances=[1], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels,
                        symmetric=True, normed=True)
    return float(graycoprops(glcm, "contrast").mean()), float(graycoprops(glcm, "correlation").mean())


def shannon_entropy(gray: np.ndarray) -> float:
    """Entropy in bits of the 8-bit grey histogram (0 for a flat image, at most 8)."""
    hist = np.bincount(np.clip(gray, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkær's fast noise estimate (1996), in grey levels.

    Convolving with the difference of two Laplacians cancels smooth image structure; the mean
    absolute response of Gaussian noise is σ·6·sqrt(2/π).
    """
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = ndimage.convolve(gray.astype(np.float32), kernel, mode="reflect")[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(response).mean() / 6.0)


def blur_estimate(gray: np.ndarray) -> float:
    """Perceptual blur in [0, 1] (Crete et al. 2007, skimage's ``blur_effect``): 0 sharp, 1 blurred."""
    from skimage.measure import blur_effect

    return float(blur_effect(gray.astype(np.float32) / 255.0))


def downscale_max_side(gray: np.ndarray, max_side: int | None) -> np.ndarray:
    """Area-average downscale by an integer factor so the longer side is <= ``max_side``."""
    if max_side is None or max(gray.shape) <= max_side:
        return gray
    factor = math.ceil(max(gray.shape) / max_side)
    h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    return gray[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
