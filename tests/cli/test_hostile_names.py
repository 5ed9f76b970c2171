"""File names as an attacker or a careless user makes them (issue 24): bytes that are not UTF-8,
ESC sequences and newlines. Reports stay valid JSON with the exact bytes recoverable; terminal
lines stay one line with nothing that drives the terminal."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from op4ksr.utils.names import json_safe, raw_base64, shown

# The CLI in a real process (real UTF-8 pipes, not CliRunner's buffers), the model replaced by
# the bicubic test double.
_CLI = textwrap.dedent(
    """
    import sys
    import op4ksr.api
    from doubles import InterpolationPipeline

    op4ksr.api.load_model = lambda model=None, **kw: InterpolationPipeline()
    from op4ksr.cli import app
    app(sys.argv[1:], prog_name="op4ksr")
    """
)


def _cli(tmp_path: Path, *args: str | bytes) -> subprocess.CompletedProcess:
    script = tmp_path / "cli.py"
    script.write_text(_CLI, encoding="utf-8")
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8",
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, timeout=300, check=False)


def _photo(path: Path | bytes) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    with open(path, "wb") as fh:
        image.save(fh, format="PNG")


def test_names_helpers_round_trip_raw_bytes():
    name = os.fsdecode(b"bad\xffname\x1b[31m.png")
    assert shown(name) == "bad\\xffname\\x1b[31m.png"
    assert os.fsencode(os.fsdecode(base64.b64decode(raw_base64(name)))) == b"bad\xffname\x1b[31m.png"
    assert raw_base64("ünïcødé.png") is None and shown("ünïcødé фото.png") == "ünïcødé фото.png"
    assert shown("a\nb\u202ec") == "a\\x0ab\\u202ec"
    assert json_safe({"k": [name], "ok": "ü"}) == {"k": [shown(name)], "ok": "ü"}


@pytest.mark.skipif(sys.platform == "darwin", reason="APFS refuses names that are not UTF-8")
def test_upscale_json_names_a_non_utf8_file_exactly(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    raw = os.fsencode(src) + b"/bad\xffname.png"
    _photo(raw)
    _photo(src / "good.png")
    done = _cli(tmp_path, "upscale", str(src), "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode("ascii"))  # ASCII-escaped: any parser, any terminal
    files = {Path(f["input"]).name: f for f in report["files"]}
    assert set(files) == {"bad\\xffname.png", "good.png"}
    bad = files["bad\\xffname.png"]
    assert bad["status"] == "done"
    assert base64.b64decode(bad["input_raw"]) == raw
    assert os.path.exists(base64.b64decode(bad["output_raw"]))  # the exact output file
    assert "input_raw" not in files["good.png"]


def test_terminal_lines_escape_control_characters(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    evil = src / "x\x1b]0;owned\x07\nerror: fake.png"
    evil.write_bytes(b"not an image")
    done = _cli(tmp_path, "upscale", str(evil), "-o", str(out))
    assert done.returncode == 1
    stderr = done.stderr.decode()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "x\\x1b]0;owned\\x07\\x0aerror: fake.png" in errors[0]
    assert "\x1b" not in stderr and "\x07" not in stderr


@pytest.mark.skipif(sys.platform == "darwin", reason="APFS refuses names that are not UTF-8")
def test_inspect_json_and_out_handle_a_non_utf8_file(tmp_path):
    raw = os.fsencode(tmp_path) + b"/grid\xffshot.png"
    rng = np.random.default_rng(1)
    with open(raw, "wb") as fh:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(fh, format="PNG")
    reports = tmp_path / "reports"
    for attempt in range(2):  # a second run is refused cleanly ("exists"), never half-written
        done = _cli(tmp_path, "inspect", os.fsdecode(raw), "--out", str(reports), "--json")
        if attempt == 1:
            assert done.returncode == 1 and b"exists (use --overwrite" in done.stderr
            break
        assert done.returncode == 0, done.stderr.decode()
        doc = json.loads(done.stdout.decode("ascii"))
        (image,) = doc["images"]
        assert image["path"].endswith("grid\\xffshot.png") and base64.b64decode(image["path_raw"]) == raw
        folder = base64.b64decode(image["report_dir_raw"])
        assert sorted(os.listdir(os.fsdecode(folder))) == ["harmonics.png", "heatmap.png", "index.html", "report.json",
                                              "spectrum.png"]
        assert "grid\\xffshot.png" in Path(os.fsdecode(folder), "index.html").read_text(encoding="utf-8")
