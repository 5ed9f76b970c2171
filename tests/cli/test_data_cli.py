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


# --- option errors and odd folder entries (issue 24) ------------------------------------------
def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("args,fragment", [
    (["make-bench", "syn", "SRC", "--out", "FILE"], "exists and is not a folder"),
    (["make-bench", "syn", "SRC", "--out", "OUT", "--long-side", "0"], "--long-side 0: choose a side from 1"),
    (["make-bench", "syn", "SRC", "--out", "OUT", "--scale", "1000"], "--scale 1000: choose a factor from 1 to 16"),
    (["make-bench", "realsquare", "SRC", "--out", "OUT", "--size", "-5"], "--size -5: choose a side from 1"),
    (["curate", "SRC", "--out", "OUT/m.jsonl", "--keep-fraction", "nan"], "keep_fraction must be in (0, 1], got nan"),
    (["curate", "SRC", "--out", "OUT/m.jsonl", "--keep-fraction", "-1"], "keep_fraction must be in (0, 1], got -1"),
    (["curate", "SRC", "--out", "OUT/m.jsonl", "--workers", "0"], "--workers 0: give at least 1 process"),
    (["curate", "SRC", "--out", "OUT/m.jsonl", "--workers", "-3"], "--workers -3: give at least 1 process"),
    (["curate", "SRC", "--out", "OUT/m.jsonl", "--vlm-url", "http://127.0.0.1:9/v1", "--vlm-prompt", "SRC"],
     "--vlm-prompt SRC: cannot read it as a text file"),
    (["degrade", "SRC", "--out", "OUT", "--scale", "100000"], "--scale 100000: choose a factor from 1 to 16"),
])
def test_bad_options_are_one_line_before_any_work(folder: Path, tmp_path: Path, args, fragment) -> None:
    (tmp_path / "FILE").write_text("keep me")
    names = {"SRC": str(folder), "OUT": str(tmp_path / "out"), "FILE": str(tmp_path / "FILE")}
    argv = [a.replace("OUT", names["OUT"]) if a.startswith("OUT") else names.get(a, a) for a in args]
    line = _error_line(runner.invoke(app, argv))
    assert fragment.replace("SRC", str(folder)) in line
    assert not (tmp_path / "out").exists() and (tmp_path / "FILE").read_text() == "keep me"


def _odd_entries(folder: Path) -> set[str]:
    """A broken link, a link loop and a FIFO, each named like a photo; returns their names."""
    import os

    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    os.mkfifo(folder / "pipe.png")
    return {"gone.png": "broken symbolic link", "loop.png": "symbolic link loop", "pipe.png": "a FIFO (named pipe)"}


def test_degrade_reports_links_and_fifos_instead_of_dropping_them(folder: Path, tmp_path: Path) -> None:
    odd = _odd_entries(folder)
    res = runner.invoke(app, ["degrade", str(folder), "--out", str(tmp_path / "lr"), "--scale", "4"])
    assert res.exit_code == 1
    for name, reason in odd.items():
        assert f"error: {folder / name}: {reason}" in res.output
    assert (tmp_path / "lr" / "astronaut.png").is_file()  # the good files were still done


def test_curate_reports_links_and_fifos_instead_of_dropping_them(folder: Path, tmp_path: Path) -> None:
    odd = _odd_entries(folder)
    res = runner.invoke(app, ["curate", str(folder), "--out", str(tmp_path / "m.jsonl"), "--workers", "1"])
    assert res.exit_code == 1
    for name, reason in odd.items():
        assert f"error: {folder / name}: {reason}" in res.output
    assert "3 not files (listed above)" in res.output and (tmp_path / "m.jsonl").is_file()
