"""Wall time of each op4ksr metric on one 4K (3840x2160) photo; writes a Markdown table.

    OP4KSR_CACHE=... python benchmarks/metrics_speed.py PHOTO.jpg --repeats 3 --out docs/metrics_speed.md

The photo is centre-cropped to 3840x2160 (HR); the "SR" image is its PIL bicubic x4 round trip.
Metrics whose asset/extra is missing are listed with the reason instead of a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from op4ksr.eval.metrics import MetricUnavailable, available_metrics, create_metric
from op4ksr.utils.atomic import atomic_write_text


def load_pair(path: Path, width: int = 3840, height: int = 2160) -> tuple[torch.Tensor, torch.Tensor]:
    img = Image.open(path).convert("RGB")
    if img.width < width or img.height < height:
        raise SystemExit(f"{path}: {img.width}x{img.height} is smaller than {width}x{height}")
    left, top = (img.width - width) // 2, (img.height - height) // 2
    hr = img.crop((left, top, left + width, top + height))
    sr = hr.resize((width // 4, height // 4), Image.BICUBIC).resize((width, height), Image.BICUBIC)
    to_t = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return to_t(sr), to_t(hr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sr, hr = load_pair(args.photo)
    rows = []
    for name in args.metrics or available_metrics():
        try:
            metric = create_metric(name)
        except (MetricUnavailable, FileNotFoundError) as exc:
            rows.append(f"| {name} | – | – | {getattr(exc, 'reason', str(exc))} |")
            continue
        times, value = [], float("nan")
        for _ in range(args.repeats):
            start = time.perf_counter()
            value = metric(sr, hr if metric.full_reference else None).item()
            times.append(time.perf_counter() - start)
        rows.append(f"| {name} | {value:.4f} | {statistics.median(times):.2f} | |")
        print(rows[-1], flush=True)

    header = (
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).\n"
        f"Command: `python benchmarks/metrics_speed.py {args.photo} --repeats {args.repeats}`; "
        f"image 3840x2160 centre crop, SR = bicubic x4 round trip; median of {args.repeats} runs.\n\n"
        "| metric | value | seconds (median) | note |\n|---|---|---|---|\n"
    )
    table = header + "\n".join(rows) + "\n"
    if args.out:
        atomic_write_text(args.out, table, overwrite=True)
    else:
        print(table)


if __name__ == "__main__":
    main()
