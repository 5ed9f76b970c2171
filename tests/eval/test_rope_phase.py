"""RoPE phase analysis: the paper's 8/28 and 15/28 counts and the Fig. 5b similarity map."""

from __future__ import annotations

import math

import numpy as np
import pytest

from op4ksr.eval.diagnostics.rope_phase import (
    phase_plot,
    rope_phase_report,
    rope_similarity_map,
    similarity_plot,
)


@pytest.mark.parametrize(("theta", "expected"), [(10000, 8), (100, 15)])
def test_paper_counts(theta: float, expected: int) -> None:
    report = rope_phase_report(theta, dim=56, threshold_deg=5.0)
    assert report.n_pairs == 28
    assert report.n_above == expected
    assert report.summary_line() == f"{expected}/28 pairs above 5°"


def test_delta_phi_first_principles() -> None:
    report = rope_phase_report(100, dim=56)
    # i = 0 → 1 rad; i = 14 → 100^(−0.5) = 0.1 rad = 5.7296° (the last pair above 5°);
    # i = 15 → 100^(−30/56) ≈ 0.0851 rad = 4.876° (the first below).
    assert report.delta_phi_rad[0] == pytest.approx(1.0)
    assert report.delta_phi_rad[14] == pytest.approx(0.1)
    assert report.delta_phi_deg[14] == pytest.approx(5.7296, abs=1e-4)
    assert report.delta_phi_deg[15] == pytest.approx(math.degrees(100 ** (-30 / 56)))
    assert report.above[14] and not report.above[15]


def test_threshold_is_compared_in_degrees() -> None:
    # 57.3° = 1 rad: only pair 0 (Δφ = 1 rad exactly) is not above a 57.29578° threshold... but
    # it is above 57°: the threshold is degrees, Δφ radians.
    assert rope_phase_report(100, threshold_deg=57.0).n_above == 1
    assert rope_phase_report(100, threshold_deg=57.3).n_above == 0


def test_similarity_map_matches_closed_form() -> None:
    # All-ones query/key: per pair the encoded dot product is 2·cos(Δp·ω_i), norms √(2·dim) each,
    # so cos sim = (Σ_i cos(Δr·ω_i) + Σ_i cos(Δc·ω_i)) / dim.
    dim, grid, theta = 8, 16, 100.0
    sim = rope_similarity_map(theta, dim=dim, grid=grid)
    assert sim.shape == (grid, grid)
    omega = theta ** (-np.arange(0, dim, 2) / dim)
    centre = grid // 2
    dr = (np.arange(grid) - centre)[:, None, None]
    dc = (np.arange(grid) - centre)[None, :, None]
    expected = (np.cos(dr * omega).sum(-1) + np.cos(dc * omega).sum(-1)) / dim
    np.testing.assert_allclose(sim, expected, atol=1e-5)
    assert sim[centre, centre] == pytest.approx(1.0)


def test_lower_theta_shrinks_the_high_similarity_zone() -> None:
    # Paper Fig. 5b: θ = 100 compresses the red zone around the centre query.
    high_default = (rope_similarity_map(10000, grid=64) > 0.9).sum()
    high_rfr = (rope_similarity_map(100, grid=64) > 0.9).sum()
    assert high_rfr < high_default


def test_plots_render_with_labels() -> None:
    fig_a = phase_plot([rope_phase_report(10000), rope_phase_report(100)])
    fig_b = similarity_plot([10000, 100], grid=32)
    assert fig_a.width >= 600 and fig_a.height >= 400
    assert fig_b.width > 2 * 512  # two panels side by side
    # The plots are not blank: many distinct colours (lines, heatmap, text).
    assert len(np.unique(np.asarray(fig_b).reshape(-1, 3), axis=0)) > 100
