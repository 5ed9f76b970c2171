"""Synthetic token-grid artifacts, for calibrating and testing the periodicity tools."""

from __future__ import annotations

import numpy as np


def token_grid(height: int, width: int, period: int = 32, amplitude: float = 2 / 255) -> np.ndarray:
    """A ±``amplitude`` pattern repeating every ``period`` px in both axes, shape [height, width].

    Each period×period token is split into 2×2 quarters valued +a, −a / −a, +a: the shape of
    the unpack artifact the paper describes (sub-pixels a1, b1, c1, d1 repeated per token,
    Fig. 6), with zero mean so it adds no brightness shift.
    """
    if period < 2 or period % 2:
        raise ValueError(f"period must be an even integer ≥ 2, got {period}")
    half = period // 2
    rows = np.where((np.arange(height) % period) < half, 1.0, -1.0)
    cols = np.where((np.arange(width) % period) < half, 1.0, -1.0)
    return amplitude * np.outer(rows, cols)


def add_token_grid(image: np.ndarray, period: int = 32, amplitude: float = 2 / 255) -> np.ndarray:
    """``image`` (uint8 [H,W] or [H,W,C], or float in [0,1]) plus a token grid, same dtype.

    For uint8 input the grid is added in grey levels (amplitude·255) and clipped to 0..255.
    """
    grid = token_grid(image.shape[0], image.shape[1], period, amplitude)
    if image.ndim == 3:
        grid = grid[..., None]
    if image.dtype == np.uint8:
        return np.clip(np.rint(image.astype(np.float64) + grid * 255.0), 0, 255).astype(np.uint8)
    return np.clip(image + grid, 0.0, 1.0).astype(image.dtype)
