"""Small PNG plots drawn with Pillow: line plots, heatmaps with a colour bar, panels.

matplotlib is deliberately not a dependency (the core install stays lean); these helpers
draw just what the diagnostics need, always with a title, axis labels and tick values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from op4ksr.utils.atomic import atomic_path

Colour = tuple[int, int, int]

# Anchor colours (sampled from matplotlib's perceptual maps), interpolated to 256 entries.
_COLORMAP_ANCHORS: dict[str, tuple[Colour, ...]] = {
    "inferno": ((0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
                (245, 125, 21), (250, 193, 39), (252, 255, 164)),
    "coolwarm": ((59, 76, 192), (124, 159, 249), (192, 212, 245), (242, 203, 183),
                 (238, 132, 104), (180, 4, 38)),
    "gray": ((0, 0, 0), (255, 255, 255)),
}
PALETTE: tuple[Colour, ...] = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def colormap_lut(name: str) -> np.ndarray:
    """[256, 3] uint8 lookup table for a colormap name in ``_COLORMAP_ANCHORS``."""
    try:
        anchors = np.asarray(_COLORMAP_ANCHORS[name], dtype=np.float64)
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; choose one of {sorted(_COLORMAP_ANCHORS)}") from None
    positions = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, positions, anchors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def apply_colormap(values: np.ndarray, vmin: float, vmax: float, name: str = "inferno") -> np.ndarray:
    """Map a 2D float array to RGB uint8 [H, W, 3]; NaN becomes mid-grey."""
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / span, 0.0, 1.0)
    rgb = colormap_lut(name)[np.rint(scaled * 255).astype(np.intp)]
    rgb[np.isnan(values)] = (128, 128, 128)
    return rgb


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


@dataclass(frozen=True)
class Series:
    """One line of a :func:`line_plot`."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: Colour = PALETTE[0]
    markers: bool = True


@dataclass(frozen=True)
class HLine:
    """A dashed horizontal reference line (e.g. a threshold)."""

    y: float
    label: str
    colour: Colour = (90, 90, 90)


@dataclass
class _Frame:
    """Pixel placement of the plotting area and the data range it shows."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    extra: dict = field(default_factory=dict)

    def px(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        u = self.left + (x - x0) / ((x1 - x0) or 1.0) * (self.right - self.left)
        v = self.bottom - (y - y0) / ((y1 - y0) or 1.0) * (self.bottom - self.top)
        return u, v


def _draw_axes(draw: ImageDraw.ImageDraw, frame: _Frame, title: str, xlabel: str, ylabel: str,
               image: Image.Image, x_ticks: Sequence[float], y_ticks: Sequence[float]) -> None:
    font, small = _font(16), _font(13)
    draw.rectangle((frame.left, frame.top, frame.right, frame.bottom), outline=(0, 0, 0), width=1)
    for tick in x_ticks:
        u, _ = frame.px(tick, frame.y_range[0])
        draw.line((u, frame.bottom, u, frame.bottom + 5), fill=(0, 0, 0))
        draw.text((u, frame.bottom + 7), _fmt(tick), fill=(0, 0, 0), font=small, anchor="mt")
    for tick in y_ticks:
        _, v = frame.px(frame.x_range[0], tick)
        draw.line((frame.left - 5, v, frame.left, v), fill=(0, 0, 0))
        draw.text((frame.left - 8, v), _fmt(tick), fill=(0, 0, 0), font=small, anchor="rm")
    draw.text(((frame.left + frame.right) / 2, 10), title, fill=(0, 0, 0), font=font, anchor="mt")
    draw.text(((frame.left + frame.right) / 2, frame.bottom + 30), xlabel, fill=(0, 0, 0), font=font, anchor="mt")
    # Rotated y label: draw on a strip, rotate, paste.
    bbox = draw.textbbox((0, 0), ylabel, font=font)
    strip = Image.new("RGB", (bbox[2] - bbox[0] + 4, bbox[3] - bbox[1] + 6), "white")
    ImageDraw.Draw(strip).text((2, 2 - bbox[1]), ylabel, fill=(0, 0, 0), font=font)
    rotated = strip.rotate(90, expand=True)
    image.paste(rotated, (6, int((frame.top + frame.bottom) / 2 - rotated.height / 2)))


def line_plot(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
              hlines: Sequence[HLine] = (), size: tuple[int, int] = (820, 520)) -> Image.Image:
    """A line plot with ticks, labels, a legend and optional dashed reference lines."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    xs = np.concatenate([np.asarray(s.x, dtype=np.float64) for s in series])
    ys = np.concatenate([np.asarray(s.y, dtype=np.float64) for s in series] + [np.asarray([h.y for h in hlines])])
    x_lo, x_hi = float(xs.min()), float(xs.max())
    y_lo, y_hi = min(0.0, float(ys.min())), float(ys.max())
    y_hi += 0.05 * ((y_hi - y_lo) or 1.0)
    frame = _Frame(left=80, top=40, right=width - 20, bottom=height - 60,
                   x_range=(x_lo, x_hi if x_hi > x_lo else x_lo + 1), y_range=(y_lo, y_hi))
    _draw_axes(draw, frame, title, xlabel, ylabel, image, nice_ticks(*frame.x_range), nice_ticks(*frame.y_range))
    small = _font(13)
    for line in hlines:
        _, v = frame.px(x_lo, line.y)
        for u in range(frame.left, frame.right, 12):
            draw.line((u, v, min(u + 6, frame.right), v), fill=line.colour, width=2)
        draw.text((frame.right - 6, v - 4), line.label, fill=line.colour, font=small, anchor="rb")
    for s in series:
        points = [frame.px(x, y) for x, y in zip(s.x, s.y, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=s.colour, width=2)
        if s.markers:
            for u, v in points:
                draw.ellipse((u - 3, v - 3, u + 3, v + 3), fill=s.colour)
    # Legend, top right.
    for row, s in enumerate(series):
        y = frame.top + 12 + 20 * row
        draw.line((frame.right - 190, y, frame.right - 160, y), fill=s.colour, width=3)
        draw.text((frame.right - 152, y), s.label, fill=(0, 0, 0), font=small, anchor="lm")
    return image


def heatmap(values: np.ndarray, *, title: str, xlabel: str, ylabel: str, colorbar_label: str,
            extent: tuple[float, float, float, float] | None = None, vmin: float | None = None,
            vmax: float | None = None, colormap: str = "inferno", side: int = 512,
            marker: tuple[float, float] | None = None, underlay: np.ndarray | None = None) -> Image.Image:
    """A 2D array as a colour image with axes (data coordinates ``extent`` = x0, x1, y0, y1,
    y growing downwards like image rows), a labelled colour bar, and an optional ``+`` marker.

    ``underlay``: a grey image [h, w] in [0, 1] blended 50/50 under the colours, so a map of
    tile scores can be read against the picture it describes."""
    values = np.asarray(values, dtype=np.float64)
    rows, cols = values.shape
    lo = float(np.nanmin(values)) if vmin is None else vmin
    hi = float(np.nanmax(values)) if vmax is None else vmax
    x0, x1, y0, y1 = extent if extent is not None else (0.0, float(cols), 0.0, float(rows))
    scale = side / max(rows, cols)
    plot_w, plot_h = max(1, round(cols * scale)), max(1, round(rows * scale))
    left, top = 80, 40
    image = Image.new("RGB", (left + plot_w + 130, top + plot_h + 70), "white")
    rgb = Image.fromarray(apply_colormap(values, lo, hi, colormap))
    # Nearest-neighbour keeps single-cell peaks visible instead of smearing them.
    rgb = rgb.resize((plot_w, plot_h), Image.Resampling.NEAREST)
    if underlay is not None:
        grey = Image.fromarray(np.rint(np.clip(underlay, 0, 1) * 255).astype(np.uint8)).convert("RGB")
        rgb = Image.blend(grey.resize((plot_w, plot_h), Image.Resampling.BILINEAR), rgb, 0.5)
    image.paste(rgb, (left, top))
    draw = ImageDraw.Draw(image)
    # y axis data grows downwards: map with an inverted range.
    frame = _Frame(left=left, top=top, right=left + plot_w, bottom=top + plot_h, x_range=(x0, x1), y_range=(y1, y0))
    _draw_axes(draw, frame, title, xlabel, ylabel, image, nice_ticks(x0, x1), nice_ticks(y0, y1))
    if marker is not None:
        u, v = frame.px(*marker)
        draw.line((u - 8, v, u + 8, v), fill=(255, 255, 255), width=2)
        draw.line((u, v - 8, u, v + 8), fill=(255, 255, 255), width=2)
    # Colour bar.
    bar_left = left + plot_w + 20
    bar = np.linspace(1.0, 0.0, plot_h)[:, None].repeat(18, axis=1)
    image.paste(Image.fromarray(apply_colormap(bar, 0.0, 1.0, colormap)), (bar_left, top))
    bar_frame = _Frame(left=bar_left, top=top, right=bar_left + 18, bottom=top + plot_h,
                       x_range=(0.0, 1.0), y_range=(lo, hi if hi > lo else lo + 1.0))
    small = _font(13)
    draw.rectangle((bar_left, top, bar_left + 18, top + plot_h), outline=(0, 0, 0))
    for tick in nice_ticks(*bar_frame.y_range):
        _, v = bar_frame.px(0.0, tick)
        draw.line((bar_left + 18, v, bar_left + 23, v), fill=(0, 0, 0))
        draw.text((bar_left + 26, v), _fmt(tick), fill=(0, 0, 0), font=small, anchor="lm")
    draw.text((bar_left, top + plot_h + 30), colorbar_label, fill=(0, 0, 0), font=small, anchor="lt")
    return image


def hstack(images: Sequence[Image.Image], gap: int = 10) -> Image.Image:
    """Panels side by side on a white background."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``image`` as PNG atomically; refuses to replace an existing file unless ``overwrite``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
