"""Three-stage curation of a photo corpus into a JSONL manifest (the paper's Fig. 7).

(i)   Preliminary filtering: Laplacian variance and Sobel energy reject blurred and flat images
      (absolute thresholds); GLCM contrast, GLCM correlation and Shannon entropy are combined by
      rank into an aggregate and only the top ``keep_fraction`` of the survivors is kept.
(ii)  Degradation and aesthetics: blur and noise estimates (thresholds), plus any pluggable
      scorer (a learned degradation scorer, the LAION aesthetic predictor) with optional minimums.
(iii) A vision-language model rates texture richness and clarity (see :mod:`op4ksr.data.vlm`).

Per-file work (decode + stages i/ii scores) runs on a process pool or on Ray Data; every result
is appended to a progress file next to the manifest (``<manifest>.progress.jsonl``) as soon as it
is known, so an interrupted run resumes where it stopped and a repeated run does no work. The
manifest itself is derived from the progress file and written atomically. An unreadable file is
a rejected row with its reason, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from op4ksr.data.aesthetic import ScorerSpec, build_scorer
from op4ksr.data.imageio import decode_rgb, find_images, read_rgb, to_float_array
from op4ksr.data.quality import (
    blur_estimate,
    downscale_max_side,
    glcm_contrast_correlation,
    laplacian_variance,
    noise_sigma,
    shannon_entropy,
    sobel_energy,
    to_gray255,
)
from op4ksr.data.vlm import VLMConfig, assess_many
from op4ksr.io.images import PHOTO_SUFFIXES, ImageError
from op4ksr.utils.atomic import atomic_write_text

ProgressCallback = Callable[[str, int, int], None]  # (phase, done, total)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CurationConfig:
    # Stage (i). Thresholds are in 8-bit grey levels, measured at full resolution; calibrated in
    # docs/DATA.md (sharp photos: Laplacian variance ≥ ~100; a σ=2 Gaussian blur drops it < 10).
    min_laplacian_var: float = 20.0
    min_sobel_energy: float = 1.0
    keep_fraction: float = 0.5
    glcm_levels: int = 64
    # GLCM and the blur estimate run on an area-downscaled copy: they describe texture at a
    # viewing scale, and at 4K they would dominate the cost.
    analysis_max_side: int = 1024
    # Stage (ii).
    max_blur: float = 0.6
    max_noise_sigma: float = 10.0
    scorers: tuple[ScorerSpec, ...] = ()
    min_scores: tuple[tuple[str, float], ...] = ()  # e.g. (("aesthetic", 5.0),)
    # Stage (iii); None skips it.
    vlm: VLMConfig | None = None
    extensions: frozenset[str] = PHOTO_SUFFIXES

    def __post_init__(self) -> None:
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")


@dataclass
class CurationResult:
    rows: list[dict[str, Any]]
    scored: int  # files decoded and scored in this run
    vlm_requests: int  # images sent to the VLM in this run
    manifest_written: bool
    manifest: Path
    unusable: list[tuple[Path, str]] = field(default_factory=list)  # names under the sources that are not files

    @property
    def kept(self) -> int:
        return sum(r["status"] == "kept" for r in self.rows)


def file_key(path: Path) -> str:
    """Identity of a file version: a changed file (size or mtime) is scored again."""
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def score_file(path: str, config: CurationConfig) -> dict[str, Any]:
    """Decode one file and compute every per-file score. Never raises for bad files."""
    p = Path(path)
    row: dict[str, Any] = {"path": str(p), "key": file_key(p)}
    try:
        data = p.read_bytes()
    except OSError as exc:
        return {**row, "error": f"cannot read: {exc.strerror or exc}"}
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        img = decode_rgb(data, str(p))
    except ImageError as exc:
        return {**row, "error": f"unreadable image: {exc}"}
    row["width"], row["height"] = img.size
    rgb = to_float_array(img)
    gray = to_gray255(rgb)
    small = downscale_max_side(gray, config.analysis_max_side)
    contrast, correlation = glcm_contrast_correlation(small, config.glcm_levels)
    scores = {
        "laplacian_var": laplacian_variance(gray),
        "sobel_energy": sobel_energy(gray),
        "glcm_contrast": contrast,
        "glcm_correlation": correlation,
        "entropy": shannon_entropy(gray),
        "blur": blur_estimate(small),
        "noise_sigma": noise_sigma(gray),
    }
    for spec in config.scorers:
        try:
            scores.update({k: float(v) for k, v in build_scorer(spec)(rgb).items()})
        except Exception as exc:  # noqa: BLE001 - a plug-in failing on one file must not stop the run
            row.setdefault("scorer_errors", {})[spec.target] = f"{type(exc).__name__}: {exc}"
    row["scores"] = scores
    return row


# --------------------------------------------------------------------------------------------
# Progress file
# --------------------------------------------------------------------------------------------
def progress_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + ".progress.jsonl")


def _load_progress(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    files: dict[str, dict[str, Any]] = {}
    vlm: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return files, vlm
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that file is simply scored again
            target = files if event.get("kind") == "file" else vlm
            target[event["key"]] = event["data"]
    return files, vlm


class _ProgressWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A crash can leave a half-written last line: end it so the next event starts clean.
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
        self._fh = path.open("a", encoding="utf-8")
        if torn:
            self._fh.write("\n")

    def add(self, kind: str, key: str, data: dict[str, Any]) -> None:
        self._fh.write(json.dumps({"kind": kind, "key": key, "data": data}, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        os.fsync(self._fh.fileno())
        self._fh.close()


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------
def _score_local(paths: list[str], config: CurationConfig, workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        for p in paths:
            yield score_file(p, config)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # chunks keep the inter-process overhead small for millions of small tasks
        yield from pool.map(score_file, paths, [config] * len(paths), chunksize=max(1, min(16, len(paths) // (4 * workers))))


def _score_ray(paths: list[str], config: CurationConfig, address: str) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray path needs the `cluster` extra: pip install 'op4ksr[cluster]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                 log_to_driver=False, include_dashboard=False)
    # The CLI draws its own progress bar; Ray's would interleave with it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items([{"path": p} for p in paths])
    # Rows travel as JSON text: Arrow would otherwise coerce the nested, ragged score dicts.
    ds = ds.map(lambda item: {"row": json.dumps(score_file(item["path"], config))})
    for item in ds.iter_rows():
        yield json.loads(item["row"])


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------
def _rank01(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (ties share a rank); a single value gets 1."""
    from scipy.stats import rankdata

    if len(values) <= 1:
        return np.ones(len(values))
    return (rankdata(values, method="average") - 1) / (len(values) - 1)


def stage1_aggregate(rows: list[dict[str, Any]]) -> list[float]:
    """Mean of rank-normalised GLCM contrast (↑), GLCM decorrelation 1 - corr (↑) and entropy (↑).

    Ranks, not raw values, because the three live on unrelated scales and heavy tails (contrast)
    would otherwise dominate. Correlation enters inverted: smooth and blurred images are highly
    correlated, texture-rich ones less so.
    """
    if not rows:
        return []
    contrast = np.array([r["scores"]["glcm_contrast"] for r in rows])
    decorrelation = np.array([1.0 - r["scores"]["glcm_correlation"] for r in rows])
    entropy = np.array([r["scores"]["entropy"] for r in rows])
    agg = (_rank01(contrast) + _rank01(decorrelation) + _rank01(entropy)) / 3.0
    return [round(float(a), 12) for a in agg]


def select(
    scored: list[dict[str, Any]], vlm: dict[str, dict[str, Any]], config: CurationConfig
) -> list[dict[str, Any]]:
    """Turn per-file scores into manifest rows: status, reason, aggregate, rank; sorted best first."""
    rows: list[dict[str, Any]] = []
    readable = [r for r in scored if "error" not in r]
    for r in scored:
        if "error" in r:
            rows.append({**r, "status": "rejected", "stage": 0, "reason": r["error"]})
    for r, agg in zip(readable, stage1_aggregate(readable), strict=True):
        rows.append({**r, "stage1_aggregate": agg, "status": "kept", "stage": None, "reason": None})

    live = [r for r in rows if r["status"] == "kept"]
    for r in live:
        s = r["scores"]
        if s["laplacian_var"] < config.min_laplacian_var:
            _reject(r, 1, f"blurred or flat: Laplacian variance {s['laplacian_var']:.3g} < {config.min_laplacian_var:g}")
        elif s["sobel_energy"] < config.min_sobel_energy:
            _reject(r, 1, f"flat: Sobel energy {s['sobel_energy']:.3g} < {config.min_sobel_energy:g}")
    live = sorted((r for r in live if r["status"] == "kept"), key=lambda r: (-r["stage1_aggregate"], r["path"]))
    n_keep = math.ceil(config.keep_fraction * len(live))
    for position, r in enumerate(live):
        if position >= n_keep:
            _reject(r, 1, f"below the top {config.keep_fraction:.0%} by GLCM/entropy aggregate")

    minimums = dict(config.min_scores)
    for r in (r for r in rows if r["status"] == "kept"):
        s = r["scores"]
        if s["blur"] > config.max_blur:
            _reject(r, 2, f"blur estimate {s['blur']:.3g} > {config.max_blur:g}")
        elif s["noise_sigma"] > config.max_noise_sigma:
            _reject(r, 2, f"noise sigma {s['noise_sigma']:.3g} > {config.max_noise_sigma:g}")
        else:
            for name, minimum in minimums.items():
                if name not in s:
                    _reject(r, 2, f"no {name} score (scorer missing or failed)")
                    break
                if s[name] < minimum:
                    _reject(r, 2, f"{name} {s[name]:.3g} < {minimum:g}")
                    break

    if config.vlm is not None:
        for r in (r for r in rows if r["status"] == "kept"):
            result = vlm.get(r["key"])
            if result is None or result.get("error"):
                _reject(r, 3, f"VLM assessment failed: {result['error'] if result else 'not run'}")
                continue
            r["scores"].update({f"vlm_{k}": v for k, v in result["scores"].items()})
            mean = sum(result["scores"].values()) / len(result["scores"])
            if mean < config.vlm.min_score:
                _reject(r, 3, f"VLM score {mean:.3g} < {config.vlm.min_score:g}")

    rows.sort(key=lambda r: (-_depth(r), -r.get("stage1_aggregate", -1.0), r["path"]))
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    return rows


def _reject(row: dict[str, Any], stage: int, reason: str) -> None:
    row["status"], row["stage"], row["reason"] = "rejected", stage, f"stage {stage}: {reason}"


def _depth(row: dict[str, Any]) -> int:
    """How far a row got: kept rows first, then late rejects before early ones (for ranking)."""
    if row["status"] == "kept":
        return 5
    if row["stage"] == 1:
        return 2 if row["reason"].startswith("stage 1: below the top") else 1
    return {0: 0, 2: 3, 3: 4}[row["stage"]]


def render_manifest(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps({"schema": SCHEMA_VERSION, **r}, sort_keys=True) + "\n" for r in rows)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def curate(
    sources: list[str | Path],
    manifest: str | Path,
    config: CurationConfig | None = None,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
) -> CurationResult:
    """Score every image under ``sources`` and write the manifest; resume from earlier runs.

    ``workers``: process-pool size (default: CPU count; 1 runs inline). ``ray_address``:
    ``"auto"``, ``"local"`` or a cluster address to score with Ray Data instead. A manifest that
    exists without its progress file is someone else's: refused unless ``overwrite``.
    """
    config = config or CurationConfig()
    manifest = Path(manifest)
    progress = progress_path(manifest)
    if manifest.exists() and not progress.exists() and not overwrite:
        raise FileExistsError(f"{manifest}: exists and was not made by this curation (use --overwrite)")
    report = on_progress or (lambda phase, done, total: None)

    unusable: list[tuple[Path, str]] = []
    paths = find_images(sources, config.extensions, unusable=unusable)
    keys = {str(p): file_key(p) for p in paths}
    done_files, done_vlm = _load_progress(progress)
    pending = [p for p, k in keys.items() if k not in done_files]

    writer = _ProgressWriter(progress)
    scored_now = vlm_now = 0
    try:
        report("score", 0, len(pending))
        stream = _score_ray(pending, config, ray_address) if ray_address else _score_local(
            pending, config, workers if workers is not None else (os.cpu_count() or 1))
        for row in stream:
            done_files[row["key"]] = row
            writer.add("file", row["key"], row)
            scored_now += 1
            report("score", scored_now, len(pending))

        current = [done_files[k] for k in keys.values()]
        if config.vlm is not None:
            survivors = [r for r in select(current, {}, _without_vlm(config)) if r["status"] == "kept"]
            todo = [r for r in survivors if not _vlm_ok(done_vlm.get(r["key"]))]
            report("vlm", 0, len(todo))
            items = [(r["key"], _loader(r["path"])) for r in todo]
            for key, result in assess_many(config.vlm, items):
                data = asdict(result)
                done_vlm[key] = data
                if result.error is None:
                    writer.add("vlm", key, data)  # failures are not cached: a re-run retries them
                vlm_now += 1
                report("vlm", vlm_now, len(todo))
    finally:
        writer.close()

    rows = select(current, done_vlm, config)
    text = render_manifest(rows)
    if manifest.exists() and manifest.read_text(encoding="utf-8") == text:
        written = False
    else:
        atomic_write_text(manifest, text, overwrite=True)
        written = True
    return CurationResult(rows, scored_now, vlm_now, written, manifest, unusable)


def _without_vlm(config: CurationConfig) -> CurationConfig:
    from dataclasses import replace

    return replace(config, vlm=None)


def _vlm_ok(result: dict[str, Any] | None) -> bool:
    return bool(result) and not result.get("error")


def _loader(path: str) -> Callable[[], Any]:
    return lambda: read_rgb(path)


def read_manifest(path: str | Path, *, kept_only: bool = False) -> list[dict[str, Any]]:
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: not valid JSON") from None
            if not kept_only or row.get("status") == "kept":
                rows.append(row)
    return rows


__all__ = ["CurationConfig", "CurationResult", "curate", "read_manifest", "score_file", "select",
           "stage1_aggregate", "VLMConfig"]
