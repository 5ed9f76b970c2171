"""`op4ksr inspect`: flags a grid on a real photo, writes reports, stable --json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from op4ksr.cli import app
from op4ksr.eval.diagnostics.synthetic import add_token_grid

runner = CliRunner()


def _write(tmp_path: Path) -> tuple[Path, Path]:
    clean = tmp_path / "chelsea.png"
    gridded = tmp_path / "chelsea_grid.png"
    Image.fromarray(data.chelsea()).save(clean)
    Image.fromarray(add_token_grid(data.chelsea(), 32, 2 / 255)).save(gridded)
    return clean, gridded


def test_json_flags_the_grid_and_writes_reports(tmp_path: Path) -> None:
    clean, gridded = _write(tmp_path)
    out = tmp_path / "reports"
    result = runner.invoke(app, ["inspect", str(clean), str(gridded), "--reference", str(clean),
                                 "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1
    by_name = {Path(item["path"]).name: item for item in document["images"]}
    assert by_name["chelsea_grid.png"]["flagged"] is True
    assert by_name["chelsea_grid.png"]["dominant_period"] == 32
    assert by_name["chelsea.png"]["flagged"] is False
    assert by_name["chelsea.png"]["reference"]["periodicity_loss"] == 0.0
    assert by_name["chelsea_grid.png"]["reference"]["periodicity_loss"] > 0.0
    assert by_name["chelsea_grid.png"]["reference"]["score_delta_db"] > 3.0
    folder = out / "chelsea_grid_inspect"
    for name in ("heatmap.png", "spectrum.png", "harmonics.png", "report.json", "index.html"):
        assert (folder / name).exists()
    saved = json.loads((folder / "report.json").read_text())
    assert saved["flagged"] is True and saved["schema_version"] == 1


def test_default_folder_is_beside_the_image_and_never_overwritten(tmp_path: Path) -> None:
    clean, _ = _write(tmp_path)
    before = clean.read_bytes()
    result = runner.invoke(app, ["inspect", str(clean)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "chelsea_inspect" / "index.html").exists()
    assert "no" in result.stdout
    again = runner.invoke(app, ["inspect", str(clean)])
    assert again.exit_code != 0 and "exists" in again.output
    assert runner.invoke(app, ["inspect", str(clean), "--overwrite"]).exit_code == 0
    assert clean.read_bytes() == before


def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    result = runner.invoke(app, ["inspect", str(missing)])
    assert result.exit_code != 0
    assert "missing.png" in result.output
    clean, _ = _write(tmp_path)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(small)
    result = runner.invoke(app, ["inspect", str(clean), "--reference", str(small), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "chelsea.png" in result.output and "sizes must match" in result.output


# --- misleading messages (issue 24) -----------------------------------------------------------
def _error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    return lines[0]


def test_threshold_nan_is_refused(tmp_path: Path) -> None:
    clean, _ = _write(tmp_path)
    line = _error(runner.invoke(app, ["inspect", str(clean), "--threshold-db", "nan"]))
    assert "threshold_db must be a finite number of dB, got nan" in line
    assert not (tmp_path / "chelsea_inspect").exists()


def test_a_reference_of_another_size_says_so_not_too_small(tmp_path: Path) -> None:
    clean, _ = _write(tmp_path)
    small = tmp_path / "small.png"
    Image.fromarray(data.chelsea()[:40, :50]).save(small)
    line = _error(runner.invoke(app, ["inspect", str(clean), "--reference", str(small), "--out", str(tmp_path / "r")]))
    assert "reference is 50×40, image is 451×300: sizes must match" in line and "too small" not in line


def test_inspect_suggests_only_its_own_options(tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    line = _error(runner.invoke(app, ["inspect", str(folder)]))
    assert "is a folder; inspect takes image files" in line and "--recursive" not in line
    clean, _ = _write(tmp_path)
    line = _error(runner.invoke(app, ["inspect", str(clean), "--max-pixels", "1000"]))
    assert "--max-pixels" in line  # the option it suggests exists here
    assert runner.invoke(app, ["inspect", "--help"]).output.count("--max-pixels") == 1


def test_the_table_shows_names_escaped_and_not_as_markup(tmp_path: Path) -> None:
    clean, _ = _write(tmp_path)
    odd = tmp_path / "[red]x\x1b[2Jy.png"
    odd.write_bytes(clean.read_bytes())
    result = runner.invoke(app, ["inspect", str(odd), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output  # escaped, so it cannot clear the screen
    assert "[red]x" in result.output  # shown as written, not taken as rich markup
