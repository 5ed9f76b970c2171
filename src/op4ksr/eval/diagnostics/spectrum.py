"""Spectral building blocks for the grid inspector.

A pattern that repeats every P px along an axis puts power at the frequencies k·n/P (k = 1,
2, …) of every line's spectrum along that axis, in every line, so averaging the power spectra
of all lines keeps the peaks while image content averages into a smooth 1/f curve. The
*prominence* of a bin is its power over the median power of its neighbours, in dB: about 0
for natural content, large for a periodic artifact, whatever the image's own spectrum.
"""

from __future__ import annotations

import math

import numpy as np

# Rec. 601 luma: the artifact lives in brightness; chroma adds little and would triple the cost.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_luma(image: object) -> np.ndarray:
    """Any image → float64 luma [H, W] in [0, 1].

    Accepts numpy arrays [H, W], [H, W, C] (uint8, uint16, or float in [0, 1]) and torch
    tensors [C, H, W] or [1, C, H, W] in [0, 1]. An alpha channel is ignored.
    """
    if hasattr(image, "detach"):  # torch tensor, imported lazily by the caller
        tensor = image.detach().float().cpu()
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {tensor.shape[0]}")
            tensor = tensor[0]
        array = tensor.permute(1, 2, 0).numpy() if tensor.ndim == 3 else tensor.numpy()
    else:
        array = np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float64) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float64) / 65535.0
    else:
        array = array.astype(np.float64)
    if array.ndim == 3:
        channels = array.shape[2]
        if channels in (3, 4):
            array = array[..., :3] @ _LUMA_WEIGHTS
        elif channels in (1, 2):
            array = array[..., 0]
        else:
            raise ValueError(f"expected 1–4 channels, got {channels}")
    if array.ndim != 2:
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {array.shape}")
    return array


def center_crop_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Crop the last two axes to multiples of ``multiple`` (centred), so k·n/P lands on exact bins."""
    height, width = array.shape[-2:]
    new_h, new_w = height - height % multiple, width - width % multiple
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image {height}×{width} is smaller than one period ({multiple} px)")
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return array[..., top : top + new_h, left : left + new_w]


def fold_lines(lines: np.ndarray, fold: int) -> np.ndarray:
    """Average lines whose index is equal modulo ``fold``: [..., n_lines, n] → [..., fold, n].

    A pattern that repeats every ``fold`` lines survives at full amplitude (its copies add in
    phase) while image content, different from line to line, shrinks by √(n_lines/fold): the
    coherent gain that lets a ±2/255 grid stand out of a textured photo. ``n_lines`` must be a
    multiple of ``fold``.
    """
    n_lines = lines.shape[-2]
    if n_lines % fold:
        raise ValueError(f"{n_lines} lines cannot be folded by {fold}")
    return lines.reshape(*lines.shape[:-2], n_lines // fold, fold, lines.shape[-1]).mean(axis=-3)


def line_power_spectrum(lines: np.ndarray) -> np.ndarray:
    """Mean over lines of |rfft(line − line mean)|², for ``lines`` [..., n_lines, n].

    Returns [..., n // 2 + 1]; bin f is the frequency f/n cycles per pixel.
    """
    centred = lines - lines.mean(axis=-1, keepdims=True)
    spectrum = np.fft.rfft(centred, axis=-1)
    return (spectrum.real**2 + spectrum.imag**2).mean(axis=-2)


def local_background(power: np.ndarray, half_window: int = 8, gap: int = 1) -> np.ndarray:
    """Median of each bin's neighbours within ±``half_window`` bins, leaving out ±``gap``.

    Leaving out the bin and its immediate neighbours keeps a peak (and its leakage) from
    raising its own background. Edges are reflected.
    """
    if half_window <= gap:
        raise ValueError(f"half_window ({half_window}) must exceed gap ({gap})")
    padded = np.pad(power, [(0, 0)] * (power.ndim - 1) + [(half_window, half_window)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half_window + 1, axis=-1)
    offsets = np.arange(-half_window, half_window + 1)
    return np.median(windows[..., np.abs(offsets) > gap], axis=-1)


def prominence_db(power: np.ndarray, background: np.ndarray) -> np.ndarray:
    """10·log10(power / background), with a tiny floor so flat (all-zero) spectra give 0 dB."""
    floor = 1e-30
    return 10.0 * np.log10((power + floor) / (background + floor))


def exclusive_harmonics(period: int) -> list[int]:
    """Harmonic numbers k (1 ≤ k ≤ period/2) with gcd(k, period) = 1.

    k·n/P is also a harmonic of a shorter period P/g exactly when g = gcd(k, P) > 1, so only
    these k are evidence of period P itself: JPEG's 8-px blocking (harmonics of n/8) or a ×4
    interpolation pattern (harmonics of n/4) never reach them when P = 32.
    """
    return [k for k in range(1, period // 2 + 1) if math.gcd(k, period) == 1]


def harmonic_prominence(prominence: np.ndarray, n: int, period: float, harmonics: list[int]) -> np.ndarray:
    """Prominence [..., len(harmonics)] at the bins k·n/period (the better of the two nearest
    bins when k·n/period falls between bins, since leakage splits the peak between them)."""
    positions = np.asarray(harmonics, dtype=np.float64) * n / period
    low = np.clip(np.floor(positions).astype(np.intp), 0, prominence.shape[-1] - 1)
    high = np.clip(np.ceil(positions).astype(np.intp), 0, prominence.shape[-1] - 1)
    return np.maximum(prominence[..., low], prominence[..., high])


def log_magnitude_spectrum(luma: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """log10(1 + |FFT2|) of the mean-removed image, zero frequency centred (paper Fig. 10).

    Larger spectra are reduced to ``max_side`` by max-pooling, so isolated grid spikes stay
    visible instead of being averaged away.
    """
    import scipy.fft

    centred = (luma - luma.mean()).astype(np.float32)  # fp32 FFT: half the memory at 4K
    magnitude = np.abs(np.fft.fftshift(scipy.fft.fft2(centred, workers=-1)))
    spectrum = np.log10(1.0 + magnitude)
    factor = max(1, math.ceil(max(spectrum.shape) / max_side))
    if factor > 1:
        height, width = (s - s % factor for s in spectrum.shape)
        spectrum = spectrum[:height, :width].reshape(height // factor, factor, width // factor, factor).max(axis=(1, 3))
    return spectrum
