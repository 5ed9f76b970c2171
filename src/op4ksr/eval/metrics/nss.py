"""NIQE and BRISQUE: natural-scene-statistics metrics in numpy float64, models from offline assets."""

from __future__ import annotations

import math
import os
from functools import cache

import numpy as np
import torch

from op4ksr.eval.metrics import nss_assets as _recipes  # noqa: F401  (registers niqe, brisque)
from op4ksr.eval.metrics.base import Metric, quantize_8bit, register_metric, rgb_to_y, shave

_GAM = np.arange(0.2, 10.001, 0.001)


@cache
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gamma

    r = gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))
    # r is increasing in the shape parameter, so argmin |r - x| is a nearest-neighbour lookup.
    assert np.all(np.diff(r) > 0)
    return _GAM, r


def _nearest_in_table(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the table entry closest to each value (table increasing); NaN -> 0 like argmin."""
    idx = np.clip(np.searchsorted(table, values), 1, len(table) - 1)
    left_closer = np.abs(values - table[idx - 1]) <= np.abs(table[idx] - values)
    out = np.where(left_closer, idx - 1, idx)
    return np.where(np.isnan(values), 0, out)


def _aggd_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit per row of ``samples`` [N, M] -> (alpha, left_std, right_std)."""
    gam, r_gam = _aggd_table()
    neg, pos = samples < 0, samples > 0
    sq = samples**2
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((sq * neg).sum(axis=1) / neg.sum(axis=1))
        right_std = np.sqrt((sq * pos).sum(axis=1) / pos.sum(axis=1))
        gamma_hat = left_std / right_std
        r_hat = np.abs(samples).mean(axis=1) ** 2 / sq.mean(axis=1)
        r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    return gam[_nearest_in_table(r_gam, r_hat_norm)], left_std, right_std


def _gamma_ratio(num: float, den: float, alpha: np.ndarray) -> np.ndarray:
    from scipy.special import gamma

    return gamma(num / alpha) / gamma(den / alpha)


def _niqe_block_features(blocks: np.ndarray) -> np.ndarray:
    """18 NIQE features for each normalised block of ``blocks`` [N, b, b]."""
    n = blocks.shape[0]
    alpha, bl, br = _aggd_fit(blocks.reshape(n, -1))
    bl_s, br_s = bl * np.sqrt(_gamma_ratio(1, 3, alpha)), br * np.sqrt(_gamma_ratio(1, 3, alpha))
    feats = [alpha, (bl_s + br_s) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        # Products of neighbours within each block (wrapping, as the reference code does).
        prod = blocks * np.roll(blocks, shift, axis=(1, 2))
        a, l_std, r_std = _aggd_fit(prod.reshape(n, -1))
        l_s, r_s = l_std * np.sqrt(_gamma_ratio(1, 3, a)), r_std * np.sqrt(_gamma_ratio(1, 3, a))
        feats += [a, (r_s - l_s) * _gamma_ratio(2, 1, a), l_s, r_s]
    return np.stack(feats, axis=1)


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)) + (
        (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    )


def matlab_resize_matrix(in_length: int, scale: float) -> np.ndarray:
    """Dense ``[out, in]`` matrix of MATLAB ``imresize`` (bicubic, antialiased when shrinking).

    Out-of-range taps are mirrored with the edge sample repeated (MATLAB's symmetric padding).
    """
    out_length = math.ceil(in_length * scale)
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = left[:, None] + np.arange(math.ceil(kernel_width) + 2)[None, :]
    dist = u[:, None] - taps
    weights = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    # 1-based MATLAB index -> 0-based, mirrored: -1 -> 0, -2 -> 1, n -> n-1, n+1 -> n-2.
    idx = taps.astype(np.int64) - 1
    period = 2 * in_length
    idx = np.mod(idx, period)
    idx = np.where(idx >= in_length, period - 1 - idx, idx)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_length), idx.shape[1]), idx.ravel()), weights.ravel())
    return matrix


def niqe_score(y: np.ndarray, params: dict[str, np.ndarray], block: int = 96) -> float:
    """NIQE of one Y image ``[H,W]`` in [0,255] (already rounded), with pristine ``params``."""
    from scipy.ndimage import convolve

    h, w = (y.shape[0] // block) * block, (y.shape[1] // block) * block
    if h == 0 or w == 0:
        raise ValueError(f"NIQE needs an image of at least {block}x{block} pixels, got {y.shape}")
    img = y[:h, :w].astype(np.float64)
    window = params["gaussian_window"]
    feats = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(img * img, window, mode="nearest") - mu * mu))
        normed = (img - mu) / (sigma + 1)
        b = block // scale
        nh, nw = h // block, w // block
        blocks = normed[: nh * b, : nw * b].reshape(nh, b, nw, b).transpose(0, 2, 1, 3).reshape(-1, b, b)
        feats.append(_niqe_block_features(blocks))
        if scale == 1:
            img = matlab_resize_matrix(h, 0.5) @ (img / 255.0) @ matlab_resize_matrix(w, 0.5).T * 255.0
    dist = np.concatenate(feats, axis=1)
    mu_dist = np.nanmean(dist, axis=0)
    cov_dist = np.cov(dist[~np.isnan(dist).any(axis=1)], rowvar=False)
    diff = params["mu_pris_param"].reshape(-1) - mu_dist
    inv = np.linalg.pinv((params["cov_pris_param"] + cov_dist) / 2)
    return float(np.sqrt(diff @ inv @ diff))


def _load_numpy_asset(name: str, user_path: str | os.PathLike | None) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    from op4ksr.assets import asset_path

    return load_file(str(asset_path(name, user_path)))


@register_metric
class NIQE(Metric):
    """NIQE (lower is better) on the rounded MATLAB Y channel."""

    name = "niqe"
    lower_better = True
    full_reference = False

    def __init__(self, weights: str | os.PathLike | None = None, crop_border: int = 0) -> None:
        self.params = _load_numpy_asset("niqe", weights)
        self.crop_border = crop_border

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        y = shave(torch.round(rgb_to_y(quantize_8bit(images))), self.crop_border)
        return torch.tensor([niqe_score(yi.numpy(), self.params) for yi in y.cpu()], dtype=torch.float64)


def _ggd_fit(samples: np.ndarray) -> tuple[float, float]:
    """Generalised Gaussian fit (shape, variance) of a 1-D sample, BRISQUE's moment matching."""
    from scipy.special import gamma

    r = gamma(1 / _GAM) * gamma(3 / _GAM) / gamma(2 / _GAM) ** 2
    var = float(np.mean(samples**2))
    rho = var / float(np.mean(np.abs(samples))) ** 2
    return float(_GAM[np.argmin(np.abs(rho - r))]), var


def brisque_features(grey: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of an 8-bit grey image ``[H,W]`` (values 0..255)."""
    from scipy.ndimage import correlate1d

    radius, sigma = 3, 7 / 6
    taps = np.exp(-((np.arange(-radius, radius + 1)) ** 2) / (2 * sigma**2))
    taps /= taps.sum()

    def blur(a: np.ndarray) -> np.ndarray:  # 7x7 Gaussian, zero padding (BORDER_CONSTANT)
        return correlate1d(correlate1d(a, taps, axis=0, mode="constant"), taps, axis=1, mode="constant")

    img = grey.astype(np.float64)
    feats: list[float] = []
    for _ in range(2):
        mu = blur(img)
        sig = np.sqrt(np.abs(blur(img * img) - mu * mu))
        mscn = (img - mu) / (sig + 1)
        alpha, var = _ggd_fit(mscn.ravel())
        feats += [alpha, var]
        for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            pair = (mscn * np.roll(mscn, shift, axis=(0, 1))).ravel()[None]
            a, l_std, r_std = (float(v[0]) for v in _aggd_fit(pair))
            mean = (
                (r_std - l_std)
                * float(_gamma_ratio(2, 1, np.array(a)))
                * math.sqrt(float(_gamma_ratio(1, 3, np.array(a))))
            )
            feats += [a, mean, l_std**2, r_std**2]
        # Nearest-neighbour halving (every other pixel), rounding the size half-to-even like OpenCV.
        nh, nw = int(np.rint(img.shape[0] * 0.5)), int(np.rint(img.shape[1] * 0.5))
        img = img[: 2 * nh : 2, : 2 * nw : 2]
    return np.asarray(feats)


def rgb_to_grey_8bit(images_255: torch.Tensor) -> torch.Tensor:
    """OpenCV's BT.601 grey of 8-bit RGB ``[B,3,H,W]``: 0.299/0.587/0.114 in 15-bit fixed point, rounded.

    (OpenCV >= 4 ``cvtColor(..., RGB2GRAY)`` on 8-bit input: ``(9798 R + 19235 G + 3735 B + 2^14) >> 15``.)
    """
    rgb = images_255.to(torch.int64)
    return (rgb[:, 0] * 9798 + rgb[:, 1] * 19235 + rgb[:, 2] * 3735 + (1 << 14)) >> 15


@register_metric
class BRISQUE(Metric):
    """BRISQUE (lower is better) with LIVE's SVR (optional GPL-3 asset ``brisque``)."""

    name = "brisque"
    lower_better = True
    full_reference = False

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        self.model = _load_numpy_asset("brisque", weights)

    def score_features(self, feats: np.ndarray) -> float:
        m = self.model
        lo, hi = m["scale_range"]
        scaled = lo + (hi - lo) * (feats - m["feature_min"]) / (m["feature_max"] - m["feature_min"])
        sq_dist = ((m["support_vectors"] - scaled[None]) ** 2).sum(axis=1)
        return float(m["dual_coef"] @ np.exp(-m["gamma"][0] * sq_dist) - m["rho"][0])

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        grey = rgb_to_grey_8bit(quantize_8bit(images)).cpu().numpy()
        return torch.tensor([self.score_features(brisque_features(g)) for g in grey], dtype=torch.float64)
