"""Limits on what the image reader accepts, importable without numpy or Pillow (the CLI's
option defaults read them on every ``--help``)."""

from __future__ import annotations

# Pillow's own warning threshold (about a 9459² image); above it we refuse unless raised.
DEFAULT_MAX_PIXELS = 89_478_485


def check_max_pixels(max_pixels: object) -> int:
    """``max_pixels`` as a positive whole number, or ValueError (0, negatives, NaN, True are no limits)."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive whole number of pixels, got {max_pixels!r}")
    return max_pixels
