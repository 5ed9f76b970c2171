"""Benchmark tables (CSV, Markdown shaped like the paper's Tables 3–5) and the HTML report.

* ``summary.csv`` — one row per (suite, metric): mean over images per method (empty cells
  have a ``reason``); ``per_image.csv`` — every (suite, image, method, metric) value;
  ``efficiency.csv`` — Table 5 (warm median seconds per image, peak memory).
* ``tables.md`` — Table 3 shape for suites with ground truth (full- and no-reference rows),
  Table 4 shape for the others (no-reference rows), Table 5 for efficiency. Per row, the best
  value is **bold** and the second best ``<u>underlined</u>``; ranks are taken on the values
  as printed, so equal printed values share a mark.
* ``report.html`` — per image: aligned crops (LR, every method, GT) at one place chosen from
  the LR (the window with the most gradient energy, so the crop shows texture rather than
  sky), then each output's log-magnitude spectrum and its periodicity heatmap (the
  inspector's). Images are embedded as base64 PNG by default, so the report is one file that
  can be mailed or archived; ``embed=False`` writes them under ``report_files/`` beside it
  (relative links only) for suites too large to embed. The page loads nothing from outside.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from op4ksr.eval.bench import BenchResults

# How each metric is printed (the paper's precision); others get 4 decimals.
DISPLAY_NAMES = {
    "psnr_y": "PSNR", "ssim_y": "SSIM", "lpips": "LPIPS", "lpips_vgg": "LPIPS-VGG", "dists": "DISTS",
    "topiq_fr": "TOPIQ_FR", "niqe": "NIQE", "brisque": "BRISQUE", "maniqa": "MANIQA", "musiq": "MUSIQ",
    "clipiqa": "CLIPIQA", "topiq_nr": "TOPIQ_NR", "topiq_iaa": "TOPIQ_IAA", "nima": "NIMA",
    "periodicity": "Periodicity (dB)", "periodicity16": "Periodicity 16 px (dB)",
}
DECIMALS = {"psnr_y": 2, "niqe": 2, "brisque": 2, "musiq": 2, "topiq_iaa": 2, "nima": 2, "periodicity": 2,
            "periodicity16": 2}
GIB = 2**30
TABLES_MD = "tables.md"
SUMMARY_CSV = "summary.csv"
PER_IMAGE_CSV = "per_image.csv"
EFFICIENCY_CSV = "efficiency.csv"
REPORT_HTML = "report.html"
REPORT_FILES = "report_files"
REPORT_OUTPUTS = (SUMMARY_CSV, PER_IMAGE_CSV, EFFICIENCY_CSV, TABLES_MD, REPORT_HTML)
MEMORY_KINDS = {
    "cuda_max_allocated": "CUDA max allocated",
    "cpu_peak_rss": "CPU process peak RSS (VmHWM, reset per method)",
    "cpu_peak_rss_process": "CPU process peak RSS since start (not reset: upper bound)",
}


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.{DECIMALS.get(metric, 4)}f}"


def metric_heading(metric: str, lower_better: bool) -> str:
    return f"{DISPLAY_NAMES.get(metric, metric)} {'↓' if lower_better else '↑'}"


def rank_marks(texts: Sequence[str], lower_better: bool) -> list[str | None]:
    """``"best"`` / ``"second"`` / None per cell, ranked on the printed numbers (empty = unranked)."""
    numbers = sorted({float(t) for t in texts if t}, reverse=not lower_better)
    marks: list[str | None] = []
    for t in texts:
        if not t:
            marks.append(None)
        elif float(t) == numbers[0]:
            marks.append("best")
        elif len(numbers) > 1 and float(t) == numbers[1]:
            marks.append("second")
        else:
            marks.append(None)
    return marks


@dataclass(frozen=True)
class TableRow:
    suite: str
    metric: str
    heading: str
    cells: list[str]  # printed values, one per method ("" = no value)
    marks: list[str | None]
    reason: str | None  # why the row is empty


def metric_rows(results: BenchResults, suites: Sequence[str] | None = None) -> list[TableRow]:
    """Rows of Tables 3/4: per suite, every metric that applies to it (FR only with ground truth)."""
    rows: list[TableRow] = []
    for suite in suites if suites is not None else [s["label"] for s in results.suites]:
        for info in results.metrics:
            if not results.metric_applies(suite, info.name):
                continue
            cells = [format_value(info.name, results.mean(suite, m.label, info.name)) for m in results.methods]
            rows.append(TableRow(suite, info.name, metric_heading(info.name, info.lower_better), cells,
                                 rank_marks(cells, info.lower_better), results.empty_reason(suite, info.name)))
    return rows


def efficiency_rows(results: BenchResults) -> list[TableRow]:
    """Table 5: warm median seconds per image, peak memory in GiB (both lower is better)."""
    by_method = {e.method: e for e in results.efficiency}
    # 4 significant digits: the paper prints 5.75 s and 1643.7 s; CPU peers take milliseconds.
    seconds = [f"{by_method[m.label].seconds:.4g}" if m.label in by_method else "" for m in results.methods]
    memory = [f"{by_method[m.label].peak_memory_bytes / GIB:.2f}" if m.label in by_method else ""
              for m in results.methods]
    return [TableRow("", "seconds", "Inference time (s) ↓", seconds, rank_marks(seconds, True), None),
            TableRow("", "memory_gib", "Memory usage (GiB) ↓", memory, rank_marks(memory, True), None)]


def memory_note(results: BenchResults) -> str:
    kinds = sorted({e.memory_kind for e in results.efficiency})
    return "; ".join(MEMORY_KINDS.get(k, k) for k in kinds)


# --------------------------------------------------------------------------------------------
# CSV and Markdown
# --------------------------------------------------------------------------------------------


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def summary_csv(results: BenchResults) -> str:
    """Means at full precision (``repr``), one row per (suite, metric); ``reason`` when empty."""
    methods = [m.label for m in results.methods]
    rows = []
    for row in metric_rows(results):
        info = results.metric_info(row.metric)
        means = [results.mean(row.suite, m, row.metric) for m in methods]
        rows.append([row.suite, row.metric, "lower" if info.lower_better else "higher",
                     *("" if v is None else repr(v) for v in means), row.reason or ""])
    return _csv_text(["suite", "metric", "better", *methods, "reason"], rows)


def per_image_csv(results: BenchResults) -> str:
    rows = []
    for r in results.images:
        for info in results.metrics:
            if info.name in r.metrics or info.name in r.errors:
                value = r.metrics.get(info.name)
                rows.append([r.suite, r.image, r.method, info.name, "" if value is None else repr(value),
                             r.errors.get(info.name, "")])
    return _csv_text(["suite", "image", "method", "metric", "value", "error"], rows)


def efficiency_csv(results: BenchResults) -> str:
    rows = [[e.method, repr(e.seconds), e.peak_memory_bytes, e.memory_kind, e.images] for e in results.efficiency]
    return _csv_text(["method", "seconds_per_image", "peak_memory_bytes", "memory_kind", "images"], rows)


def _md_cell(text: str, mark: str | None) -> str:
    if not text:
        return "–"
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark or "", text)


def _md_table(first: Sequence[str], methods: Sequence[str], rows: Sequence[TableRow], *, with_suite: bool,
              notes: dict[str, int]) -> list[str]:
    lines = ["| " + " | ".join([*first, *methods]) + " |", "|" + "---|" * (len(first) + len(methods))]
    previous = None
    for row in rows:
        heading = row.heading + (f" [{notes[row.reason]}]" if row.reason else "")
        lead = [row.suite if row.suite != previous else "", heading] if with_suite else [heading]
        previous = row.suite
        lines.append("| " + " | ".join([*lead, *(_md_cell(t, m) for t, m in zip(row.cells, row.marks, strict=True))])
                     + " |")
    return lines


def markdown_tables(results: BenchResults) -> str:
    """Tables 3–5 in Markdown, with footnotes saying why rows are empty."""
    methods = [m.label for m in results.methods]
    rows = metric_rows(results)
    notes: dict[str, int] = {}
    for row in rows:
        if row.reason and row.reason not in notes:
            notes[row.reason] = len(notes) + 1
    with_gt = [s["label"] for s in results.suites if s["has_ground_truth"]]
    without_gt = [s["label"] for s in results.suites if not s["has_ground_truth"]]
    cfg = results.config
    patch = cfg.get("patch", {})
    out = ["# Benchmark results", "",
           f"Methods: {', '.join(f'`{m.label}` = `{m.spec}`' for m in results.methods)}.",
           (f"Deep-feature metrics: patch-based, {patch.get('size')}×{patch.get('size')} crops, "
            f"stride {patch.get('stride')}. Best **bold**, second <u>underlined</u>."), ""]
    if with_gt:
        out += ["## Synthetic suites (ground truth; paper Table 3)", "",
                *_md_table(["Dataset", "Metric"], methods, [r for r in rows if r.suite in with_gt],
                           with_suite=True, notes=notes), ""]
    if without_gt:
        out += ["## Real-world suites (no ground truth; paper Table 4)", "",
                *_md_table(["Dataset", "Metric"], methods, [r for r in rows if r.suite in without_gt],
                           with_suite=True, notes=notes), ""]
    env = results.environment
    machine = env.get("gpu") or f"{env.get('cpu', '?')}, {env.get('cpu_threads', '?')} torch threads"
    out += ["## Efficiency (paper Table 5)", "",
            *_md_table(["Metric"], methods, efficiency_rows(results), with_suite=False, notes=notes), "",
            (f"Warm median seconds per image ({cfg.get('warmup_runs')} warm-up call, median of "
             f"{cfg.get('timed_runs')} timed calls per image, median over images); memory: "
             f"{memory_note(results)}. Machine: {machine} (device `{env.get('device')}`), torch {env.get('torch')}."), ""]
    if notes:
        out += ["Empty rows:", ""] + [f"[{n}] {reason}" for reason, n in notes.items()] + [""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------


def choose_crop(lr_luma: np.ndarray, scale: int, crop: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` in *output* pixels of the crop shown for every method.

    The LR window (``crop/scale`` px) with the most gradient energy, found with an integral
    image; ties go to the top-left-most window, so the choice is deterministic.
    """
    h, w = lr_luma.shape
    win_h, win_w = min(h, max(1, crop // scale)), min(w, max(1, crop // scale))
    energy = np.zeros((h, w))
    energy[:, 1:] += np.abs(np.diff(lr_luma, axis=1))
    energy[1:, :] += np.abs(np.diff(lr_luma, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[win_h:, win_w:] - integral[:-win_h, win_w:] - integral[win_h:, :-win_w]
            + integral[:-win_h, :-win_w])
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top) * scale, int(left) * scale, win_h * scale, win_w * scale


@dataclass(frozen=True)
class ReportConfig:
    crop: int = 256  # output pixels per side of the aligned crops
    embed: bool = True  # base64 images in one file, else report_files/ beside it
    plot_side: int = 256  # px of the spectrum and heatmap plots
    period: int = 32  # inspector token period


def _png(image: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)  # type: ignore[attr-defined]
    return buf.getvalue()


class _ImageSink:
    """Turns PNG bytes into an ``<img src>``: a data URI, or a file under report_files/."""

    def __init__(self, results_dir: Path, embed: bool, overwrite: bool) -> None:
        self.results_dir, self.embed, self.overwrite = results_dir, embed, overwrite

    def src(self, data: bytes, rel: str) -> str:
        if self.embed:
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        from op4ksr.utils.atomic import atomic_write_bytes

        atomic_write_bytes(self.results_dir / REPORT_FILES / rel, data, overwrite=self.overwrite)
        return f"{REPORT_FILES}/{rel}"


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _html_table(first: Sequence[str], methods: Sequence[str], rows: Sequence[TableRow], with_suite: bool) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [*first, *methods])
    body = []
    for row in rows:
        cells = []
        for text, mark in zip(row.cells, row.marks, strict=True):
            shown = html.escape(text) if text else "–"
            shown = {"best": f"<b>{shown}</b>", "second": f"<u>{shown}</u>"}.get(mark or "", shown)
            cells.append(f"<td>{shown}</td>")
        title = f' title="{html.escape(row.reason)}"' if row.reason else ""
        reason = f"<br><small>{html.escape(row.reason)}</small>" if row.reason else ""
        lead = (f"<td>{html.escape(row.suite)}</td>" if with_suite else "") + f"<td{title}>{html.escape(row.heading)}{reason}</td>"
        body.append(f"<tr>{lead}{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}figure{margin:0}
figcaption{font-size:12px;text-align:center;max-width:260px}img{image-rendering:pixelated;display:block}
section{border-top:2px solid #ddd;margin-top:1.5em}small{color:#777}"""


def html_report(results: BenchResults, results_dir: str | Path, config: ReportConfig | None = None, *,
                overwrite: bool = False, on_image: Callable[[], None] | None = None) -> str:
    """The report page; reads the outputs from ``results_dir`` (and the suites' LR/GT files)."""
    from PIL import Image

    from op4ksr.eval.bench import load_suite, load_tensor, tensor_to_uint8
    from op4ksr.eval.diagnostics.inspector import InspectorConfig, inspect_image
    from op4ksr.eval.diagnostics.plots import heatmap
    from op4ksr.eval.diagnostics.spectrum import to_luma

    config = config or ReportConfig()
    results_dir = Path(results_dir)
    sink = _ImageSink(results_dir, config.embed, overwrite)
    inspector = InspectorConfig(period=config.period)
    methods = [m.label for m in results.methods]
    rows = metric_rows(results)
    parts = [f"<h1>op4ksr benchmark</h1><p>{html.escape(', '.join(f'{m.label} = {m.spec}' for m in results.methods))}</p>",
             "<h2>Quality</h2>", _html_table(["Dataset", "Metric"], methods, rows, with_suite=True),
             "<h2>Efficiency</h2>", _html_table(["Metric"], methods, efficiency_rows(results), with_suite=False),
             f"<p>Memory: {html.escape(memory_note(results))}.</p>"]

    def panels(name: str, pixels: np.ndarray, box: tuple[int, int, int, int], rel: str) -> tuple[str, str, str]:
        top, left, ch, cw = box
        crop = Image.fromarray(pixels[top:top + ch, left:left + cw])
        report = inspect_image(pixels, inspector)
        spectrum = heatmap(report.spectrum, title=f"{name}: log10(1+|FFT2|)", xlabel="cycles/px",
                           ylabel="cycles/px", colorbar_label="log10", extent=(-0.5, 0.5, -0.5, 0.5),
                           side=config.plot_side)
        grid = report.heatmap if report.heatmap.size else np.zeros((1, 1))
        tiles_h, tiles_w = (report.heatmap.shape[0] * report.heatmap_tile, report.heatmap.shape[1] * report.heatmap_tile)
        heat = heatmap(grid, title=f"{name}: {report.score_db:.2f} dB", xlabel="x (px)", ylabel="y (px)",
                       colorbar_label="score (dB)", extent=(0.0, float(max(tiles_w, 1)), 0.0, float(max(tiles_h, 1))),
                       vmin=0.0, vmax=max(2 * inspector.threshold_db, float(grid.max())), side=config.plot_side)
        return (_figure(sink.src(_png(crop), f"{rel}_crop.png"), name),
                _figure(sink.src(_png(spectrum), f"{rel}_spectrum.png"), f"{name} spectrum"),
                _figure(sink.src(_png(heat), f"{rel}_heatmap.png"), f"{name} periodicity {report.score_db:.2f} dB"))

    for suite in results.suites:
        loaded = load_suite(suite["folder"], label=suite["label"], verify=False)
        by_name = {item.name: item for item in loaded.items}
        names = list(dict.fromkeys(r.image for r in results.images if r.suite == suite["label"]))
        for name in names:
            item = by_name[name]
            lr = tensor_to_uint8(load_tensor(item.lr))
            outputs = {r.method: r for r in results.images if r.suite == suite["label"] and r.image == name}
            scale = next(m.scale for m in results.methods if m.label in outputs)
            box = choose_crop(to_luma(lr), scale, config.crop)
            top, left, ch, cw = box
            lr_crop = Image.fromarray(lr[top // scale:(top + ch) // scale, left // scale:(left + cw) // scale])
            # Nearest-neighbour: the LR pixels as they are, at the size of the other crops.
            lr_crop = lr_crop.resize((cw, ch), Image.Resampling.NEAREST)
            rel_base = f"{suite['label']}/{name}"
            crops = [_figure(sink.src(_png(lr_crop), f"{rel_base}/LR_crop.png"), "LR (nearest)")]
            spectra, heats = [], []
            sources = [(m, results_dir / outputs[m].output) for m in methods if m in outputs]
            if item.hr is not None:
                sources.append(("GT", item.hr))
            for label, path in sources:
                pixels = tensor_to_uint8(load_tensor(path))
                crop_fig, spec_fig, heat_fig = panels(label, pixels, box, f"{rel_base}/{label}")
                crops.append(crop_fig)
                spectra.append(spec_fig)
                heats.append(heat_fig)
            parts.append(f"<section><h2>{html.escape(suite['label'])} / {html.escape(name)}</h2>"
                         f"<p>crop: x {left}–{left + cw}, y {top}–{top + ch} (output pixels)</p>"
                         f"<div class=\"row\">{''.join(crops)}</div><h3>Spectra</h3>"
                         f"<div class=\"row\">{''.join(spectra)}</div><h3>Periodicity heatmaps "
                         f"({config.period}-px grid score per tile)</h3><div class=\"row\">{''.join(heats)}</div></section>")
            if on_image is not None:
                on_image()
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>op4ksr benchmark</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def report_image_count(results: BenchResults) -> int:
    return len({(r.suite, r.image) for r in results.images})


def write_reports(results: BenchResults, results_dir: str | Path, config: ReportConfig | None = None, *,
                  overwrite: bool = False, on_image: Callable[[], None] | None = None) -> dict[str, Path]:
    """Write the CSVs, tables.md and report.html into ``results_dir``; returns their paths."""
    from op4ksr.utils.atomic import atomic_write_text

    results_dir = Path(results_dir)
    texts = {SUMMARY_CSV: summary_csv(results), PER_IMAGE_CSV: per_image_csv(results),
             EFFICIENCY_CSV: efficiency_csv(results), TABLES_MD: markdown_tables(results)}
    if not overwrite:
        for name in REPORT_OUTPUTS:
            if (results_dir / name).exists():
                raise FileExistsError(f"{results_dir / name}: exists (use --overwrite to replace it)")
    page = html_report(results, results_dir, config, overwrite=overwrite, on_image=on_image)
    paths = {}
    for name, text in [*texts.items(), (REPORT_HTML, page)]:
        paths[name] = atomic_write_text(results_dir / name, text, overwrite=overwrite)
    return paths

