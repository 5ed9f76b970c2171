"""Grid-artifact inspector: spectral building blocks (hand-computed) and real-photo behaviour."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from op4ksr.eval.diagnostics.inspector import (
    DEFAULT_THRESHOLD_DB,
    SCHEMA_VERSION,
    InspectorConfig,
    grid_score,
    inspect_image,
    tile_scores,
)
from op4ksr.eval.diagnostics.spectrum import (
    exclusive_harmonics,
    fold_lines,
    line_power_spectrum,
    local_background,
    log_magnitude_spectrum,
    to_luma,
)
from op4ksr.eval.diagnostics.synthetic import add_token_grid, token_grid


def _jpeg(array: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


# --- building blocks -------------------------------------------------------------------------


def test_exclusive_harmonics() -> None:
    assert exclusive_harmonics(32) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert exclusive_harmonics(12) == [1, 5]  # 2, 3, 4, 6 belong to periods 6, 4, 3, 2
    assert exclusive_harmonics(8) == [1, 3]


def test_line_power_spectrum_of_a_cosine() -> None:
    # cos(2π·4x/32): rfft bin 4 = n/2 = 16, power 256; all other bins 0 (mean already 0).
    x = np.arange(32)
    lines = np.tile(np.cos(2 * np.pi * 4 * x / 32), (3, 1))
    power = line_power_spectrum(lines)
    assert power.shape == (17,)
    assert power[4] == pytest.approx(256.0)
    assert np.delete(power, 4).max() < 1e-20


def test_fold_lines_averages_equal_phases() -> None:
    lines = np.arange(6 * 2, dtype=float).reshape(6, 2)  # rows [0,1],[2,3],…,[10,11]
    folded = fold_lines(lines, 3)
    # phase 0: rows 0 and 3 → ([0,1]+[6,7])/2 = [3,4]; phase 1: [5,6]; phase 2: [7,8]
    np.testing.assert_allclose(folded, [[3, 4], [5, 6], [7, 8]])
    with pytest.raises(ValueError):
        fold_lines(lines, 4)


def test_local_background_ignores_the_bin_itself() -> None:
    power = np.ones(64)
    power[20] = 1000.0
    background = local_background(power, half_window=4, gap=1)
    assert background[20] == pytest.approx(1.0)
    assert background[10] == pytest.approx(1.0)


def test_to_luma_rec601_and_inputs() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    np.testing.assert_allclose(to_luma(rgb), 0.299)
    tensor = torch.zeros(1, 3, 2, 2)
    tensor[:, 1] = 1.0
    np.testing.assert_allclose(to_luma(tensor), 0.587, rtol=1e-6)
    np.testing.assert_allclose(to_luma(np.full((2, 2), 65535, np.uint16)), 1.0)


def test_log_spectrum_shows_grid_spikes() -> None:
    spectrum = log_magnitude_spectrum(token_grid(128, 128, 32, 1.0))
    centre = 64
    # Product of two ±1 square waves: energy at odd multiples (of 128/32 = 4 bins) on both axes.
    assert spectrum[centre + 4, centre + 4] > 5 * spectrum[centre + 2, centre + 2] + 1
    assert spectrum.shape == (128, 128)


# --- whole images ----------------------------------------------------------------------------

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_flags_two_level_grid_on_real_photo(name: str) -> None:
    photo = PHOTOS[name]()
    report = inspect_image(add_token_grid(photo, period=32, amplitude=2 / 255))
    assert report.flagged
    assert report.dominant_period == 32
    assert report.dominant_feature == "signed"
    assert report.score_db > DEFAULT_THRESHOLD_DB
    assert report.acf_score > 0


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_clean_and_jpeg30_not_flagged_jpeg_is_period_8(name: str) -> None:
    photo = PHOTOS[name]()
    clean = inspect_image(photo)
    assert not clean.flagged
    jpeg = inspect_image(_jpeg(photo, 30))
    assert not jpeg.flagged
    assert jpeg.dominant_period == 8
    assert jpeg.dominant_feature == "gradient"


def test_bicubic_x4_upscale_not_flagged() -> None:
    photo = data.astronaut()
    up = np.asarray(Image.fromarray(photo).resize((2048, 2048), Image.Resampling.BICUBIC))
    report = inspect_image(up)
    assert not report.flagged
    assert report.dominant_period in (None, 4)  # bicubic ×4's own interpolation pattern


def test_grid_score_matches_report_and_accepts_tensors() -> None:
    gridded = add_token_grid(data.coffee(), 32, 2 / 255)
    report = inspect_image(gridded)
    assert grid_score(gridded) == pytest.approx(report.score_db)
    tensor = torch.from_numpy(gridded).permute(2, 0, 1).float() / 255
    assert grid_score(tensor) == pytest.approx(report.score_db, abs=1e-4)
    assert grid_score(tensor[None]) == pytest.approx(report.score_db, abs=1e-4)


def test_tile_scores_are_the_heatmap_and_shift_with_the_offset() -> None:
    rng = np.random.default_rng(0)
    base = 0.5 + 0.02 * rng.standard_normal((768, 768))
    base[:256, :256] += token_grid(256, 256, 32, 2 / 255)
    report = inspect_image(base)
    np.testing.assert_allclose(tile_scores(base), report.heatmap.ravel())
    shifted = tile_scores(base, offset=128)  # 512² left after cropping 128 px per side: 2 × 2 tiles
    assert shifted.shape == (4,)
    # only the first shifted tile overlaps the grid (a quarter of it): it scores highest, above the threshold
    assert shifted[0] > DEFAULT_THRESHOLD_DB > shifted[1:].max()


def test_heatmap_locates_a_local_grid() -> None:
    rng = np.random.default_rng(0)
    base = 0.5 + 0.02 * rng.standard_normal((512, 512))
    base[:256, :256] += token_grid(256, 256, 32, 2 / 255)  # grid only in the top-left quadrant
    report = inspect_image(base)
    heat = report.heatmap
    assert heat.shape == (512 // report.heatmap_tile, 512 // report.heatmap_tile)
    half = heat.shape[0] // 2
    assert heat[:half, :half].min() > heat[half:, half:].max()
    assert report.flagged


def test_other_periods_and_config() -> None:
    rng = np.random.default_rng(1)
    base = 0.5 + 0.02 * rng.standard_normal((512, 512))
    gridded = base + token_grid(512, 512, 16, 2 / 255)
    assert inspect_image(gridded).dominant_period == 16
    assert not inspect_image(gridded).flagged  # a 16-px grid is not the 32-px token grid
    assert inspect_image(gridded, InspectorConfig(period=16)).flagged


def test_json_summary_is_stable() -> None:
    report = inspect_image(add_token_grid(data.chelsea(), 32, 2 / 255))
    summary = report.to_dict()
    assert summary["schema_version"] == SCHEMA_VERSION == 1
    assert list(summary) == [
        "schema_version", "height", "width", "period", "score_db", "threshold_db", "flagged",
        "axis_scores_db", "acf_score", "acf_at_period", "dominant_period", "dominant_feature",
        "period_scores_db", "harmonics", "heatmap_tile", "heatmap_max_db",
    ]
    assert (summary["height"], summary["width"], summary["period"]) == (300, 451, 32)
    assert [h["k"] for h in summary["harmonics"]] == list(range(1, 17))
    assert [h["k"] for h in summary["harmonics"] if h["exclusive"]] == exclusive_harmonics(32)
    text = json.dumps(summary, sort_keys=True)
    assert json.loads(text) == json.loads(json.dumps(report.to_dict(), sort_keys=True))


def test_rejects_images_smaller_than_a_period() -> None:
    with pytest.raises(ValueError, match="smaller than one period|too small"):
        inspect_image(np.zeros((20, 20)))


def test_a_failed_report_write_leaves_nothing_that_blocks_the_rerun(tmp_path, monkeypatch):
    from op4ksr.eval.diagnostics import inspector
    from op4ksr.utils import atomic

    report = inspect_image(np.random.default_rng(0).random((64, 64, 3), dtype=np.float32))
    real_write = atomic.atomic_write_text

    def full_disk_at_html(path, text, **kwargs):
        if path.name == "index.html":
            raise OSError(28, "No space left on device")
        return real_write(path, text, **kwargs)

    monkeypatch.setattr(atomic, "atomic_write_text", full_disk_at_html)
    with pytest.raises(OSError, match="No space left"):
        inspector.save_inspection(report, tmp_path / "r", image_name="x.png")
    assert not (tmp_path / "r").exists()  # the PNGs and report.json written before are gone too
    monkeypatch.setattr(atomic, "atomic_write_text", real_write)
    paths = inspector.save_inspection(report, tmp_path / "r", image_name="x.png")  # no "exists"
    assert all(p.is_file() for p in paths.values())
