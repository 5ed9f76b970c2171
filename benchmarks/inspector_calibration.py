"""Calibrate the grid inspector's threshold on real photos (results: docs/INSPECTOR.md).

For every photo, a central crop (at most --side × --side, native resolution, so the source's own
JPEG compression is kept) is scored in these variants:

  clean       the crop as it is
  grid2       + a ±2/255, 32-px token grid (op4ksr.eval.diagnostics.synthetic)
  grid1       + a ±1/255, 32-px token grid
  bicubic_lr  bicubic ×4 of the crop area-downscaled ×4 (what a bicubic SR baseline outputs)
  bicubic_up  bicubic ×4 of the central 1/4-size crop as it is (its JPEG blocks become 32 px)
  jpeg30      the crop re-saved as JPEG quality 30
  grid2_jpeg30  grid2 then JPEG quality 30

Usage:
  python benchmarks/inspector_calibration.py --side 1024 --out /tmp/inspector_calibration.csv \
      /usr/share/backgrounds/*.jpg /usr/share/backgrounds/mate/nature/*.jpg \
      /usr/share/wallpapers/*/contents/images/*.jpg
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from op4ksr.eval.diagnostics.inspector import InspectorConfig, inspect_image
from op4ksr.eval.diagnostics.synthetic import add_token_grid

VARIANTS = ("clean", "grid2", "grid1", "bicubic_lr", "bicubic_up", "jpeg30", "grid2_jpeg30")
GRID_VARIANTS = {"grid2", "grid1", "grid2_jpeg30"}


def _jpeg(array: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _bicubic_x4(array: np.ndarray) -> np.ndarray:
    height, width = array.shape[:2]
    return np.asarray(Image.fromarray(array).resize((width * 4, height * 4), Image.Resampling.BICUBIC))


def variants(photo: np.ndarray, side: int = 2048) -> dict[str, np.ndarray]:
    height, width = photo.shape[:2]
    h, w = min(side, height) // 32 * 32, min(side, width) // 32 * 32
    top, left = (height - h) // 2, (width - w) // 2
    crop = np.ascontiguousarray(photo[top : top + h, left : left + w])
    lr = np.asarray(Image.fromarray(crop).reduce(4))  # box ×4: removes the source's JPEG blocks
    quarter = crop[h * 3 // 8 : h * 3 // 8 + h // 4, w * 3 // 8 : w * 3 // 8 + w // 4]
    grid2 = add_token_grid(crop, 32, 2 / 255)
    return {
        "clean": crop,
        "grid2": grid2,
        "grid1": add_token_grid(crop, 32, 1 / 255),
        "bicubic_lr": _bicubic_x4(lr),
        "bicubic_up": _bicubic_x4(np.ascontiguousarray(quarter)),
        "jpeg30": _jpeg(crop, 30),
        "grid2_jpeg30": _jpeg(grid2, 30),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="CSV with one row per photo and variant")
    parser.add_argument("--min-side", type=int, default=1024, help="skip photos smaller than this")
    parser.add_argument("--side", type=int, default=2048, help="central crop side (px)")
    args = parser.parse_args()
    config = InspectorConfig()
    rows = []
    started = time.perf_counter()
    for path in sorted(set(args.photos)):
        photo = np.asarray(Image.open(path).convert("RGB"))
        if min(photo.shape[:2]) < args.min_side:
            continue
        for name, image in variants(photo, args.side).items():
            report = inspect_image(image, config)
            rows.append(
                {
                    "photo": str(path),
                    "variant": name,
                    "height": image.shape[0],
                    "width": image.shape[1],
                    "score_db": round(report.score_db, 3),
                    "flagged": report.flagged,
                    "dominant_period": report.dominant_period,
                    "dominant_feature": report.dominant_feature,
                    "acf_score": round(report.acf_score, 4),
                }
            )
        print(
            path.name,
            " ".join(f"{r['variant']}={r['score_db']}/{r['dominant_period']}" for r in rows[-len(VARIANTS) :]),
            flush=True,
        )
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"\n{len(rows) // len(VARIANTS)} photos, {time.perf_counter() - started:.0f} s, {platform.processor() or platform.machine()}"
    )
    print("| variant | n | min dB | median dB | max dB | flagged | dominant period (counts) |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        sel = [r for r in rows if r["variant"] == name]
        scores = [r["score_db"] for r in sel]
        periods: dict[str, int] = {}
        for r in sel:
            periods[str(r["dominant_period"])] = periods.get(str(r["dominant_period"]), 0) + 1
        counts = ", ".join(f"{p}: {c}" for p, c in sorted(periods.items(), key=lambda kv: -kv[1]))
        print(
            f"| {name} | {len(sel)} | {min(scores):.2f} | {statistics.median(scores):.2f} | {max(scores):.2f} | "
            f"{sum(r['flagged'] for r in sel)}/{len(sel)} | {counts} |"
        )


if __name__ == "__main__":
    main()
