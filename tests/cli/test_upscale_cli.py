"""`op4ksr upscale`: mixed batches, JSON report, exit codes, no partial files, kill safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from doubles import InterpolationPipeline, write_bad_files
from PIL import Image
from typer.testing import CliRunner

import op4ksr.api
from op4ksr.cli import app


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Replace model loading by a bicubic stand-in; records which model was asked for."""
    asked: list[str | None] = []

    def load(model=None, **kwargs):
        asked.append(model)
        return InterpolationPipeline()

    monkeypatch.setattr(op4ksr.api, "load_model", load)
    return asked


def _photo(path: Path, size: tuple[int, int] = (20, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _partials(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if ".part" in p.name]


def _run(args: list[str]):
    return CliRunner().invoke(app, ["upscale", *args])


def test_mixed_batch_good_done_bad_named_nothing_overwritten(tmp_path: Path, fake_model) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    reasons = write_bad_files(src)
    _photo(src / "good.png")
    _photo(src / "ünïcødé фото.jpg")
    _photo(src / "kept.png")
    out.mkdir()
    (out / "kept_x4.png").write_bytes(b"an earlier result")  # must survive untouched
    result = _run([str(src), "-o", str(out), "--json"])

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["schema"] == "op4ksr.upscale/1"
    assert report["summary"] == {**report["summary"], "done": 2, "failed": len(reasons) + 1, "skipped": 0}
    files = {Path(f["input"]).name: f for f in report["files"]}
    for name, fragment in reasons.items():
        assert files[name]["status"] == "failed" and fragment in files[name]["reason"]
        assert f"error: {src / name}: {files[name]['reason']}" in result.stderr
    assert files["kept.png"]["reason"] == "output exists (use --overwrite or --skip-existing)"
    assert files["good.png"]["output_size"] == [80, 48]
    assert Image.open(out / "ünïcødé фото_x4.png").size == (80, 48)
    assert (out / "kept_x4.png").read_bytes() == b"an earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["good_x4.png", "kept_x4.png", "ünïcødé фото_x4.png"]
    assert _partials(src, out) == []
    assert fake_model == [None]  # the bundled model by default, loaded once


def test_summary_line_and_exit_zero(tmp_path: Path, fake_model) -> None:
    a = _photo(tmp_path / "a.png")
    result = _run([str(a), "-o", str(tmp_path / "o"), "-s", "2", "--format", "jpg", "--suffix", "-big"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("1 done, 0 skipped, 0 failed in")
    assert Image.open(tmp_path / "o" / "a-big.jpg").size == (40, 24)
    again = _run([str(a), "-o", str(tmp_path / "o"), "-s", "2", "--format", "jpg", "--suffix", "-big", "--skip-existing"])
    assert again.exit_code == 0 and again.stdout.startswith("0 done, 1 skipped, 0 failed")


def test_collision_stops_before_any_work(tmp_path: Path, fake_model) -> None:
    a, b = _photo(tmp_path / "x" / "p.png"), _photo(tmp_path / "y" / "p.jpg")
    result = _run([str(a), str(b), "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["error"] == "1 problem(s) found before starting; nothing was done"
    assert len(report["problems"]) == 1 and "2 inputs would write this output" in report["problems"][0]
    assert result.stderr.count("error: ") == 1 and "p.png, " in result.stderr
    assert not (tmp_path / "o").exists() and fake_model == []


def test_conflicting_flags_and_bad_scale(tmp_path: Path, fake_model) -> None:
    a = _photo(tmp_path / "a.png")
    both = _run([str(a), "--overwrite", "--skip-existing"])
    assert both.exit_code == 2 and "cannot be used together" in both.stderr
    assert _run([str(a), "-s", "5"]).exit_code == 2


def test_missing_model_is_one_line(tmp_path: Path) -> None:
    a = _photo(tmp_path / "a.png")
    result = _run([str(a), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model") and "nope" in lines[0]
    assert "Traceback" not in result.output


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import op4ksr.api, op4ksr.io.images
    from doubles import InterpolationPipeline

    op4ksr.api.load_model = lambda model=None, **kw: InterpolationPipeline()
    marker = sys.argv[1]

    def stalled_write(tmp, body):
        # Half the file reaches the disk, then the process hangs until it is killed.
        with open(tmp, "wb") as fh:
            fh.write(body[: len(body) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        open(marker, "w").close()
        time.sleep(600)

    op4ksr.io.images.write_temp_bytes = stalled_write
    from op4ksr.cli import app
    app(["upscale", *sys.argv[2:]], prog_name="op4ksr")
    """
)


def _signal_during_write(tmp_path: Path, args: list[str], sig: int) -> tuple[int, str, str]:
    """Run the CLI (bicubic stand-in) until its write stalls half-way, send ``sig``; (code, stdout, stderr)."""
    script, marker = tmp_path / "stall.py", tmp_path / "writing"
    script.write_text(_KILL_SCRIPT, encoding="utf-8")
    # The script imports the test double (tests/doubles.py) as pytest does: tests/ on its path.
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, str(script), str(marker), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the CLI ended before writing"
            assert time.monotonic() < deadline, "the CLI never reached the write"
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr


def test_sigkill_during_write_leaves_no_partial_output(tmp_path: Path, fake_model) -> None:
    src = _photo(tmp_path / "a.png", (64, 48))
    out = tmp_path / "out"
    returncode, _, _ = _signal_during_write(tmp_path, [str(src), "-o", str(out)], signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    # The final name never appeared; only a hidden temporary holds the half-written bytes.
    assert not (out / "a_x4.png").exists()
    leftovers = sorted(p.name for p in out.iterdir())
    assert len(leftovers) == 1 and leftovers[0].startswith(".a_x4.") and leftovers[0].endswith(".part.png")

    # A re-run removes the stale temporary and writes the complete file.
    rerun = _run([str(src), "-o", str(out), "--json"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["summary"]["stale_temps_removed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.png"]
    assert Image.open(out / "a_x4.png").size == (256, 192)


def test_ctrl_c_during_write_removes_the_temporary(tmp_path: Path, fake_model, monkeypatch) -> None:
    import op4ksr.io.images

    def interrupted(tmp: Path, body: bytes) -> None:
        tmp.write_bytes(body[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(op4ksr.io.images, "write_temp_bytes", interrupted)
    src = _photo(tmp_path / "a.png")
    result = _run([str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_tiny_model_folder_via_cli(tmp_path: Path) -> None:
    presets = pytest.importorskip("op4ksr.models.presets")
    presets.build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "tiny")
    a = _photo(tmp_path / "a.png", (24, 16))
    result = _run([str(a), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "tiny"), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["device"] == "cpu" and report["files"][0]["output_size"] == [96, 64]


@pytest.mark.parametrize(("flag", "on", "bad", "choices"), [
    ("--color-fix", "wavelet", "sepia", "choose none, wavelet or adain"),
    ("--grid-fix", "notch", "blur", "choose none or notch"),
])
def test_post_step_options(tmp_path: Path, tiny_model_dir, flag, on, bad, choices) -> None:
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((24, 20, 3)) * 255).astype(np.uint8)).save(src)
    runner = CliRunner()
    bad_run = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "o1"), flag, bad])
    assert bad_run.exit_code == 2 and choices in bad_run.output
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())
    outs = {}
    for fix in ("none", on):
        r = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / fix), "--model", str(tiny_model_dir),
                                flag, fix])
        assert r.exit_code == 0, r.output
        outs[fix] = np.asarray(Image.open(tmp_path / fix / "in_x4.png"))
    assert outs["none"].shape == (96, 80, 3) and not np.array_equal(outs["none"], outs[on])


def test_fidelity_option(tmp_path: Path) -> None:
    from op4ksr.models.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    with torch.no_grad():  # a compensation that visibly acts, so that fidelity changes the output
        for p in pipe.compensation.parameters():
            p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    pipe.save_pretrained(tmp_path / "m")
    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((24, 20, 3)) * 255).astype(np.uint8)).save(src)
    runner = CliRunner()
    bad = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "bad"), "--model", str(tmp_path / "m"),
                              "--fidelity", "1.5"])
    assert bad.exit_code == 2 and "--fidelity 1.5: choose a value from 0" in bad.output
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    outs = {}
    for value in ("0", "1"):
        r = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / value), "--model", str(tmp_path / "m"),
                                "--fidelity", value])
        assert r.exit_code == 0, r.output
        outs[value] = np.asarray(Image.open(tmp_path / value / "in_x4.png"))
    assert outs["0"].shape == (96, 80, 3) and not np.array_equal(outs["0"], outs["1"])


# --- hostile inputs and careless use (docs/SECURITY.md) -------------------------------------


def test_memory_plan_is_checked_from_the_header_before_decoding(tmp_path: Path, monkeypatch) -> None:
    from op4ksr.models.planner import MemoryPlanError

    class _Small(InterpolationPipeline):
        def check_fits(self, height, width, batch=1):
            if height * width > 1000 * 1000:
                raise MemoryPlanError(f"{width}×{height} output needs ~9 GiB on cpu but ~1 GiB is free")

    monkeypatch.setattr(op4ksr.api, "load_model", lambda model=None, **kw: _Small())
    decoded: list[str] = []
    real_load = op4ksr.api.load_image
    monkeypatch.setattr(op4ksr.api, "load_image", lambda src, **kw: decoded.append(str(src)) or real_load(src, **kw))
    big = tmp_path / "big.png"
    Image.new("L", (8000, 8000)).save(big, optimize=True)  # a few KB on disk, 64 MP once decoded
    assert big.stat().st_size < 200_000
    result = _run([str(big), "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 1
    entry = json.loads(result.stdout)["files"][0]
    assert entry["status"] == "failed" and entry["reason"].startswith("too large for this device")
    assert decoded == []  # refused from the header: no pixel was decoded


def test_suffix_cannot_escape_the_output_folder(tmp_path: Path, fake_model) -> None:
    src = _photo(tmp_path / "in" / "a.png")
    result = _run([str(src), "-o", str(tmp_path / "out"), "--suffix", "/../../escaped"])
    assert result.exit_code == 2 and "--suffix '/../../escaped': a name suffix cannot hold" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"] and fake_model == []


def test_output_folder_linked_outside_is_refused(tmp_path: Path, fake_model) -> None:
    _photo(tmp_path / "in" / "sub" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere")  # the mirrored subfolder leads out
    result = _run([str(tmp_path / "in"), "-r", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "would be written outside -o" in result.output
    assert list((tmp_path / "elsewhere").iterdir()) == [] and fake_model == []


def test_out_naming_an_existing_file_fails_before_the_model_loads(tmp_path: Path, fake_model) -> None:
    src = _photo(tmp_path / "a.png")
    (tmp_path / "report.txt").write_text("keep me")
    result = _run([str(src), "-o", str(tmp_path / "report.txt")])
    assert result.exit_code == 2 and "exists and is not a folder" in result.output
    assert fake_model == [] and (tmp_path / "report.txt").read_text() == "keep me"


def test_out_symlink_loop_is_one_line(tmp_path: Path, fake_model) -> None:
    src = _photo(tmp_path / "a.png")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    result = _run([str(src), "-o", str(loop)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "symbolic link loop" in lines[0]


def test_ctrl_c_prints_the_summary_and_the_json(tmp_path: Path, fake_model, monkeypatch) -> None:
    import op4ksr.io.images

    writes: list[str] = []
    real = op4ksr.io.images.write_temp_bytes

    def second_write_interrupted(tmp: Path, body: bytes) -> None:
        writes.append(tmp.name)
        if len(writes) == 2:
            tmp.write_bytes(body[:10])
            raise KeyboardInterrupt
        real(tmp, body)

    monkeypatch.setattr(op4ksr.io.images, "write_temp_bytes", second_write_interrupted)
    srcs = [str(_photo(tmp_path / f"{n}.png")) for n in "abc"]
    result = _run([*srcs, "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 130
    report = json.loads(result.stdout)
    assert report["summary"] == {**report["summary"], "done": 1, "failed": 1, "skipped": 1, "interrupted": True}
    assert [f["status"] for f in report["files"]] == ["done", "failed", "skipped"]
    assert "1 done, 1 skipped, 1 failed" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png"]


def test_sigterm_during_write_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    src = _photo(tmp_path / "a.png", (64, 48))
    out = tmp_path / "out"
    returncode, stdout, stderr = _signal_during_write(tmp_path, [str(src), "-o", str(out), "--json"], signal.SIGTERM)
    assert returncode == 130, stderr
    assert json.loads(stdout)["summary"]["interrupted"] is True
    assert "0 done, 0 skipped, 1 failed" in stderr
    assert list(out.iterdir()) == []  # the temporary went with the interrupted write


def test_dangling_links_and_linked_folders_are_reported(tmp_path: Path, fake_model) -> None:
    folder = tmp_path / "in"
    _photo(folder / "a.png")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "other").mkdir()
    (folder / "linked").symlink_to(tmp_path / "other", target_is_directory=True)
    result = _run([str(folder), "-o", str(tmp_path / "out"), "--json"])
    files = {Path(f["input"]).name: f for f in json.loads(result.stdout)["files"]}
    assert files["gone.png"]["status"] == "failed" and files["gone.png"]["reason"] == "broken symbolic link"
    assert files["linked"]["status"] == "skipped" and "not followed" in files["linked"]["reason"]
    assert files["a.png"]["status"] == "done"


def test_png_compression_changes_size_not_pixels_and_is_checked(tmp_path: Path, fake_model) -> None:
    # a smooth gradient compresses well: level 0 (stored) must be larger than level 9, pixels equal
    src = tmp_path / "g.png"
    ramp = np.linspace(0, 255, 64 * 48, dtype=np.float64).reshape(48, 64)
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp.T[:48, :48].repeat(2, 1)[:, :64]], -1).astype(np.uint8)).save(src)
    sizes, pixels = {}, {}
    for level in (0, 9):
        out = tmp_path / f"l{level}"
        result = _run([str(src), "-o", str(out), "--png-compression", str(level)])
        assert result.exit_code == 0, result.output
        file = out / "g_x4.png"
        sizes[level], pixels[level] = file.stat().st_size, np.asarray(Image.open(file))
    assert sizes[0] > 2 * sizes[9]
    assert np.array_equal(pixels[0], pixels[9])
    bad = _run([str(src), "-o", str(tmp_path / "bad"), "--png-compression", "10"])
    assert bad.exit_code != 0 and not (tmp_path / "bad" / "g_x4.png").exists()
    from op4ksr.io.images import check_png_compression

    from op4ksr.io.images import PNG_COMPRESS_LEVEL

    assert check_png_compression(None) == PNG_COMPRESS_LEVEL and check_png_compression(0) == 0
    with pytest.raises(ValueError, match="--png-compression 10"):
        check_png_compression(10)
