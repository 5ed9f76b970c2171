"""Throughput of curation stage (i)+(ii) per-file scoring (decode + all scores).

Usage: python benchmarks/curation_throughput.py [FOLDER_OR_GLOB ...] [--workers 1 2] [--repeats 3]
Default input: the 2560x1600 plasma wallpapers (apt install plasma-workspace-wallpapers).
Prints a Markdown table (median of repeats) to paste into docs/DATA.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from op4ksr.data.curation import CurationConfig, curate, score_file

DEFAULT = "/usr/share/wallpapers/*/contents/images/2560x1600.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("inputs", nargs="*", default=[DEFAULT])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = sorted({f for pattern in args.inputs for f in glob.glob(pattern)})
    if not files:
        raise SystemExit(f"no files match {args.inputs}")
    config = CurationConfig()
    # per-stage breakdown on one file (inline)
    score_file(files[0], config)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {len(files)} files")
    print("| workers | files | median s | images/s | MP/s |")
    print("|---|---|---|---|---|")
    from PIL import Image

    megapixels = sum(Image.open(f).width * Image.open(f).height for f in files) / 1e6
    for workers in args.workers:
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                curate(files, Path(tmp) / "m.jsonl", config, workers=workers)
                times.append(time.perf_counter() - start)
        t = statistics.median(times)
        print(f"| {workers} | {len(files)} | {t:.2f} | {len(files) / t:.2f} | {megapixels / t:.1f} |")


if __name__ == "__main__":
    main()
