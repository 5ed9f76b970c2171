"""The benchmark scripts' peer logic at tiny scale (no timing assertions): benchmarks/startup.py's
pair of whole processes and benchmarks/speed.py's ``--peers`` rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from doubles import fp16_rounded, write_span_ncnn
from PIL import Image
from skimage.data import astronaut

from op4ksr.models.span import SPAN
from op4ksr.models.span_ncnn import SPAN_X4, convert_span_files

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str, monkeypatch):
    """A benchmark script as a module (they import their siblings as top-level modules)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def startup(monkeypatch):
    return _script("startup", monkeypatch)


@pytest.fixture()
def tiny_span_param(tmp_path) -> Path:
    torch.manual_seed(5)
    model = fp16_rounded(SPAN(feature_channels=8, num_blocks=1, upscale=4)).eval()
    folder = tmp_path / "tiny-span-ncnn"
    folder.mkdir()
    param, _ = write_span_ncnn(model, folder)
    return param


def test_run_process_reports_each_process_alone(startup):
    """Per-process resources (os.wait4), not the running total of all children, and not the
    memory of the process that starts them: a 400 MB process, then a small one started while
    this process holds 300 MB more, reports only its own peak."""
    big = startup.run_process([sys.executable, "-c", "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    held = bytearray(300 * 2**20)
    held[::4096] = b"y" * len(held[::4096])  # touched: resident in this process
    small = startup.run_process([sys.executable, "-c", "print('hello')"])
    del held
    assert small.stdout == "hello\n"
    assert big.peak_rss > 400 * 2**20 and 0 < small.peak_rss < 100 * 2**20
    assert big.minor_faults > 400 * 2**20 // 4096 > small.minor_faults  # every page of the buffer touched once
    with pytest.raises(RuntimeError, match=r"failed \(3\)"):
        startup.run_process([sys.executable, "-c", "raise SystemExit(3)"])


def test_pair_alternates_whole_processes_and_writes_the_table(startup, tiny_model_dir, tiny_span_param, tmp_path):
    pytest.importorskip("ncnn", reason="the ncnn runtime is not installed (pip install 'op4ksr[ncnn]')")
    image = tmp_path / "lr32.png"
    Image.fromarray(np.ascontiguousarray(astronaut()[100:132, 200:232])).save(image)
    contenders = [startup.op4ksr_contender(str(tiny_model_dir)),
                  startup.ncnn_contender(startup.CLEARREALITY_NCNN, tiny_span_param, threads=1)]
    order: list[str] = []
    rows = startup.alternate(contenders, image, tmp_path / "runs", runs=2, order=order)
    assert order == [startup.OP4KSR, startup.CLEARREALITY_NCNN] * 2
    for i in range(2):  # each contender wrote its 4× output
        written = list((tmp_path / "runs" / f"contender{i}").iterdir())
        assert [Image.open(p).size for p in written] == [(128, 128)]
    ours, peer = rows[startup.OP4KSR], rows[startup.CLEARREALITY_NCNN]
    assert set(peer) == {"total", "user", "system", "peak_rss", "minor_faults", "major_faults"}
    assert set(ours) == set(peer) | {"load", "read", "compute", "write", "start_imports"}
    for row in (ours, peer):
        assert row["total"] > 0 and row["user"] > 0 and row["system"] >= 0 and row["peak_rss"] > 10 * 2**20
    assert ours["start_imports"] == pytest.approx(
        ours["total"] - ours["load"] - ours["read"] - ours["compute"] - ours["write"], abs=0.05)
    # op4ksr imports torch; the ncnn runner does not
    assert ours["peak_rss"] > peer["peak_rss"]

    text = startup.pair_markdown({32: rows}, runs=2)
    ratio = ours["total"] / peer["total"]
    assert f"**32→128: op4ksr / ClearReality4x (ncnn) = {ratio:.2f}×**" in text
    table = [line for line in text.splitlines() if line.startswith("| 32→128 |")]
    assert [line.split(" | ")[1] for line in table] == [startup.OP4KSR, startup.CLEARREALITY_NCNN]
    assert table[1].endswith("| 1.00× |")


def test_pair_table_values_and_system_time_flag(startup):
    """Hand-computed cells: share = system / (user + system); the ratio to ClearReality4x on ncnn."""
    rows = {startup.OP4KSR: {"total": 30.0, "user": 50.0, "system": 10.0, "peak_rss": 3.5e9,
                             "minor_faults": 2.5e6, "major_faults": 0},
            startup.CLEARREALITY_NCNN: {"total": 25.0, "user": 45.0, "system": 2.0, "peak_rss": 1.2e9,
                                        "minor_faults": 4e5, "major_faults": 0}}
    text = startup.pair_markdown({1024: rows}, runs=5)
    assert "| 1024→4096 | op4ksr upscale | 30.00 | 50.00 | 10.00 | 17 % ⚠ | 3.50 | 2500 | 1.20× |" in text
    assert "| 1024→4096 | ClearReality4x (ncnn) | 25.00 | 45.00 | 2.00 | 4 % | 1.20 | 400 | 1.00× |" in text
    assert "**1024→4096: op4ksr / ClearReality4x (ncnn) = 1.20×** (target ≤ 1.5× at 1024→4096)" in text
    assert "op4ksr peak RSS 3.50 GB (target ≤ 4 GB)" in text
    flags = [line for line in text.splitlines() if line.startswith("⚠")]
    assert len(flags) == 1 and "op4ksr upscale at 1024→4096" in flags[0] and "ClearReality4x" not in flags[0]


def test_speed_peer_rows_time_methods_and_report_the_ones_that_cannot_run(monkeypatch, tmp_path, tiny_span_param):
    speed = _script("speed", monkeypatch)
    param = tiny_span_param
    weights = convert_span_files(param, param.with_suffix(".bin"), SPAN_X4, tmp_path / "span.safetensors")
    specs = [f"span:{weights}", "clearreality:/nowhere/cr.safetensors"]
    if importlib.util.find_spec("ncnn") is not None:
        specs.append(f"span-ncnn:{param}")
    rows = [speed.peer_row(spec, 128, 1, torch.device("cpu")) for spec in specs]
    assert rows[0]["spec"] == specs[0] and rows[0]["total"] > 0 and rows[0]["peak"] >= 0
    assert "error" in rows[1] and "/nowhere/cr.safetensors" in rows[1]["error"]

    class Args:
        model, runs = "tiny", 1

    text = speed.markdown(Args(), torch.device("cpu"), [], [], [], [], peers=rows)
    lines = [line for line in text.splitlines() if line.startswith("| 128² |")]
    assert len(lines) == len(specs)
    assert f"`{specs[0]}` | cpu | {rows[0]['total']:.2f} |" in lines[0]
    assert lines[0].endswith("| – |")  # no patch-free row at that size: no ratio
    assert "not run:" in lines[1] and "/nowhere/cr.safetensors" in lines[1]
    if len(specs) == 3:
        assert rows[2]["total"] > 0 and f"`{specs[2]}` | cpu |" in lines[2]
