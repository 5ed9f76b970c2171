"""Aligned crops of every method's output at the kinds of places where SR fails, as one PNG per suite.

    python benchmarks/aligned_crops.py results/v10 --suite syn1024 --hr corpus/bench/syn1024/hr \
        --methods bicubic,realesrgan,op4ksr-raw-compact,op4ksr --out docs/v10_crops_syn1024.png

The places are chosen from the reference, never by looking at the outputs, so no method is
favoured: per image, the ``--size``-px window with the lowest local variance (*flat*), the
highest density of small bright or dark specks (*specks*: the high-pass's 99th percentile of
absolute value minus its median), the highest mean chroma (*saturated*), and the strongest
straight gradient (*edge*). Without ``--hr`` (real inputs) the bicubic output is the reference.
Rows: place × image; columns: the reference (if any) then the methods, all at the same pixels,
enlarged ×``--zoom`` with nearest neighbour so that no resampling blurs the comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from op4ksr.eval.diagnostics.plots import save_png

PLACES = ("flat", "specks", "saturated", "edge")


def _windows(shape: tuple[int, int], size: int, stride: int) -> list[tuple[int, int]]:
    h, w = shape
    return [(y, x) for y in range(0, max(h - size, 0) + 1, stride) for x in range(0, max(w - size, 0) + 1, stride)]


def _score(patch: np.ndarray, place: str) -> float:
    """Higher = more of ``place``; ``patch`` float RGB in [0, 1]."""
    grey = patch.mean(axis=-1)
    if place == "flat":
        return -float(grey.std()) + (-10.0 if grey.mean() < 0.05 or grey.mean() > 0.95 else 0.0)  # no black/white
    if place == "specks":
        blur = (grey[:-2, :-2] + grey[2:, 2:] + grey[:-2, 2:] + grey[2:, :-2] + grey[1:-1, 1:-1]) / 5
        high = np.abs(grey[1:-1, 1:-1] - blur)
        return float(np.percentile(high, 99) - np.median(high))
    if place == "saturated":
        return float((patch.max(axis=-1) - patch.min(axis=-1)).mean())
    gy, gx = np.gradient(grey)
    return float(np.abs(gx).mean(axis=0).max() + np.abs(gy).mean(axis=1).max())  # one long line, not texture


def choose_windows(reference: np.ndarray, size: int) -> dict[str, tuple[int, int]]:
    """The best window of each place in ``reference`` ([H, W, 3] float)."""
    spots = _windows(reference.shape[:2], size, size // 2)
    return {place: max(spots, key=lambda yx: _score(reference[yx[0]:yx[0] + size, yx[1]:yx[1] + size], place))
            for place in PLACES}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _tile(array: np.ndarray, zoom: int, label: str) -> Image.Image:
    img = Image.fromarray((array * 255 + 0.5).astype(np.uint8))
    img = img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (img.width, img.height + 16), "white")
    canvas.paste(img, (0, 16))
    ImageDraw.Draw(canvas).text((2, 2), label, fill=(0, 0, 0))
    return canvas


def crops_figure(results: Path, suite: str, methods: list[str], hr_dir: Path | None, images: list[str] | None,
                 size: int = 96, zoom: int = 2) -> Image.Image:
    outputs = results / "outputs" / suite
    names = images or sorted(p.stem for p in (outputs / methods[0]).glob("*.png"))
    rows: list[Image.Image] = []
    for name in names:
        columns = ([("ground truth", _load(hr_dir / f"{name}.png"))] if hr_dir else [])
        columns += [(m, _load(outputs / m / f"{name}.png")) for m in methods]
        reference = columns[0][1] if hr_dir else dict(columns).get("bicubic", columns[0][1])
        for place, (y, x) in choose_windows(reference, size).items():
            tiles = [_tile(arr[y:y + size, x:x + size], zoom, f"{label}") for label, arr in columns]
            row = Image.new("RGB", (sum(t.width for t in tiles) + 4 * len(tiles) + 150, tiles[0].height), "white")
            ImageDraw.Draw(row).text((4, tiles[0].height // 2), f"{name[:16]}\n{place} @ {x},{y}", fill=(0, 0, 0))
            offset = 150
            for t in tiles:
                row.paste(t, (offset, 0))
                offset += t.width + 4
            rows.append(row)
    figure = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), "white")
    top = 0
    for r in rows:
        figure.paste(r, (0, top))
        top += r.height + 6
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="an `op4ksr bench` output folder")
    parser.add_argument("--suite", required=True, help="suite label (its folder name under outputs/)")
    parser.add_argument("--methods", required=True, help="comma-separated method labels, in column order")
    parser.add_argument("--hr", type=Path, default=None, help="the suite's hr/ folder (paired suites)")
    parser.add_argument("--images", default=None, help="comma-separated image names (default: all)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    figure = crops_figure(args.results, args.suite, args.methods.split(","), args.hr,
                          args.images.split(",") if args.images else None, args.size, args.zoom)
    save_png(figure, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} ({figure.width}×{figure.height})")


if __name__ == "__main__":
    main()
