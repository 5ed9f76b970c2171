"""Grid-artifact inspector for any SR output (paper Sec. 3.2 and Fig. 10).

Scores how strongly an image repeats with a given period (the DiT token period, 32 px for
OP4KSR / OMGSR-style Flux SR), finds the dominant period, maps where the grid is and renders
the log-magnitude spectrum. See docs/INSPECTOR.md for the score's definition, its calibration
on real photos and the JSON schema.

Score at period P (dB): along each axis, average the power spectra of all lines; at each
*exclusive* harmonic k·n/P (gcd(k, P) = 1, so no shorter period such as JPEG's 8 px can
produce it) take the prominence 10·log10(power / median of neighbouring bins); the axis score
is the mean of the two largest of these; the image score is the larger axis score.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from op4ksr.eval.diagnostics.spectrum import (
    center_crop_to_multiple,
    exclusive_harmonics,
    fold_lines,
    harmonic_prominence,
    line_power_spectrum,
    local_background,
    log_magnitude_spectrum,
    prominence_db,
    to_luma,
)
from op4ksr.models.constants import TOKEN_PERIOD

SCHEMA_VERSION = 1
DEFAULT_PERIOD = TOKEN_PERIOD  # 16× VAE × 2×2 packing
DEFAULT_THRESHOLD_DB = 5.0  # calibrated on 50 real photos: docs/INSPECTOR.md
AXES = ("horizontal", "vertical")


@dataclass(frozen=True)
class InspectorConfig:
    """How the inspector scores an image.

    period: token period in px whose grid is scored and flagged.
    threshold_db: score above which the image is flagged (calibration: docs/INSPECTOR.md).
    min_period, max_period: range searched for the dominant period.
    tile_periods: heatmap tile side, in periods (8 → 256-px tiles at P = 32).
    top_k, n_harmonics: an axis score is the mean of the ``top_k`` largest prominences among
        the lowest ``n_harmonics`` exclusive harmonics.
    search_harmonics: ``n_harmonics`` for the dominant-period search: fewer, lower harmonics
        (where grids and blocking put most energy) keep the noise floor of the ~60
        candidates down.
    dominant_margin_db: a multiple of the best-scoring period counts as the fundamental when
        its score is within this margin of the best (and above the threshold).
    min_repeats: the dominant-period search skips periods that repeat fewer times than this
        across the shorter side: a few repeats of a long period is content (a window, a
        pole), not a grid.
    search_lines: lines per axis used by the dominant-period search (central ones).
    min_fold: lines are folded by the smallest multiple of the period ≥ this, so that short
        periods still average enough lines for a stable spectrum.
    """

    period: int = DEFAULT_PERIOD
    threshold_db: float = DEFAULT_THRESHOLD_DB
    min_period: int = 2
    max_period: int = 64
    tile_periods: int = 8
    top_k: int = 2
    n_harmonics: int = 16
    search_harmonics: int = 4
    dominant_margin_db: float = 10.0
    min_fold: int = 32
    min_repeats: int = 16
    search_lines: int = 1024

    def __post_init__(self) -> None:
        if self.period < 2:
            raise ValueError(f"period must be ≥ 2 px, got {self.period}")
        if not math.isfinite(self.threshold_db):  # NaN would flag nothing and compare as nothing
            raise ValueError(f"threshold_db must be a finite number of dB, got {self.threshold_db}")
        if not 2 <= self.min_period <= self.max_period:
            raise ValueError(f"need 2 ≤ min_period ≤ max_period, got {self.min_period}, {self.max_period}")


@dataclass(frozen=True)
class HarmonicPeak:
    """Prominence (dB) of one harmonic k of the token period, per axis."""

    k: int
    cycles_per_pixel: float
    exclusive: bool  # gcd(k, period) == 1: only period P itself produces it
    horizontal_db: float
    vertical_db: float


@dataclass(frozen=True)
class GridReport:
    """What :func:`inspect_image` found. ``to_dict`` is the stable ``--json`` form."""

    height: int
    width: int
    period: int
    score_db: float
    flagged: bool
    threshold_db: float
    axis_scores_db: dict[str, float]
    acf_score: float
    acf_at_period: float
    dominant_period: int | None
    dominant_feature: str | None  # "signed" (a coherent pattern) or "gradient" (blocking edges)
    period_scores_db: dict[str, dict[int, float]]
    harmonics: tuple[HarmonicPeak, ...]
    heatmap_tile: int
    heatmap: np.ndarray = field(repr=False)  # [tiles_y, tiles_x] tile scores (dB)
    spectrum: np.ndarray = field(repr=False)  # log10(1 + |FFT2|), centred

    def to_dict(self) -> dict:
        """JSON-ready summary (arrays left out; they are written as PNGs). Schema: docs/INSPECTOR.md."""
        return {
            "schema_version": SCHEMA_VERSION,
            "height": self.height,
            "width": self.width,
            "period": self.period,
            "score_db": round(self.score_db, 3),
            "threshold_db": self.threshold_db,
            "flagged": self.flagged,
            "axis_scores_db": {k: round(v, 3) for k, v in self.axis_scores_db.items()},
            "acf_score": round(self.acf_score, 4),
            "acf_at_period": round(self.acf_at_period, 4),
            "dominant_period": self.dominant_period,
            "dominant_feature": self.dominant_feature,
            "period_scores_db": {
                feature: {str(p): round(v, 3) for p, v in scores.items()}
                for feature, scores in self.period_scores_db.items()
            },
            "harmonics": [
                {**asdict(h), "cycles_per_pixel": round(h.cycles_per_pixel, 6),
                 "horizontal_db": round(h.horizontal_db, 3), "vertical_db": round(h.vertical_db, 3)}
                for h in self.harmonics
            ],
            "heatmap_tile": self.heatmap_tile,
            "heatmap_max_db": round(float(self.heatmap.max()), 3) if self.heatmap.size else None,
        }


def _half_window(n: int, period: int) -> int:
    """Neighbourhood for the background median: wide enough to be robust, narrower than the
    spacing n/P between harmonics so the neighbouring harmonics don't inflate it."""
    return int(max(2, min(8, (n / period) // 2 - 1)))


@dataclass(frozen=True)
class _AxisSpectra:
    """Folded line spectra (prominence, dB) of one feature along both axes, for one period."""

    period: int
    n: tuple[int, int]  # analysed line length per axis
    prominence: tuple[np.ndarray, np.ndarray]  # [..., n//2 + 1] per axis

    @classmethod
    def of(cls, lines_by_axis: tuple[np.ndarray, np.ndarray], period: int, min_fold: int) -> _AxisSpectra:
        """``lines_by_axis``: the feature as horizontal lines [..., H, W] and as vertical lines
        [..., W, H]. Lines are folded by the smallest multiple of ``period`` ≥ ``min_fold`` (so
        even short periods average enough lines), then their power spectra are averaged."""
        ns, proms = [], []
        for lines in lines_by_axis:
            fold = period * max(1, math.ceil(min_fold / period))
            fold = min(fold, period * (lines.shape[-2] // period))
            if fold == 0 or lines.shape[-1] < 2 * period:
                raise ValueError(f"image too small for period {period} px: {lines.shape[-2:]}")
            lines = center_crop_to_multiple(lines, fold)
            n = lines.shape[-1]
            power = line_power_spectrum(fold_lines(lines, fold))
            ns.append(n)
            proms.append(prominence_db(power, local_background(power, _half_window(n, period))))
        return cls(period=period, n=(ns[0], ns[1]), prominence=(proms[0], proms[1]))

    def score(self, top_k: int, n_harmonics: int) -> np.ndarray:
        """Score (dB) per axis [..., 2]: mean of the ``top_k`` largest prominences among the
        lowest ``n_harmonics`` exclusive harmonics (where grids and blocking put most energy;
        fewer tries also keep the noise floor of long periods down)."""
        harmonics = exclusive_harmonics(self.period)[:n_harmonics]
        scores = []
        for n, prom in zip(self.n, self.prominence, strict=True):
            values = np.sort(harmonic_prominence(prom, n, self.period, harmonics), axis=-1)
            scores.append(values[..., -min(top_k, len(harmonics)):].mean(axis=-1))
        return np.stack(scores, axis=-1)


def _signed_lines(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return luma, np.swapaxes(luma, -1, -2)


def _gradient_lines(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|∂x| as horizontal lines and |∂y| as vertical lines: blocking whose sign changes from
    block to block (JPEG) cancels in the signed fold but is always positive here."""
    return np.abs(np.diff(luma, axis=-1)), np.swapaxes(np.abs(np.diff(luma, axis=-2)), -1, -2)


def _limit_lines(lines_by_axis: tuple[np.ndarray, np.ndarray], max_lines: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_lines`` central lines of each axis (full line length: frequency resolution)."""
    limited = []
    for lines in lines_by_axis:
        start = max(0, (lines.shape[-2] - max_lines) // 2)
        limited.append(lines[..., start : start + max_lines, :])
    return limited[0], limited[1]


def _whitened_acf(spectra: _AxisSpectra, lag: int) -> float:
    """Autocorrelation at ``lag`` of the spectrum-flattened image, larger of the two axes.

    Dividing the folded spectrum by its local background flattens natural 1/f content to
    ~white, so what correlates at a lag is the periodic excess. ρ(Δ) = Σ(R−1)cos(2πfΔ/n)/ΣR.
    """
    best = -1.0
    for n, prom in zip(spectra.n, spectra.prominence, strict=True):
        ratio = 10.0 ** (prom[1:] / 10.0)  # skip the DC bin
        freqs = np.arange(1, ratio.shape[-1] + 1)
        value = float(((ratio - 1.0) * np.cos(2 * np.pi * freqs * lag / n)).sum() / ratio.sum())
        best = max(best, value)
    return best


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        if n % p == 0:
            factors.append(p)
            while n % p == 0:
                n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def _dominant_period(luma: np.ndarray, config: InspectorConfig, token_score: float | None) -> tuple[int | None, str | None, dict[str, dict[int, float]]]:
    """The fundamental period of whatever repeats, from the signed and the gradient features.

    Every divisor of a grid's period can score too (a thin-line grid has all harmonics), but
    a multiple of it or an unrelated period cannot. So take the best-scoring candidate and
    return its longest multiple scoring within ``dominant_margin_db`` of it: 32 for a token
    grid whose |∂| repeats every 16, 8 for JPEG blocking.
    """
    # Search on at most ``search_lines`` central lines per axis, in fp32: the fold already
    # averages hundreds of lines, and ~120 spectra per image must stay cheap at 4K.
    features = {
        "signed": _limit_lines(_signed_lines(luma.astype(np.float32)), config.search_lines),
        "gradient": _limit_lines(_gradient_lines(luma.astype(np.float32)), config.search_lines),
    }
    scores: dict[str, dict[int, float]] = {name: {} for name in features}
    longest = min(config.max_period, min(luma.shape) // config.min_repeats)
    for candidate in range(config.min_period, longest + 1):
        for name, lines in features.items():
            try:
                spectra = _AxisSpectra.of(lines, candidate, config.min_fold)
            except ValueError:  # candidate longer than the image allows
                continue
            scores[name][candidate] = float(spectra.score(config.top_k, config.search_harmonics).max())
    combined = {p: max(scores["signed"].get(p, -np.inf), scores["gradient"].get(p, -np.inf)) for p in scores["signed"]}
    if token_score is not None:
        # The token period always competes (even on images too small for the search to reach
        # it), with the fuller all-harmonic score computed for the flag.
        combined[config.period] = max(combined.get(config.period, -np.inf), token_score)
    if not combined or max(combined.values()) <= config.threshold_db:
        return None, None, scores
    best = max(combined, key=combined.__getitem__)
    # Divisors of the fundamental score too; multiples and unrelated periods do not. The
    # fundamental is the longest multiple of the best period that is nearly as strong.
    floor = max(config.threshold_db, combined[best] - config.dominant_margin_db)
    flagged = token_score is not None and token_score > config.threshold_db
    # A flagged token grid always counts, even beside much stronger JPEG blocking: it is the
    # visible artifact the user asked about.
    dominant = max(p for p, value in combined.items()
                   if p % best == 0 and (value > floor or (flagged and p == config.period)))
    feature = "signed" if scores["signed"].get(dominant, np.inf) >= scores["gradient"].get(dominant, -np.inf) else "gradient"
    return dominant, feature, scores


def _tile_heatmap(luma: np.ndarray, config: InspectorConfig) -> tuple[int, np.ndarray]:
    """Signed score of the token period per tile (dB), [tiles_y, tiles_x]."""
    period = config.period
    tile = period * config.tile_periods
    # Small images: shrink the tile (keeping whole periods) so there are at least 2×2 tiles.
    while tile > 4 * period and (luma.shape[0] < 2 * tile or luma.shape[1] < 2 * tile):
        tile -= period
    tiles_y, tiles_x = luma.shape[0] // tile, luma.shape[1] // tile
    if tiles_y == 0 or tiles_x == 0:
        return tile, np.zeros((0, 0))
    cropped = luma[: tiles_y * tile, : tiles_x * tile]
    tiles = cropped.reshape(tiles_y, tile, tiles_x, tile).transpose(0, 2, 1, 3)
    spectra = _AxisSpectra.of(_signed_lines(tiles), period, config.min_fold)
    return tile, spectra.score(config.top_k, config.n_harmonics).max(axis=-1)


def inspect_image(image: object, config: InspectorConfig | None = None) -> GridReport:
    """Inspect one image (numpy [H,W(,C)] uint8/uint16/float, or torch [C,H,W]/[1,C,H,W] in [0,1])."""
    config = config or InspectorConfig()
    period = config.period
    luma = to_luma(image)
    height, width = luma.shape
    spectra = _AxisSpectra.of(_signed_lines(luma), period, config.min_fold)
    axis_scores = spectra.score(config.top_k, config.n_harmonics)
    score = float(axis_scores.max())

    all_k = list(range(1, period // 2 + 1))
    exclusive = set(exclusive_harmonics(period))
    per_axis = [harmonic_prominence(prom, n, period, all_k) for n, prom in zip(spectra.n, spectra.prominence, strict=True)]
    harmonics = tuple(
        HarmonicPeak(k=k, cycles_per_pixel=k / period, exclusive=k in exclusive,
                     horizontal_db=float(per_axis[0][i]), vertical_db=float(per_axis[1][i]))
        for i, k in enumerate(all_k)
    )
    acf_at_period = _whitened_acf(spectra, period)
    acf_at_subperiods = max((_whitened_acf(spectra, period // p) for p in _prime_factors(period)), default=0.0)
    dominant, feature, period_scores = _dominant_period(luma, config, token_score=score)
    tile, heat = _tile_heatmap(luma, config)
    return GridReport(
        height=height, width=width, period=period, score_db=score,
        flagged=score > config.threshold_db, threshold_db=config.threshold_db,
        axis_scores_db={AXES[0]: float(axis_scores[0]), AXES[1]: float(axis_scores[1])},
        acf_score=acf_at_period - acf_at_subperiods, acf_at_period=acf_at_period,
        dominant_period=dominant, dominant_feature=feature, period_scores_db=period_scores,
        harmonics=harmonics, heatmap_tile=tile, heatmap=heat, spectrum=log_magnitude_spectrum(luma),
    )


def grid_score(image: object, period: int = DEFAULT_PERIOD, config: InspectorConfig | None = None) -> float:
    """Cheap periodicity score (dB) at ``period``: the inspector's flag score without the extras.

    For benchmark tables and validation loops; above ``DEFAULT_THRESHOLD_DB`` means a grid.
    """
    config = config or InspectorConfig(period=period)
    spectra = _AxisSpectra.of(_signed_lines(to_luma(image)), period, config.min_fold)
    return float(spectra.score(config.top_k, config.n_harmonics).max())


def tile_scores(image: object, offset: int = 0, config: InspectorConfig | None = None) -> np.ndarray:
    """The heat map's per-tile scores (dB), flattened, for tiles starting ``offset`` px into the
    image on both axes: a grid that changes across the image shows here even when the whole-image
    score (which needs the pattern to be coherent everywhere) stays low. ``offset`` = half a tile
    gives tiles that straddle any tiling aligned to the image's origin."""
    config = config or InspectorConfig()
    luma = to_luma(image)
    if offset:
        luma = luma[offset:-offset, offset:-offset]
    return _tile_heatmap(luma, config)[1].ravel()


@dataclass(frozen=True)
class ReferenceComparison:
    """The inspected image against a reference of the same size (e.g. the ground truth)."""

    reference_score_db: float
    score_delta_db: float  # image score − reference score: the grid the image *added*
    periodicity_loss: float  # L_AP(image, reference), paper Eq. 3 with its default settings

    def to_dict(self) -> dict:
        return {"reference_score_db": round(self.reference_score_db, 3),
                "score_delta_db": round(self.score_delta_db, 3),
                "periodicity_loss": float(f"{self.periodicity_loss:.6g}")}


def compare_to_reference(image: object, reference: object, report: GridReport,
                         config: InspectorConfig | None = None) -> ReferenceComparison:
    """Score ``reference`` like ``image`` and compute L_AP between them (RGB, or luma for grey)."""
    import torch

    from op4ksr.io.images import to_tensor
    from op4ksr.losses.periodicity import periodicity_loss

    config = config or InspectorConfig(period=report.period)

    def as_tensor(array: object) -> torch.Tensor:
        if hasattr(array, "detach"):
            tensor = array.detach().float().cpu()
            return tensor if tensor.ndim == 4 else tensor[None]
        values = np.asarray(array)
        return to_tensor(values if values.ndim == 2 else values[..., :3])

    image_t, reference_t = as_tensor(image), as_tensor(reference)
    if image_t.shape[-2:] != reference_t.shape[-2:]:
        raise ValueError(f"reference is {reference_t.shape[-1]}×{reference_t.shape[-2]}, "
                         f"image is {image_t.shape[-1]}×{image_t.shape[-2]}: sizes must match")
    reference_score = grid_score(reference, config.period, config)  # after the size check: its own errors are about size
    if image_t.shape[1] != reference_t.shape[1]:  # grey vs colour: compare luma
        image_t = torch.from_numpy(to_luma(image)).float()[None, None]
        reference_t = torch.from_numpy(to_luma(reference)).float()[None, None]
    loss = float(periodicity_loss(image_t, reference_t))
    return ReferenceComparison(reference_score_db=reference_score,
                               score_delta_db=report.score_db - reference_score, periodicity_loss=loss)


def save_inspection(report: GridReport, out_dir: str | os.PathLike, *, image_name: str,
                    luma: np.ndarray | None = None, extra: dict | None = None,
                    overwrite: bool = False) -> dict[str, Path]:
    """Write heatmap.png, spectrum.png, harmonics.png, report.json and index.html to ``out_dir``.

    ``luma`` (the inspected image's luma) is drawn under the heatmap when given; ``extra`` is
    merged into report.json (e.g. the image path and a reference comparison). Every file is
    written atomically; an existing file is an error unless ``overwrite``.
    """
    out = Path(out_dir)
    if not overwrite:
        existing = [out / name for name in _REPORT_FILES.values() if (out / name).exists()]
        if existing:
            raise FileExistsError(f"{existing[0]}: exists (use --overwrite to replace it)")
    paths = {key: out / name for key, name in _REPORT_FILES.items()}
    new_folder = not out.exists()
    before = {key for key, path in paths.items() if path.exists()}
    try:
        _write_report_files(report, paths, image_name, luma, extra, overwrite)
    except BaseException:
        # all or nothing: a half-written report would block the rerun ("exists") without --overwrite
        for key, path in paths.items():
            if key not in before:
                path.unlink(missing_ok=True)
        if new_folder and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return paths


def _write_report_files(report: GridReport, paths: dict[str, Path], image_name: str, luma: np.ndarray | None,
                        extra: dict | None, overwrite: bool) -> None:
    from op4ksr.eval.diagnostics.plots import (
        PALETTE,
        HLine,
        Series,
        heatmap,
        line_plot,
        save_png,
    )
    from op4ksr.utils.atomic import atomic_write_text

    span = max(2.0 * report.threshold_db, float(report.heatmap.max()) if report.heatmap.size else 0.0)
    tiles_h = report.heatmap.shape[0] * report.heatmap_tile
    tiles_w = report.heatmap.shape[1] * report.heatmap_tile
    underlay = None
    if luma is not None and report.heatmap.size:
        step = max(1, max(tiles_h, tiles_w) // 512)
        underlay = luma[:tiles_h:step, :tiles_w:step]
    save_png(heatmap(report.heatmap if report.heatmap.size else np.zeros((1, 1)),
                     title=f"{image_name}: {report.period}-px grid score per {report.heatmap_tile}-px tile",
                     xlabel="x (px)", ylabel="y (px)", colorbar_label="score (dB)",
                     extent=(0.0, float(tiles_w), 0.0, float(tiles_h)), vmin=0.0, vmax=span,
                     underlay=underlay), paths["heatmap"], overwrite=overwrite)
    save_png(heatmap(report.spectrum, title=f"{image_name}: log10(1 + |FFT2|)",
                     xlabel="horizontal frequency (cycles/px)", ylabel="vertical frequency (cycles/px)",
                     colorbar_label="log10 magnitude", extent=(-0.5, 0.5, -0.5, 0.5), colormap="inferno"),
             paths["spectrum"], overwrite=overwrite)
    ks = [h.k for h in report.harmonics]
    save_png(line_plot([Series("horizontal", ks, [h.horizontal_db for h in report.harmonics], PALETTE[0]),
                        Series("vertical", ks, [h.vertical_db for h in report.harmonics], PALETTE[1])],
                       title=f"{image_name}: prominence of harmonics k of the {report.period}-px period",
                       xlabel=f"harmonic k (frequency k/{report.period} cycles/px)", ylabel="prominence (dB)",
                       hlines=[HLine(report.threshold_db, f"threshold {report.threshold_db:g} dB")]),
             paths["harmonics"], overwrite=overwrite)
    summary = {"image": image_name, **report.to_dict(), **(extra or {}),
               "outputs": {key: path.name for key, path in paths.items()}}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2) + "\n", overwrite=overwrite)
    atomic_write_text(paths["html"], _html_page(image_name, summary), overwrite=overwrite)


_REPORT_FILES = {"heatmap": "heatmap.png", "spectrum": "spectrum.png", "harmonics": "harmonics.png",
                 "json": "report.json", "html": "index.html"}


def _html_page(image_name: str, summary: dict) -> str:
    verdict = "GRID FOUND" if summary["flagged"] else "no grid"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(summary[k]))}</td></tr>"
                   for k in ("score_db", "threshold_db", "flagged", "dominant_period", "dominant_feature",
                             "acf_score", "height", "width"))
    images = "".join(f'<figure><img src="{name}" alt="{key}"><figcaption>{key}</figcaption></figure>'
                     for key, name in summary["outputs"].items() if name.endswith(".png"))
    return (f"<!doctype html><meta charset='utf-8'><title>op4ksr inspect: {html.escape(image_name)}</title>"
            f"<h1>{html.escape(image_name)}: {verdict} at {summary['period']} px</h1>"
            f"<table>{rows}</table>{images}<p><a href='report.json'>report.json</a></p>\n")
