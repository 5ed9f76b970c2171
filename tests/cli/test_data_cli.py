from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from op4ksr.cli import app

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(src / f"{name}.png")
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(src / "flat.png")
    (src / "broken.png").write_text("not an image")
    return src


def test_degrade_same_seed_same_bytes(folder: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        res = runner.invoke(app, ["degrade", str(folder / "astronaut.png"), str(folder / "coffee.png"),
                                  "--out", str(tmp_path / name), "--scale", "4", "--preset", "osediff", "--seed", "0"])
        assert res.exit_code == 0, res.output
        outs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()})
    assert outs[0] == outs[1]
    assert Image.open(tmp_path / "a" / "astronaut.png").size == (128, 128)
    records = [json.loads(line) for line in (tmp_path / "a" / "degradations.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(30 <= r["stage1"]["jpeg_quality"] <= 95 for r in records)
    again = runner.invoke(app, ["degrade", str(folder / "coffee.png"), "--out", str(tmp_path / "a")])
    assert again.exit_code == 1 and "exists" in again.output


def test_degrade_bad_preset_is_one_line(folder: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["degrade", str(folder), "--out", str(tmp_path / "o"), "--preset", "nope"])
    assert res.exit_code == 1 and "unknown degradation preset 'nope'" in res.output


def test_curate_and_rerun(folder: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    res = runner.invoke(app, ["curate", str(folder), "--out", str(manifest), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "5 files" in res.output and "1 unreadable" in res.output and "scored 5 now" in res.output
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert Path(rows[-1]["path"]).name == "broken.png" and rows[-1]["status"] == "rejected"
    res = runner.invoke(app, ["curate", str(folder), "--out", str(manifest), "--workers", "1"])
    assert res.exit_code == 0 and "unchanged" in res.output and "scored 0 now" in res.output


def test_curate_missing_source(tmp_path: Path) -> None:
    res = runner.invoke(app, ["curate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 1 and "nowhere: no such file or folder" in res.output


def test_make_bench_twice_identical(folder: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        res = runner.invoke(app, ["make-bench", "syn", str(folder), "--out", str(tmp_path / name),
                                  "--long-side", "256", "--seed", "3"])
        assert res.exit_code == 0, res.output
    ma, mb = (tmp_path / "a" / "manifest.json").read_bytes(), (tmp_path / "b" / "manifest.json").read_bytes()
    assert hashlib.sha256(ma).hexdigest() == hashlib.sha256(mb).hexdigest()
    res = runner.invoke(app, ["make-bench", "realvary", str(folder), "--out", str(tmp_path / "v"), "--size", "256"])
    assert res.exit_code == 0 and "3 images, 2 skipped" in res.output  # broken.png, and flat.png (200 px < 256)
