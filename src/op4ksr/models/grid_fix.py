"""Token-harmonic notch: remove the grid the one-step DiT leaves on the latent lattice, keep the content.

Why: the compact one-step DiT leaves a 32-px grid (the paper's periodic artifact, one token) and a
blotchy 16-px pattern (one latent pixel) that L_AP and the token-grid loss reduce but, at CPU
training budgets, do not remove (docs/MODEL_CARD.md). Their strength and phase follow the content,
so they are estimated locally.

How. Windows of ``window`` × ``window`` tokens, half a window apart, start on the token grid.
Inside a window, anything that repeats every 32 px (so also every 16, 8, ... px) lives only at
the DFT bins that are multiples of side/32 — the 32 × 32 token *harmonics* — and their
coefficients are the 2-D DFT of the window's phase mean (the average over pixels sharing a
position modulo 32). Natural content has about the same power at a harmonic as at the bins
around it; a grid stands out. So every harmonic but DC gets a Wiener-style gain

    gain = min(1, κ · B / |C|²),  B = median power of the 24 bins on the ring 3 bins away,

and the window's pattern is Σ (1 − gain) · C over the harmonics: content up to κ × its
background is left alone, a peak is shrunk to that level. C and B come from the window's
*periodic component* (:func:`periodic_spectrum`): a plain DFT's edge leakage would make smooth
content look like a grid along the frequency axes. The per-window patterns are blended with
tent weights between window centres (a partition of unity), so the correction varies smoothly
and adds no seams. Two passes (``NOTCH_PASSES``): 256-px windows, then 128-px windows.

No reference is used: an earlier version (v0.2) kept what the bicubic-upscaled LR has at the
harmonics, but 8-px JPEG blocks in the LR are exactly 32-px blocks at ×4, so it copied a grid
back into outputs. Measured on the held-out suites (docs/MODEL_CARD.md, `python
benchmarks/grid_fix_eval.py`): inspector score 9.3 → 1.7 dB mean at 32 px and 15.4 → 0.8 dB at
16 px, none above the threshold, PSNR-Y +0.04 dB. A photo's own texture that repeats exactly
every 32/k px and stands out of its surroundings is attenuated too. This is a deblocking filter
at a known block size, not part of the paper; ``grid_fix = "none"`` turns it off.
"""

from __future__ import annotations

import torch

GRID_FIXES = ("none", "notch")
from op4ksr.models.constants import TOKEN_PERIOD
from op4ksr.models.packing import window_starts

__all__ = ["GRID_FIXES", "NOTCH_PASSES", "TOKEN_PERIOD", "notch_pass", "periodic_spectrum", "phase_mean",
           "tent_weights", "token_notch", "window_starts"]
# (window in tokens, κ) per pass, measured on the held-out suites (docs/MODEL_CARD.md): 256-px
# windows first — the 16-px latent-pixel pattern is blotchy and stands out of its surroundings
# only over many periods — then 128-px windows for 32-px grids that change over ~100 px, with a
# higher κ (touch only what still stands out 8× above its background).
NOTCH_PASSES: tuple[tuple[int, float], ...] = ((8, 4.0), (4, 8.0))
_RING = 3  # background: the square ring 3 bins from the harmonic (24 bins; measured as good as
# the full ±3 neighbourhood and 1.7× cheaper to take the median of)


def phase_mean(x: torch.Tensor, period: int = TOKEN_PERIOD) -> torch.Tensor:
    """[..., H, W] → [..., period, period]: the mean over all pixels sharing a phase modulo ``period``.

    Rows/columns beyond the last whole period are dropped.
    """
    if x.ndim < 2:
        raise ValueError(f"expected images [..., H, W], got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    rows, cols = height // period, width // period
    if rows < 2 or cols < 2:
        raise ValueError(f"image {height}×{width} holds fewer than 2×2 periods of {period} px")
    x = x[..., : rows * period, : cols * period]
    return x.unflatten(-2, (rows, period)).unflatten(-1, (cols, period)).mean(dim=(-4, -2))


def tent_weights(length: int, side: int, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[length, 2] weights and [length, 2] window indices: linear interpolation between window
    centres (constant beyond the first and last), so each pixel mixes at most two windows and
    the weights sum to one."""
    centres = torch.tensor([s + (side - 1) / 2 for s in starts], dtype=torch.float64)
    pos = torch.arange(length, dtype=torch.float64).clamp(float(centres[0]), float(centres[-1]))
    if len(starts) == 1:
        index = torch.zeros(length, 2, dtype=torch.long)
        return torch.stack([torch.ones(length), torch.zeros(length)], dim=1).double(), index
    lower = (torch.searchsorted(centres, pos, right=True) - 1).clamp(0, len(starts) - 2)
    t = (pos - centres[lower]) / (centres[lower + 1] - centres[lower])
    return torch.stack([1 - t, t], dim=1), torch.stack([lower, lower + 1], dim=1)


def _ring_offsets(step_y: int, step_x: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin offsets of a harmonic's background: the square ring _RING bins away, off the harmonic
    lattice (a neighbouring harmonic may hold grid energy too)."""
    off = torch.arange(-_RING, _RING + 1)
    dy, dx = torch.meshgrid(off, off, indexing="ij")
    keep = (torch.maximum(dy.abs(), dx.abs()) == _RING) & ~((dy % step_y == 0) & (dx % step_x == 0))
    return dy[keep], dx[keep]


def periodic_spectrum(windows: torch.Tensor) -> torch.Tensor:
    """Half-spectrum DFT (``rfft2`` layout, [..., M, N//2 + 1]) of the periodic component of each
    window [..., M, N] (Moisan, "Periodic plus smooth image decomposition", 2011), DC set to zero.

    A window's plain DFT treats it as one tile of a periodic image, so the jumps between its
    opposite edges add a bright cross of leakage along the frequency axes, where harmonics
    (a, 0) and (0, b) sit: smooth content would look like a grid there. The smooth component
    that carries those jumps solves a Poisson equation whose source lives on the border, so
    its DFT is closed-form from two 1-D DFTs:
        ŝ(q, r) = v̂(q, r) / (2cos(2πq/M) + 2cos(2πr/N) − 4),
        v̂(q, r) = (1 − e^{2πiq/M})·D_rows(r) + (1 − e^{2πir/N})·D_cols(q),
    with D_rows the DFT of (last row − first row), D_cols of (last column − first column).
    """
    m, n = windows.shape[-2:]
    spectrum = torch.fft.rfft2(windows)
    d_rows = torch.fft.rfft(windows[..., -1, :] - windows[..., 0, :], dim=-1)  # [..., N//2 + 1]
    d_cols = torch.fft.fft(windows[..., :, -1] - windows[..., :, 0], dim=-1)  # [..., M]
    edge_rows, edge_cols = _smooth_factors(m, n, windows.device, windows.dtype)
    # ŝ = A·D_rows + B·D_cols with A, B fixed per window size: two broadcast multiply-subtracts
    # over the spectrum, in place, instead of building v̂ and dividing it
    spectrum.sub_(edge_rows * d_rows[..., None, :]).sub_(edge_cols * d_cols[..., :, None])
    spectrum[..., 0, 0] = 0
    return spectrum


def _smooth_factors(m: int, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A = (1 − e^{2πiq/M}) / den and B = (1 − e^{2πir/N}) / den, [M, N//2 + 1] (DC: 0)."""
    q = 2 * torch.pi * torch.arange(m, device=device, dtype=dtype) / m
    r = 2 * torch.pi * torch.arange(n // 2 + 1, device=device, dtype=dtype) / n
    edge_q = 1 - torch.polar(torch.ones_like(q), q)
    edge_r = 1 - torch.polar(torch.ones_like(r), r)
    denominator = 2 * torch.cos(q)[:, None] + 2 * torch.cos(r)[None, :] - 4
    denominator[0, 0] = 1.0  # DC: zeroed by the caller
    return edge_q[:, None] / denominator, edge_r[None, :] / denominator


def _half_index(rows: torch.Tensor, cols: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map full-spectrum bins (any ints) to the ``rfft2`` half where the power is the same
    (a real signal's power is symmetric: P(q, r) = P(−q, −r))."""
    rows, cols = rows % m, cols % n
    mirrored = cols > n // 2
    return torch.where(mirrored, (-rows) % m, rows), torch.where(mirrored, n - cols, cols)


def _window_corrections(windows: torch.Tensor, period: int, kappa: float) -> torch.Tensor:
    """[..., Sh, Sw] windows → [..., period, period] patterns to subtract."""
    sh, sw = windows.shape[-2:]
    step_y, step_x = sh // period, sw // period
    spectrum = periodic_spectrum(windows)
    power = torch.view_as_real(spectrum).square().sum(-1).flatten(-2)  # [..., M·(N//2 + 1)]
    # The harmonics of the half spectrum (b ≤ period/2) but DC; the others mirror them.
    k = torch.arange(period, device=windows.device)
    half = torch.arange(period // 2 + 1, device=windows.device)
    a, b = k.repeat_interleave(len(half))[1:], half.repeat(period)[1:]
    rows, cols = a * step_y, b * step_x
    dy, dx = (o.to(windows.device) for o in _ring_offsets(step_y, step_x))
    ring_rows, ring_cols = _half_index(rows[:, None] + dy, cols[:, None] + dx, sh, sw)
    # one gather on the flattened spectrum (cheaper than 2-D advanced indexing)
    width = sw // 2 + 1
    ring = (ring_rows * width + ring_cols).flatten()
    background = power.index_select(-1, ring).unflatten(-1, tuple(ring_rows.shape)).median(dim=-1).values
    harmonic = power.index_select(-1, rows * width + cols)
    del power
    gain = torch.where(harmonic > 0, (kappa * background / harmonic.clamp_min(1e-30)).clamp(max=1.0),
                       torch.ones_like(harmonic))
    # A window's DFT at bin (a·step_y, b·step_x) is step_y·step_x times the DFT of its phase
    # mean at (a, b): dividing gives the coefficient of the 32 × 32 pattern.
    correction = torch.zeros(*windows.shape[:-2], period, period // 2 + 1, dtype=spectrum.dtype,
                             device=windows.device)
    correction[..., a, b] = spectrum[..., rows, cols] * (1.0 - gain) / (step_y * step_x)
    return torch.fft.irfft2(correction, s=(period, period))


def token_notch(images: torch.Tensor, period: int = TOKEN_PERIOD,
                passes: tuple[tuple[int, float], ...] = NOTCH_PASSES) -> torch.Tensor:
    """Remove the token-period grid from ``images`` (in place): :func:`notch_pass` once per
    ``(window, kappa)`` in ``passes``; see the module docstring."""
    for window, kappa in passes:
        images = notch_pass(images, period, window, kappa)
    return images


def notch_pass(images: torch.Tensor, period: int = TOKEN_PERIOD, window: int = 4,
               kappa: float = 4.0) -> torch.Tensor:
    """One pass of the notch (in place).

    Args:
        images: [B, C, H, W] SR output; H and W multiples of ``period`` (the pipeline's padded size).
        period: the token period in pixels.
        window: window side in periods (stride: half of it, at least one period).
        kappa: shrink harmonics more than ``kappa`` × their local background power to that level.

    Returns ``images`` (modified in place), unclamped. Inputs smaller than 2 × 2 periods are
    returned unchanged: a single period's "pattern" would be the content itself.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    if window < 2:
        raise ValueError(f"window must be at least 2 periods, got {window}")
    if kappa < 0:
        raise ValueError(f"kappa must be ≥ 0, got {kappa}")
    height, width = images.shape[-2:]
    if height % period or width % period:
        raise ValueError(f"{height}×{width} is not a multiple of the period {period}")
    if height < 2 * period or width < 2 * period:
        return images
    side_y, side_x = min(window * period, height), min(window * period, width)
    stride = max(1, window // 2) * period
    starts_y, starts_x = window_starts(height, side_y, stride), window_starts(width, side_x, stride)
    b, c = images.shape[:2]
    # Per-window patterns [B, C, rows, cols, P, P] (1/16 of the image at 128-px windows, 64-px
    # stride), one row of windows at a time to bound the FFTs' memory.
    patterns = images.new_empty(b, c, len(starts_y), len(starts_x), period, period)
    for i, ys in enumerate(starts_y):
        rows = images[..., ys:ys + side_y, :]
        windows = torch.stack([rows[..., xs:xs + side_x] for xs in starts_x], dim=2).float()
        patterns[:, :, i] = _window_corrections(windows, period, kappa).to(images.dtype)
    _subtract_blended(images, patterns, side_y, side_x, starts_y, starts_x)
    return images


def _subtract_blended(images: torch.Tensor, patterns: torch.Tensor, side_y: int, side_x: int,
                      starts_y: list[int], starts_x: list[int]) -> None:
    """images −= Σ tent_y · tent_x · (window pattern tiled), two windows per axis per pixel."""
    b, c, n_rows, n_cols, period, _ = patterns.shape
    height, width = images.shape[-2:]
    device, dtype = images.device, images.dtype
    wy, iy = (t.to(device) for t in tent_weights(height, side_y, starts_y))
    wx, ix = (t.to(device) for t in tent_weights(width, side_x, starts_x))
    phase_y = torch.arange(height, device=device) % period
    phase_x = torch.arange(width, device=device) % period
    # Along x: [B, C, rows, P(y phase), cols·P] → [B, C, rows, P, W]
    flat = patterns.permute(0, 1, 2, 4, 3, 5).reshape(b, c, n_rows, period, n_cols * period)
    along_x = (flat[..., ix[:, 0] * period + phase_x] * wx[:, 0].to(dtype)
               + flat[..., ix[:, 1] * period + phase_x] * wx[:, 1].to(dtype))
    along_x = along_x.reshape(b, c, n_rows * period, width)
    # Along y, in bands of rows so that no full-size temporary is needed.
    band = 256
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        sel0 = iy[y0:y1, 0] * period + phase_y[y0:y1]
        sel1 = iy[y0:y1, 1] * period + phase_y[y0:y1]
        images[..., y0:y1, :] -= (along_x[..., sel0, :] * wy[y0:y1, 0, None].to(dtype)
                                  + along_x[..., sel1, :] * wy[y0:y1, 1, None].to(dtype))
