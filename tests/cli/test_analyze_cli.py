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


def test_ceiling_reports_the_decoder_next_to_the_sr_output(tmp_path: Path) -> None:
    import json

    import numpy as np

    from op4ksr.data.bench_suites import BenchConfig, build_suite
    from op4ksr.models.presets import build_pipeline

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    build_suite("mild", [tmp_path / "p0.png", tmp_path / "p1.png"], tmp_path / "mild", BenchConfig(long_side=128))
    build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "m")
    result = runner.invoke(app, ["analyze", "ceiling", str(tmp_path / "m"), str(tmp_path / "mild"), "--crop", "64",
                                 "--steps", "3", "--metrics", "psnr_y,delta_e", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["images"]) == 2
    means = doc["means"]["mild"]
    assert set(means) == {"vae", "sr", "sr_fidelity0", "bicubic"}
    # an untrained compensation is the identity: fidelity 0 gives the same numbers
    assert means["sr"] == means["sr_fidelity0"]
    assert all(np.isfinite(v) for variant in means.values() for v in variant.values())
    bad = runner.invoke(app, ["analyze", "ceiling", str(tmp_path / "m"), str(tmp_path / "mild"), "--metrics", "niqe"])
    assert bad.exit_code != 0 and "niqe (no-reference)" in bad.output
