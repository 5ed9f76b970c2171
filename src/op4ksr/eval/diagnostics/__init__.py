"""Diagnostics for periodic (token-grid) artifacts: the grid inspector, RoPE phase analysis,
spectra and small Pillow plots. See docs/INSPECTOR.md."""
