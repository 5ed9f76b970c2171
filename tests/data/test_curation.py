from __future__ import annotations

import glob
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_test_images import PHOTOS

from op4ksr.data.curation import CurationConfig, curate, progress_path, read_manifest, stage1_aggregate
from op4ksr.data.quality import (
    glcm_contrast_correlation,
    laplacian_variance,
    noise_sigma,
    shannon_entropy,
    sobel_energy,
)
from op4ksr.data.vlm import VLMConfig

GOOD = '{"texture_richness": 8, "clarity": 7}'


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in rows}


# ---- metrics, checked by hand --------------------------------------------------------------
def test_metrics_by_hand() -> None:
    checker = np.zeros((8, 8))
    checker[::2, ::2] = checker[1::2, 1::2] = 255.0
    assert shannon_entropy(checker) == pytest.approx(1.0)  # two equally likely levels
    assert shannon_entropy(np.full((8, 8), 7.0)) == 0.0
    # Laplacian of a checkerboard of ±255 is ±4·255 everywhere (reflect padding keeps the pattern
    # except at the border, where the mirrored neighbour equals the pixel itself).
    inner = laplacian_variance(checker)
    assert inner > 0.5 * (4 * 255) ** 2 / 4
    assert laplacian_variance(np.full((16, 16), 3.0)) == 0.0
    ramp = np.tile(np.arange(32, dtype=np.float64), (32, 1))
    assert sobel_energy(ramp) == pytest.approx(1.0, rel=0.1)  # one grey level per pixel
    contrast, correlation = glcm_contrast_correlation(np.full((16, 16), 100.0))
    assert contrast == 0.0 and correlation == 1.0
    noise = np.random.default_rng(0).normal(128, 5.0, (256, 256))
    assert noise_sigma(noise) == pytest.approx(5.0, rel=0.05)


def test_fast_filters_equal_scipy() -> None:
    from scipy import ndimage

    g = np.random.default_rng(1).random((37, 53)).astype(np.float32) * 255
    assert laplacian_variance(g) == pytest.approx(float(ndimage.laplace(g, mode="reflect").var()), rel=1e-5)
    sob = np.hypot(ndimage.sobel(g, 1, mode="reflect"), ndimage.sobel(g, 0, mode="reflect")).mean() / 8
    assert sobel_energy(g) == pytest.approx(float(sob), rel=1e-5)


def test_aggregate_ranks() -> None:
    rows = [{"scores": {"glcm_contrast": c, "glcm_correlation": r, "entropy": e}}
            for c, r, e in [(10, 0.9, 7), (1, 0.99, 5), (5, 0.95, 6)]]
    assert stage1_aggregate(rows) == [1.0, 0.0, 0.5]


# ---- the whole command ---------------------------------------------------------------------
def test_curate_ranks_rejects_and_resumes(mixed_folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    first = curate([mixed_folder], manifest, workers=2)
    rows = by_name(first.rows)
    assert first.scored == 12 and "readme.txt" not in rows  # 4 photos, 4 blurred, flat, gradient, 2 bad
    order = [Path(r["path"]).name for r in first.rows]
    photos = [f"{p}.png" for p in PHOTOS]
    worse = [f"{p}_blurred.png" for p in PHOTOS] + ["flat.png", "gradient.png"]
    assert max(order.index(p) for p in photos) < min(order.index(w) for w in worse)
    assert [r["rank"] for r in first.rows] == list(range(1, 13))
    # top 50% of the 4 photos survive stage (i)
    assert sorted(n for n, r in rows.items() if r["status"] == "kept") == sorted(order[:2])
    for bad in worse:
        assert rows[bad]["status"] == "rejected" and rows[bad]["stage"] == 1
    assert "Laplacian" in rows["flat.png"]["reason"]
    assert rows["truncated.jpg"]["status"] == "rejected" and "truncated" in rows["truncated.jpg"]["reason"]
    # io's reason (one reader, one error type: the same words as `op4ksr upscale` reports)
    assert rows["notes.png"]["status"] == "rejected" and "not an image (format not recognised)" in rows["notes.png"]["reason"]
    for r in first.rows:
        if r["stage"] != 0:
            assert set(r["scores"]) >= {"laplacian_var", "sobel_energy", "glcm_contrast", "glcm_correlation",
                                        "entropy", "blur", "noise_sigma"}
            assert len(r["sha256"]) == 64
    text = manifest.read_text()

    second = curate([mixed_folder], manifest, workers=2)
    assert second.scored == 0 and not second.manifest_written
    assert manifest.read_text() == text


def test_resume_after_interruption(mixed_folder: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(mixed_folder, src)
    manifest = tmp_path / "m.jsonl"
    full = curate([src], tmp_path / "reference.jsonl", workers=1)
    # Simulate a crash: keep only 5 progress lines plus a half-written one, no manifest.
    lines = progress_path(tmp_path / "reference.jsonl").read_text().splitlines(keepends=True)
    progress_path(manifest).write_text("".join(lines[:5]) + lines[5][:40])
    resumed = curate([src], manifest, workers=1)
    assert resumed.scored == len(full.rows) - 5
    assert read_manifest(manifest) == read_manifest(tmp_path / "reference.jsonl")
    # A changed file is scored again; the others are not.
    (src / "flat.png").write_bytes((src / "chelsea.png").read_bytes())
    again = curate([src], manifest, workers=1)
    assert again.scored == 1 and by_name(again.rows)["flat.png"]["stage"] != 0


def test_foreign_manifest_is_not_overwritten(mixed_folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("someone else's\n")
    with pytest.raises(FileExistsError, match="m.jsonl"):
        curate([mixed_folder / "coffee.png"], manifest, workers=1)
    assert manifest.read_text() == "someone else's\n"


def test_stage2_thresholds_and_plugin_scorer(mixed_folder: Path, tmp_path: Path) -> None:
    from op4ksr.data.aesthetic import ScorerSpec

    cfg = CurationConfig(keep_fraction=1.0, max_noise_sigma=1.0,
                         scorers=(ScorerSpec("op4ksr.data.quality:to_gray255"),))
    # to_gray255 is not a valid scorer (returns an array): the error is recorded per file, no crash
    res = curate([mixed_folder / "astronaut.png", mixed_folder / "rocket.png"], tmp_path / "m.jsonl", cfg, workers=1)
    for r in res.rows:
        assert "op4ksr.data.quality:to_gray255" in r["scorer_errors"]
        assert r["status"] == "rejected" and r["stage"] == 2 and "noise sigma" in r["reason"]


def test_stage3_with_fake_vlm(mixed_folder: Path, tmp_path: Path, vlm_server) -> None:
    # Answers per request: good for 'coffee'-sized images, garbage for the others.
    def behaviour(n: int) -> tuple[str, float]:
        return (GOOD, 0) if n % 2 == 0 else ("cannot tell", 0)

    with vlm_server(behaviour) as (url, server):
        cfg = CurationConfig(keep_fraction=1.0, vlm=VLMConfig(url=url, retries=0, concurrency=1, min_score=7.5))
        res = curate([mixed_folder], tmp_path / "m.jsonl", cfg, workers=1)
        sent = len(server.requests)
        photos = [r for r in res.rows if Path(r["path"]).name in {f"{p}.png" for p in PHOTOS}]
        assert sent == 4 == res.vlm_requests  # only stage (i)/(ii) survivors are sent
        ok = [r for r in photos if "vlm_clarity" in r["scores"]]
        failed = [r for r in photos if "VLM assessment failed" in (r["reason"] or "")]
        assert len(ok) == 2 and len(failed) == 2
        assert all(r["status"] == "kept" and r["scores"]["vlm_texture_richness"] == 8 for r in ok)
        # A re-run retries only the failures, and keeps the cached answers.
        server.behaviour = lambda n: (GOOD, 0)
        again = curate([mixed_folder], tmp_path / "m.jsonl", cfg, workers=1)
        assert again.scored == 0 and again.vlm_requests == 2
        assert sum(r["status"] == "kept" for r in again.rows) == 4


def test_ray_local_mode_gives_the_same_manifest(mixed_folder: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    local = curate([mixed_folder], tmp_path / "local.jsonl", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = curate([mixed_folder], tmp_path / "ray.jsonl", ray_address="local")
    finally:
        ray.shutdown()
    assert remote.scored == local.scored == 12
    assert read_manifest(tmp_path / "ray.jsonl") == read_manifest(tmp_path / "local.jsonl")


debian = sorted(glob.glob("/usr/share/wallpapers/*/contents/images/2560x1600.jpg"))[:4]


@pytest.mark.skipif(not debian, reason="Debian wallpaper photos not installed")
def test_debian_photos_rank_above_blurred(tmp_path: Path) -> None:
    from data_test_images import blurred
    from PIL import Image

    for i, path in enumerate(debian):
        rgb = np.asarray(Image.open(path).convert("RGB").reduce(4))
        Image.fromarray(rgb).save(tmp_path / f"photo{i}.png")
        Image.fromarray(blurred(rgb, 3.0)).save(tmp_path / f"photo{i}_blurred.png")
    res = curate([tmp_path], tmp_path / "out" / "m.jsonl", CurationConfig(keep_fraction=1.0), workers=2)
    blurred_rows = [r for r in res.rows if "_blurred" in r["path"]]
    assert all(r["status"] == "rejected" for r in blurred_rows)
    assert math.isfinite(res.rows[0]["stage1_aggregate"])
