"""Tables (CSV, Markdown) and the HTML report, from hand-built results with known values."""

from __future__ import annotations

import base64
import csv
import io
import re

import numpy as np
import pytest
from PIL import Image

from op4ksr.data.bench_suites import BenchConfig as SuiteConfig
from op4ksr.data.bench_suites import build_suite
from op4ksr.eval.bench import (
    BenchConfig,
    BenchResults,
    ImageResult,
    MethodEfficiency,
    MethodInfo,
    MetricInfo,
    run_bench,
)
from op4ksr.eval.report import (
    ReportConfig,
    choose_crop,
    html_report,
    markdown_tables,
    rank_marks,
    summary_csv,
    write_reports,
)


def _results() -> BenchResults:
    """Two methods, a syn suite (GT) and a real suite (no GT); psnr means 30/20, niqe 3/5."""
    methods = [MethodInfo("a", "a", 4, "cpu"), MethodInfo("b", "b:x", 4, "cpu")]
    metrics = [MetricInfo("psnr_y", False, True), MetricInfo("niqe", True, False),
               MetricInfo("musiq", False, False, "pyiqa not installed")]
    images = []
    for suite, gt in (("syn", True), ("real", False)):
        for image, (pa, pb) in (("x", (29.0, 21.0)), ("y", (31.0, 19.0))):
            for method, psnr, niqe in (("a", pa, 3.0), ("b", pb, 5.0)):
                values = {"niqe": niqe, **({"psnr_y": psnr} if gt else {})}
                images.append(ImageResult(suite, image, method, f"outputs/{suite}/{method}/{image}.png", 0.5, [0.5], values))
    return BenchResults(
        suites=[{"label": "syn", "kind": "syn", "folder": "-", "images": 2, "has_ground_truth": True},
                {"label": "real", "kind": "realsquare", "folder": "-", "images": 2, "has_ground_truth": False}],
        methods=methods, metrics=metrics, images=images,
        efficiency=[MethodEfficiency("a", 5.75, 32 * 2**30, "cuda_max_allocated", 4),
                    MethodEfficiency("b", 91.33, 64 * 2**30, "cuda_max_allocated", 4)],
        config={"warmup_runs": 1, "timed_runs": 3, "patch": {"size": 512, "stride": 512}},
        environment={"gpu": "Test GPU", "device": "cuda", "torch": "x"},
    )


def test_rank_marks_on_printed_values():
    assert rank_marks(["1.0", "2.0", "3.0"], lower_better=False) == [None, "second", "best"]
    assert rank_marks(["1.0", "2.0", "3.0"], lower_better=True) == ["best", "second", None]
    assert rank_marks(["2.00", "2.00", "1.00", ""], lower_better=False) == ["best", "best", "second", None]
    assert rank_marks(["5", ""], lower_better=True) == ["best", None]


def test_markdown_tables_have_the_papers_shape():
    md = markdown_tables(_results())
    table3 = md.split("## Synthetic")[1].split("## Real")[0]
    table4 = md.split("## Real")[1].split("## Efficiency")[0]
    assert "| Dataset | Metric | a | b |" in table3
    assert "| syn | PSNR ↑ | **30.00** | <u>20.00</u> |" in table3
    assert "|  | NIQE ↓ | **3.00** | <u>5.00</u> |" in table3
    # Full-reference rows only with ground truth; the unavailable metric's row says why.
    assert "PSNR" not in table4 and "| real | NIQE ↓ | **3.00** | <u>5.00</u> |" in table4
    assert "| MUSIQ ↑ [1] | – | – |" in table4
    assert "[1] pyiqa not installed" in md
    eff = md.split("## Efficiency")[1]
    assert "| Inference time (s) ↓ | **5.75** | <u>91.33</u> |" in eff
    assert "| Memory usage (GiB) ↓ | **32.00** | <u>64.00</u> |" in eff
    assert "CUDA max allocated" in eff and "Test GPU" in eff and "512×512 crops, stride 512" in md


def test_summary_csv_holds_full_precision_means():
    rows = list(csv.DictReader(io.StringIO(summary_csv(_results()))))
    assert [(r["suite"], r["metric"]) for r in rows] == [
        ("syn", "psnr_y"), ("syn", "niqe"), ("syn", "musiq"), ("real", "niqe"), ("real", "musiq")]
    assert float(rows[0]["a"]) == 30.0 and float(rows[0]["b"]) == 20.0 and rows[0]["better"] == "higher"
    assert rows[2]["a"] == "" and rows[2]["reason"] == "pyiqa not installed"


def test_choose_crop_finds_the_textured_window():
    luma = np.zeros((40, 60))
    luma[20:28, 44:52] = np.indices((8, 8)).sum(0) % 2  # a checkerboard patch, the only texture
    top, left, h, w = choose_crop(luma, scale=4, crop=32)  # 8 LR px
    assert (top, left, h, w) == (20 * 4, 44 * 4, 32, 32)
    # A crop larger than the image is clamped to it.
    assert choose_crop(luma, scale=4, crop=1000) == (0, 0, 160, 240)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "src").mkdir()
    import skimage.data

    Image.fromarray(skimage.data.chelsea()[::3, ::3]).save(root / "src" / "chelsea.png")
    build_suite("syn", [root / "src"], root / "syn", SuiteConfig(long_side=128, scale=4))
    run_bench([root / "syn"], root / "res", BenchConfig(methods=("bicubic", "lanczos"), metrics=("psnr_y",), timed_runs=1))
    return root


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_html_report_embeds_every_panel_as_png(bench_dir):
    from op4ksr.eval.bench import load_results

    results = load_results(bench_dir / "res")
    page = html_report(results, bench_dir / "res", ReportConfig(crop=64))
    sources = _img_sources(page)
    # LR crop + (2 methods + GT) × (crop, spectrum, heatmap).
    assert len(sources) == 1 + 3 * 3
    crops = []
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        crops.append(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    assert all(im.size == (64, 64) for im in crops[:2])  # LR (nearest) and bicubic crops: same place, same size
    assert "http" not in page.lower().replace("http-equiv", "")  # nothing loaded from outside


def test_report_files_mode_links_relative_files_and_refuses_to_overwrite(bench_dir):
    from op4ksr.eval.bench import load_results

    out = bench_dir / "res"
    results = load_results(out)
    paths = write_reports(results, out, ReportConfig(crop=64, embed=False))
    page = paths["report.html"].read_text()
    sources = _img_sources(page)
    assert len(sources) == 10 and all(s.startswith("report_files/") for s in sources)
    assert all(Image.open(out / s).size[0] > 0 for s in sources)
    assert {p.name for p in paths.values()} == {"summary.csv", "per_image.csv", "efficiency.csv", "tables.md", "report.html"}
    with pytest.raises(FileExistsError, match="summary.csv: exists"):
        write_reports(results, out, ReportConfig(crop=64, embed=False))
