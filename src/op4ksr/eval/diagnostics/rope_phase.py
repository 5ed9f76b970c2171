"""RoPE phase analysis (paper Sec. 3.2, Eq. 2 and Fig. 5).

Δφ_i = θ^(−2i/d) is the rotation, in radians, between adjacent tokens on frequency pair i of
one axis (d = per-axis dim, d/2 pairs). A pair "separates neighbours" when Δφ_i exceeds a
threshold given in degrees (paper: 5° = 0.0873 rad). With d = 56 this convention — Δφ in
radians, threshold converted from degrees, strict ">" — gives the paper's counts exactly:
8/28 at θ = 10000 and 15/28 at θ = 100.

The frequencies come from :func:`op4ksr.models.rope.rope_frequencies` and the Fig. 5b map from
:class:`op4ksr.models.rope.RescaledRoPE`, the module the model itself uses, so the analysis
describes the embedding that actually runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from op4ksr.eval.diagnostics.plots import (
    PALETTE,
    HLine,
    Series,
    heatmap,
    hstack,
    line_plot,
)

DEFAULT_THRESHOLD_DEG = 5.0
DEFAULT_AXIS_DIM = 56  # Flux axes_dims_rope = [16, 56, 56]: 56 per spatial axis
DEFAULT_GRID = 128  # token grid of a 4096² output (16× VAE × 2×2 packing)


@dataclass(frozen=True)
class RopePhaseReport:
    """Adjacent-token phase steps for one base θ."""

    theta: float
    dim: int
    threshold_deg: float
    delta_phi_rad: tuple[float, ...]  # Δφ_i, i = 0 … dim/2 − 1

    @property
    def n_pairs(self) -> int:
        return len(self.delta_phi_rad)

    @property
    def delta_phi_deg(self) -> tuple[float, ...]:
        return tuple(math.degrees(v) for v in self.delta_phi_rad)

    @property
    def above(self) -> tuple[bool, ...]:
        threshold = math.radians(self.threshold_deg)
        return tuple(v > threshold for v in self.delta_phi_rad)

    @property
    def n_above(self) -> int:
        return sum(self.above)

    def summary_line(self) -> str:
        return f"{self.n_above}/{self.n_pairs} pairs above {self.threshold_deg:g}°"


def rope_phase_report(theta: float, dim: int = DEFAULT_AXIS_DIM,
                      threshold_deg: float = DEFAULT_THRESHOLD_DEG) -> RopePhaseReport:
    """Δφ_i for every pair of a ``dim``-wide RoPE axis with base ``theta``."""
    from op4ksr.models.rope import rope_frequencies

    if theta <= 1:
        raise ValueError(f"theta must be > 1, got {theta}")
    steps = rope_frequencies(dim, theta)
    return RopePhaseReport(theta=float(theta), dim=dim, threshold_deg=float(threshold_deg),
                           delta_phi_rad=tuple(float(v) for v in steps))


def rope_similarity_map(theta: float, dim: int = DEFAULT_AXIS_DIM, grid: int = DEFAULT_GRID) -> np.ndarray:
    """Cosine similarity [grid, grid] between the RoPE-encoded query at the grid centre and every key.

    Query and key content are the same all-ones vector, so only the rotation matters
    (the paper's Fig. 5b). Each token gets 2D RoPE over (row, col), ``dim`` features per axis.
    """
    import torch

    from op4ksr.models.rope import RescaledRoPE

    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ids = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    cos, sin = RescaledRoPE(theta, [dim, dim])(ids)  # [N, 2·dim], each pair's angle repeated twice
    cos, sin = cos.double(), sin.double()
    ones = torch.ones_like(cos)
    # Rotate the interleaved pairs (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin).
    pairs_first, pairs_second = ones[:, 0::2], ones[:, 1::2]
    rotated = torch.empty_like(cos)
    rotated[:, 0::2] = pairs_first * cos[:, 0::2] - pairs_second * sin[:, 0::2]
    rotated[:, 1::2] = pairs_second * cos[:, 1::2] + pairs_first * sin[:, 1::2]
    centre = (grid // 2) * grid + grid // 2
    query = rotated[centre]
    similarity = (rotated @ query) / (rotated.norm(dim=-1) * query.norm())
    return similarity.reshape(grid, grid).numpy()


def phase_plot(reports: list[RopePhaseReport]) -> Image.Image:
    """Fig. 5a: Δφ_i (degrees) against pair index i for each θ, with the threshold line.

    Plot text is ASCII ("theta", "dphi"): Pillow's bundled font has no Greek glyphs."""
    series = [
        Series(label=f"theta={r.theta:g}: {r.n_above}/{r.n_pairs} > {r.threshold_deg:g} deg",
               x=list(range(r.n_pairs)), y=list(r.delta_phi_deg), colour=PALETTE[k % len(PALETTE)])
        for k, r in enumerate(reports)
    ]
    threshold = reports[0].threshold_deg
    return line_plot(series, title=f"Adjacent-token phase step dphi_i = theta^(-2i/d), d = {reports[0].dim}",
                     xlabel="frequency pair index i", ylabel="dphi_i (degrees)",
                     hlines=[HLine(threshold, f"{threshold:g} deg threshold")])


def similarity_plot(thetas: list[float], dim: int = DEFAULT_AXIS_DIM, grid: int = DEFAULT_GRID) -> Image.Image:
    """Fig. 5b: one cosine-similarity map per θ, side by side, on a shared −1 … 1 scale."""
    panels = []
    for theta in thetas:
        panels.append(heatmap(
            rope_similarity_map(theta, dim, grid),
            title=f"RoPE cosine similarity to the centre query, theta={theta:g}",
            xlabel="key column (tokens)", ylabel="key row (tokens)", colorbar_label="cos sim",
            vmin=-1.0, vmax=1.0, colormap="coolwarm", side=512, marker=(grid // 2 + 0.5, grid // 2 + 0.5),
        ))
    return hstack(panels)
