"""`op4ksr analyze rope`: the paper's counts on stdout and the two PNGs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from op4ksr.cli import app

runner = CliRunner()


def test_rope_theta_10000_reports_8_of_28(tmp_path: Path) -> None:
    result = runner.invoke(app, ["analyze", "rope", "--theta", "10000", "--grid", "32", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "8/28 pairs above 5°" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()[:2].strip().isdigit()]) == 28
    assert (tmp_path / "rope_phase_theta10000.png").exists()


def test_rope_theta_100_reports_15_of_28_and_writes_pngs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["analyze", "rope", "--theta", "100", "--grid", "32", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "15/28 pairs above 5°" in result.output
    for name in ("rope_phase_theta10000_vs_theta100.png", "rope_similarity_theta10000_vs_theta100.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 500
    # Never overwrite silently.
    again = runner.invoke(app, ["analyze", "rope", "--theta", "100", "--grid", "32", "--out", str(tmp_path)])
    assert again.exit_code != 0
    assert "exists" in again.output


def test_rope_rejects_odd_dim(tmp_path: Path) -> None:
    result = runner.invoke(app, ["analyze", "rope", "--theta", "100", "--dim", "55", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "--dim 55" in result.output
