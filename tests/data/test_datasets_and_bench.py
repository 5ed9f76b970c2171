from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from op4ksr.data.bench_suites import BenchConfig, build_suite, verify_suite
from op4ksr.data.curation import curate
from op4ksr.data.datasets import DatasetConfig, PairedImageDataset


@pytest.fixture(scope="module")
def photos(mixed_folder: Path) -> list[Path]:
    return [mixed_folder / f"{n}.png" for n in ("astronaut", "coffee", "chelsea", "rocket")]


def test_dataset_shapes_and_crop_content(photos: list[Path]) -> None:
    ds = PairedImageDataset(photos, DatasetConfig(crop_size=64, scale=4, flips=False, rotations=False))
    item = ds[0]
    assert item["hr"].shape == (3, 64, 64) and item["lr"].shape == (3, 16, 16)
    # The HR crop is a real window of the photo.
    full = np.asarray(Image.open(item["path"]).convert("RGB"))
    hr = (item["hr"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ys, xs = np.nonzero((full[: -63, : -63] == hr[0, 0]).all(axis=-1))
    assert any(np.array_equal(full[y : y + 64, x : x + 64], hr) for y, x in zip(ys, xs))


def test_validation_is_deterministic_and_centred(photos: list[Path]) -> None:
    ds = PairedImageDataset(photos, DatasetConfig(crop_size=64, train=False))
    a, b = ds[1], ds[1]
    ds.set_epoch(5)
    c = ds[1]
    assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], c["lr"])
    full = np.asarray(Image.open(ds.paths[1]).convert("RGB"))
    h, w = full.shape[:2]
    centre = full[(h - 64) // 2 : (h - 64) // 2 + 64, (w - 64) // 2 : (w - 64) // 2 + 64]
    assert torch.equal(a["hr"], torch.from_numpy(centre.copy()).permute(2, 0, 1).float() / 255)


def test_training_crops_change_with_epoch_and_not_with_workers(photos: list[Path]) -> None:
    ds = PairedImageDataset(photos, DatasetConfig(crop_size=32, scale=4, preset="s3diff"))
    e0 = ds[2]["hr"]
    ds.set_epoch(1)
    assert not torch.equal(e0, ds[2]["hr"])
    inline = [b["lr"] for b in DataLoader(ds, batch_size=2, num_workers=0)]
    workers = [b["lr"] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(inline, workers, strict=True))


def test_dataset_from_manifest_and_skips_small(mixed_folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    res = curate([mixed_folder], manifest, workers=1)
    ds = PairedImageDataset([manifest], DatasetConfig(crop_size=64, preset=None))
    assert sorted(str(p) for p in ds.paths) == sorted(r["path"] for r in res.rows if r["status"] == "kept")
    assert "lr" not in ds[0]
    big = PairedImageDataset([mixed_folder / "coffee.png"], DatasetConfig(crop_size=512, preset=None))
    assert len(big) == 0 and "smaller than the crop" in big.skipped[0][1]


def sha_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_bench_syn_rebuild_is_identical(mixed_folder: Path, tmp_path: Path) -> None:
    cfg = BenchConfig(long_side=256, scale=4, seed=7)
    a = build_suite("syn", [mixed_folder], tmp_path / "a", cfg)
    build_suite("syn", [mixed_folder], tmp_path / "b", cfg)
    assert sha_tree(tmp_path / "a") == sha_tree(tmp_path / "b")
    manifest = json.loads(a.manifest.read_text())
    assert manifest["settings"]["seed"] == 7 and manifest["suite"] == "syn"
    assert {Path(s["source"]).name for s in manifest["skipped"]} == {"truncated.jpg", "notes.png"}
    for entry in manifest["files"]:
        hr = Image.open(tmp_path / "a" / entry["hr"]["file"])
        lr = Image.open(tmp_path / "a" / entry["lr"]["file"])
        assert max(hr.size) == 256 and hr.size[0] % 4 == 0 and hr.size[1] % 4 == 0
        assert lr.size == (hr.size[0] // 4, hr.size[1] // 4)
        assert entry["lr"]["sha256"] == hashlib.sha256((tmp_path / "a" / entry["lr"]["file"]).read_bytes()).hexdigest()
    assert verify_suite(tmp_path / "a") == []
    # another seed changes the LR but not the HR
    build_suite("syn", [mixed_folder], tmp_path / "c", BenchConfig(long_side=256, seed=8))
    ta, tc = sha_tree(tmp_path / "a"), sha_tree(tmp_path / "c")
    assert all(ta[k] == tc[k] for k in ta if k.startswith("hr/"))
    assert any(ta[k] != tc[k] for k in ta if k.startswith("lr/"))
    with pytest.raises(FileExistsError, match="manifest.json"):
        build_suite("syn", [mixed_folder], tmp_path / "a", cfg)


def test_make_bench_real_suites(mixed_folder: Path, tmp_path: Path) -> None:
    square = build_suite("realsquare", [mixed_folder], tmp_path / "sq", BenchConfig(size=300))
    vary = build_suite("realvary", [mixed_folder], tmp_path / "va", BenchConfig(size=300))
    for e in square.entries:
        assert Image.open(tmp_path / "sq" / e["lr"]["file"]).size == (300, 300)
    for e in vary.entries:
        src = Image.open(e["source"])
        out = Image.open(tmp_path / "va" / e["lr"]["file"])
        assert max(out.size) == 300
        assert abs(out.size[0] / out.size[1] - src.size[0] / src.size[1]) < 0.01
    # rocket is 427x640: too small for a 512 square only when its short side < 512
    small = build_suite("realsquare", [mixed_folder / "rocket.png"], tmp_path / "small", BenchConfig(size=512))
    assert small.entries == [] and "smaller than 512" in small.skipped[0]["reason"]
