"""The benchmark runner on tiny suites built with the real suite builder (32×32 LR, ×4)."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from op4ksr.data.bench_suites import BenchConfig as SuiteConfig
from op4ksr.data.bench_suites import build_suite
from op4ksr.eval.bench import (
    BenchConfig,
    BenchResults,
    PeakMemory,
    load_results,
    load_suite,
    method_label,
    method_labels,
    run_bench,
)
from op4ksr.eval.metrics import Metric, MetricUnavailable, register_metric
from op4ksr.eval.peers import SRMethod, register_method

HOG_BYTES = 192 * 2**20


@register_method("test-bench-hog")
class _Hog(SRMethod):
    """Bicubic that also touches ``HOG_BYTES`` of memory per call (a known peak)."""

    def __init__(self, arg=None, *, device="cpu"):
        super().__init__(name="test-bench-hog", scale=4, device="cpu")

    def upscale(self, lr):
        buffer = np.ones(HOG_BYTES // 8)  # float64, written → resident
        assert buffer[-1] == 1.0
        return F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


@register_method("test-bench-counter")
class _Counter(SRMethod):
    """Nearest ×4 that counts its calls."""

    calls = 0

    def __init__(self, arg=None, *, device="cpu"):
        super().__init__(name="test-bench-counter", scale=4, device="cpu")

    def upscale(self, lr):
        type(self).calls += 1
        return F.interpolate(lr, scale_factor=4, mode="nearest")


@register_metric
class _NeedsWeights(Metric):
    name = "test_bench_needs_weights"
    lower_better = False
    full_reference = False

    def __init__(self):
        raise MetricUnavailable(self.name, "weights not found in ~/weights (test)")


def _sources(folder):
    folder.mkdir()
    # 1/3-size skimage photos: ≥128 px on the long side, so the syn suite gets 128-px HR, 32-px LR.
    Image.fromarray(skimage.data.astronaut()[::3, ::3]).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.coffee()[::3, ::3]).save(folder / "coffee.png")
    return folder


@pytest.fixture(scope="module")
def syn_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    build_suite("syn", [_sources(root / "src")], root / "syn", SuiteConfig(long_side=128, scale=4))
    return root / "syn"


@pytest.fixture(scope="module")
def real_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    build_suite("realsquare", [_sources(root / "src")], root / "real", SuiteConfig(size=32))
    return root / "real"


def _y_psnr(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> float:
    """MATLAB-convention PSNR on Y, written out independently of op4ksr.eval.metrics."""
    def y(img):
        rgb = img.astype(np.float64)
        return (16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0)[border:-border, border:-border]
    mse = np.mean((y(sr_u8) - y(hr_u8)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_method_labels_are_short_unique_and_filesystem_safe():
    assert method_label("bicubic") == "bicubic"
    assert method_label("op4ksr:runs/x/model") == "op4ksr-model"
    assert method_label("op4ksr-tiled:runs/x/model/") == "op4ksr-tiled-model"
    assert method_label("realesrgan:/w/x4 plus.safetensors") == "realesrgan-x4_plus"
    assert method_labels(["op4ksr:a/model", "op4ksr:b/model"]) == ["op4ksr-model", "op4ksr-model-2"]


def test_config_rejects_duplicates_and_empty_lists():
    with pytest.raises(ValueError, match="method 'bicubic' given twice"):
        BenchConfig(methods=("bicubic", "bicubic"))
    with pytest.raises(ValueError, match="no metrics"):
        BenchConfig(metrics=())
    with pytest.raises(ValueError, match="timed_runs"):
        BenchConfig(timed_runs=0)


def test_load_suite_reads_the_manifest_and_detects_changed_files(syn_suite, tmp_path):
    suite = load_suite(syn_suite)
    assert suite.kind == "syn" and suite.has_ground_truth
    assert [i.name for i in suite.items] == ["astronaut", "coffee"]
    assert Image.open(suite.items[0].lr).size == (32, 32) and Image.open(suite.items[0].hr).size == (128, 128)
    assert len(load_suite(syn_suite, max_images=1).items) == 1
    # A copy with one LR changed is refused, naming the file.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(syn_suite, copy)
    Image.new("RGB", (32, 32)).save(copy / "lr" / "coffee.png")
    with pytest.raises(ValueError, match="coffee.png: missing or changed"):
        load_suite(copy)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        load_suite(tmp_path)


def test_bicubic_outputs_and_psnr_match_an_independent_computation(syn_suite, tmp_path):
    config = BenchConfig(methods=("bicubic",), metrics=("psnr_y", "periodicity"), timed_runs=1)
    results = run_bench([syn_suite], tmp_path, config)
    suite = load_suite(syn_suite)
    values = []
    for item in suite.items:
        lr = torch.from_numpy(np.asarray(Image.open(item.lr), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        expected = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        expected_u8 = np.floor(expected[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        written = np.asarray(Image.open(tmp_path / "outputs" / "syn" / "bicubic" / f"{item.name}.png"))
        np.testing.assert_array_equal(written, expected_u8)
        row = next(r for r in results.images if r.image == item.name)
        psnr = _y_psnr(written, np.asarray(Image.open(item.hr)), border=4)
        assert row.metrics["psnr_y"] == pytest.approx(psnr, abs=1e-9)
        values.append(psnr)
    assert results.mean("syn", "bicubic", "psnr_y") == pytest.approx(np.mean(values), abs=1e-9)
    # results.json round-trips to the same dataclasses.
    assert load_results(tmp_path) == results


def test_full_reference_metrics_only_where_ground_truth_exists(real_suite, tmp_path):
    config = BenchConfig(methods=("bicubic",), metrics=("psnr_y", "periodicity"), timed_runs=1)
    results = run_bench([real_suite], tmp_path, config)
    assert not results.suite_info("real")["has_ground_truth"]
    assert all("psnr_y" not in r.metrics for r in results.images)
    assert all(r.metrics["periodicity"] is not None for r in results.images)
    assert not results.metric_applies("real", "psnr_y") and results.metric_applies("real", "periodicity")


def test_unavailable_metric_is_kept_with_its_reason(syn_suite, tmp_path):
    config = BenchConfig(methods=("bicubic",), metrics=("test_bench_needs_weights",), timed_runs=1)
    results = run_bench([syn_suite], tmp_path, config)
    assert results.metric_info("test_bench_needs_weights").unavailable == "weights not found in ~/weights (test)"
    assert results.mean("syn", "bicubic", "test_bench_needs_weights") is None
    assert results.empty_reason("syn", "test_bench_needs_weights") == "weights not found in ~/weights (test)"


def test_timing_is_one_warmup_then_the_median_of_the_timed_calls(syn_suite, tmp_path):
    _Counter.calls = 0
    config = BenchConfig(methods=("test-bench-counter",), metrics=("periodicity",), warmup_runs=1, timed_runs=3)
    results = run_bench([syn_suite], tmp_path, config)
    assert _Counter.calls == 2 * (1 + 3)  # two images
    for row in results.images:
        assert len(row.runs) == 3 and row.seconds == statistics.median(row.runs)
    (eff,) = results.efficiency
    assert eff.seconds == statistics.median([r.seconds for r in results.images]) and eff.images == 2


def test_peak_memory_is_measured_per_method(syn_suite, tmp_path):
    config = BenchConfig(methods=("bicubic", "test-bench-hog"), metrics=("periodicity",), timed_runs=1)
    results = run_bench([syn_suite], tmp_path, config)
    small, hog = results.efficiency
    assert small.peak_memory_bytes > 0
    if small.memory_kind != "cpu_peak_rss":
        pytest.skip(f"per-method RSS peak not available here ({small.memory_kind})")
    # The hog's peak holds its buffer; bicubic's (measured first, then reset) does not.
    assert hog.peak_memory_bytes - small.peak_memory_bytes >= 0.9 * HOG_BYTES


def test_peak_memory_context_reports_a_kind():
    with PeakMemory(torch.device("cpu")) as peak:
        np.ones(2**20).sum()
    assert peak.kind in ("cpu_peak_rss", "cpu_peak_rss_process") and peak.peak_bytes > 8 * 2**20


def test_runs_are_deterministic_and_never_overwrite(syn_suite, tmp_path, tiny_model_dir):
    config = BenchConfig(methods=("bicubic", f"op4ksr:{tiny_model_dir}"), metrics=("psnr_y", "ssim_y"), timed_runs=1)
    first = run_bench([syn_suite], tmp_path / "a", config)
    second = run_bench([syn_suite], tmp_path / "b", config)
    for a, b in zip(first.images, second.images, strict=True):
        assert a.metrics == b.metrics
        assert (tmp_path / "a" / a.output).read_bytes() == (tmp_path / "b" / b.output).read_bytes()
    assert [m.label for m in first.methods] == ["bicubic", "op4ksr-tiny-model"]
    before = (tmp_path / "a" / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match="results.json: exists"):
        run_bench([syn_suite], tmp_path / "a", config)
    assert (tmp_path / "a" / "results.json").read_bytes() == before
    run_bench([syn_suite], tmp_path / "a", config, overwrite=True)
    assert json.loads((tmp_path / "a" / "results.json").read_text())["schema_version"] == 1


def test_a_method_that_cannot_load_is_named(syn_suite, tmp_path):
    with pytest.raises(ValueError, match="method 'op4ksr:.*nowhere'"):
        run_bench([syn_suite], tmp_path, BenchConfig(methods=(f"op4ksr:{tmp_path / 'nowhere'}",), metrics=("psnr_y",)))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run_bench([syn_suite], tmp_path, BenchConfig(methods=("nope",), metrics=("psnr_y",)))


def test_results_from_dict_rejects_other_schemas():
    with pytest.raises(ValueError, match="schema_version"):
        BenchResults.from_dict({"schema_version": 99})
