"""Limits on what the image reader accepts, importable without numpy or Pillow (the CLI's
option defaults read them on every ``--help``)."""

from __future__ import annotations

# Pillow's own warning threshold (about a 9459² image); above it we refuse unless raised.
DEFAULT_MAX_PIXELS = 89_478_485
