"""Data commands: ``degrade``, ``curate``, ``make-bench``. Thin wrappers over ``op4ksr.data``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from op4ksr.cli.common import fail
from op4ksr.utils.names import shown

_SRC_HELP = "Image files or folders (searched recursively)."
# Bounds of the data tools' size options: far beyond real use (×4 SR, 4K–8K suites), small
# enough that a typo cannot ask for a terapixel image.
MAX_DATA_SCALE = 16
MAX_DATA_SIDE = 16384


class Suite(str, Enum):
    syn = "syn"
    mild = "mild"
    clean = "clean"
    jpeg = "jpeg"
    realsquare = "realsquare"
    realvary = "realvary"


def _progress():
    """A rich progress bar with count, rate and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):  # type: ignore[override]
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f}/s" if speed else "–/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def degrade(
    hr: list[Path] = typer.Argument(..., help=_SRC_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for the LR PNGs and degradations.jsonl."),
    scale: int = typer.Option(4, help="Downscaling factor."),
    preset: str = typer.Option("osediff", help="Preset name (osediff, s3diff) or a .toml file."),
    seed: int = typer.Option(0, help="Seed: the same seed gives byte-identical LR."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
) -> None:
    """Make LR images from HR images with the Real-ESRGAN second-order degradation."""
    import hashlib

    import numpy as np
    from PIL import Image

    from op4ksr.data.bench_suites import derive_seed, png_bytes
    from op4ksr.data.degradations import DegradationPipeline
    from op4ksr.data.imageio import find_images, read_rgb
    from op4ksr.io.images import ImageError, from_tensor, to_tensor
    from op4ksr.utils.atomic import atomic_write_bytes, atomic_write_text

    if not 1 <= scale <= MAX_DATA_SCALE:
        fail(f"--scale {scale}: choose a factor from 1 to {MAX_DATA_SCALE}")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    unusable: list[tuple[Path, str]] = []
    try:
        pipe = DegradationPipeline.from_preset(preset, scale=scale)
        paths = find_images(list(hr), unusable=unusable)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for path, reason in unusable:  # said, not dropped (as upscale does)
        typer.echo(f"error: {shown(path)}: {reason}", err=True)
    records, failed = [], len(unusable)
    with _progress() as progress:
        task = progress.add_task("degrade", total=len(paths))
        for path in paths:
            target = out / f"{path.stem}.png"
            try:
                tensor = to_tensor(np.asarray(read_rgb(path), dtype=np.uint8))
                # The seed mixes in the content hash so each image gets its own draw but the
                # result does not depend on which other files were listed.
                lr, record = pipe.degrade_one(tensor, derive_seed(seed, hashlib.sha256(path.read_bytes()).hexdigest()))
                arr = from_tensor(lr, np.uint8)
                atomic_write_bytes(target, png_bytes(Image.fromarray(arr, "RGB")), overwrite=overwrite)
                records.append({"source": str(path), "lr": target.name, **record.to_dict()})
            except (ImageError, ValueError, FileExistsError) as exc:
                progress.console.print(f"error: {shown(path)}: {exc}", markup=False, highlight=False)
                failed += 1
            progress.advance(task)
    if records:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        try:
            atomic_write_text(out / "degradations.jsonl", text, overwrite=overwrite)
        except FileExistsError as exc:
            fail(str(exc))
    typer.echo(f"{len(records)} LR images written to {out}" + (f"; {failed} failed" if failed else ""))
    if failed:
        raise typer.Exit(code=1)


def curate(
    src: list[Path] = typer.Argument(..., help=_SRC_HELP),
    out: Path = typer.Option(..., "--out", help="Manifest (.jsonl). Progress is kept beside it for resuming."),
    keep_fraction: float = typer.Option(0.5, help="Stage (i): fraction kept by the GLCM/entropy aggregate."),
    min_laplacian_var: float = typer.Option(20.0, help="Stage (i): reject below this Laplacian variance."),
    min_sobel_energy: float = typer.Option(1.0, help="Stage (i): reject below this mean Sobel magnitude."),
    max_blur: float = typer.Option(0.6, help="Stage (ii): reject above this blur estimate (0 sharp .. 1)."),
    max_noise: float = typer.Option(10.0, help="Stage (ii): reject above this noise sigma (grey levels)."),
    scorer: list[str] = typer.Option([], help="Stage (ii) plug-in 'module:factory?key=value' (repeatable)."),
    min_score: list[str] = typer.Option([], help="Minimum for a plug-in score, NAME=VALUE (repeatable)."),
    aesthetic_mlp: Path | None = typer.Option(None, help="LAION aesthetic head (.safetensors)."),
    aesthetic_clip: Path | None = typer.Option(None, help="Local CLIP ViT-L/14 folder for the aesthetic head."),
    vlm_url: str | None = typer.Option(None, help="Stage (iii): OpenAI-compatible API base, e.g. http://host:8000/v1."),
    vlm_model: str = typer.Option("Qwen/Qwen3-VL-8B-Instruct", help="Stage (iii) model name."),
    vlm_prompt: Path | None = typer.Option(None, help="Stage (iii): file with a custom prompt."),
    vlm_timeout: float = typer.Option(60.0, help="Seconds per VLM request."),
    vlm_retries: int = typer.Option(2, help="Extra attempts per image."),
    vlm_concurrency: int = typer.Option(4, help="VLM requests in flight."),
    vlm_min_score: float = typer.Option(6.0, help="Keep images whose mean VLM score is at least this."),
    workers: int | None = typer.Option(None, help="Process-pool size (default: all CPUs)."),
    ray: str | None = typer.Option(None, "--ray", help="Run on Ray Data: 'auto', 'local' or a cluster address."),
    overwrite: bool = typer.Option(False, help="Replace a manifest this tool did not make."),
) -> None:
    """Curate photos in three stages into a JSONL manifest (resumable)."""
    from dataclasses import replace

    from op4ksr.data.aesthetic import ScorerSpec
    from op4ksr.data.curation import CurationConfig
    from op4ksr.data.curation import curate as run_curation
    from op4ksr.data.vlm import DEFAULT_PROMPT, VLMConfig

    try:
        specs = [ScorerSpec.parse(s) for s in scorer]
        if aesthetic_mlp is not None:
            kwargs = (("mlp", str(aesthetic_mlp)),) + ((("clip", str(aesthetic_clip)),) if aesthetic_clip else ())
            specs.append(ScorerSpec("op4ksr.data.aesthetic:LaionAesthetic", kwargs))
        minimums = tuple((k, float(v)) for k, v in (m.split("=", 1) for m in min_score))
    except ValueError as exc:
        fail(f"bad --scorer/--min-score: {exc}")
    if workers is not None and workers < 1:
        fail(f"--workers {workers}: give at least 1 process (or leave it out for one per CPU)")
    vlm = None
    try:
        if vlm_url:
            try:
                prompt = vlm_prompt.read_text(encoding="utf-8") if vlm_prompt else DEFAULT_PROMPT
            except (OSError, UnicodeDecodeError) as exc:
                fail(f"--vlm-prompt {vlm_prompt}: cannot read it as a text file ({getattr(exc, 'strerror', None) or exc})")
            vlm = VLMConfig(url=vlm_url, model=vlm_model, prompt=prompt, timeout_s=vlm_timeout, retries=vlm_retries,
                            concurrency=vlm_concurrency, min_score=vlm_min_score)
        config = replace(CurationConfig(), keep_fraction=keep_fraction, min_laplacian_var=min_laplacian_var,
                         min_sobel_energy=min_sobel_energy, max_blur=max_blur, max_noise_sigma=max_noise,
                         scorers=tuple(specs), min_scores=minimums, vlm=vlm)
    except ValueError as exc:  # the configs' own range checks (keep_fraction nan or -1, …)
        fail(str(exc))

    with _progress() as progress:
        tasks: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task({"score": "score files", "vlm": "VLM"}[phase], total=total)
            progress.update(tasks[phase], completed=done, total=total)

        try:
            result = run_curation(list(src), out, config, workers=workers, ray_address=ray, overwrite=overwrite,
                                  on_progress=on_progress)
        except (FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
            progress.stop()
            fail(str(exc))
    for path, reason in result.unusable:  # said, not dropped (as upscale does)
        typer.echo(f"error: {shown(path)}: {reason}", err=True)
    rejected = len(result.rows) - result.kept
    unreadable = sum(r["stage"] == 0 for r in result.rows)
    state = "written" if result.manifest_written else "unchanged"
    not_files = f"; {len(result.unusable)} not files (listed above)" if result.unusable else ""
    typer.echo(f"{out}: {state}; {len(result.rows)} files, {result.kept} kept, {rejected} rejected "
               f"({unreadable} unreadable); scored {result.scored} now, {result.vlm_requests} VLM requests{not_files}")
    if result.unusable:
        raise typer.Exit(1)


def make_bench(
    suite: Suite = typer.Argument(..., help="syn, mild, clean, jpeg, realsquare or realvary."),
    src: list[Path] = typer.Argument(..., help=_SRC_HELP),
    out: Path = typer.Option(..., "--out", help="Output folder (manifest.json, hr/, lr/)."),
    long_side: int = typer.Option(4096, help="syn, mild, clean, jpeg: HR longer side."),
    size: int = typer.Option(1024, help="realsquare: side; realvary: longer edge."),
    scale: int = typer.Option(4, help="syn, mild, clean, jpeg: HR/LR factor."),
    preset: str = typer.Option("osediff", help="syn: degradation preset, .toml or mixture (mild, clean, jpeg: always the preset of that name)."),
    seed: int = typer.Option(0, help="syn, mild, clean, jpeg: degradation seed."),
    overwrite: bool = typer.Option(False, help="Rebuild over an existing suite."),
) -> None:
    """Build a benchmark suite with a sha256 manifest; rebuilding gives identical files."""
    from op4ksr.data.bench_suites import BenchConfig, build_suite

    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    if not 1 <= scale <= MAX_DATA_SCALE:
        fail(f"--scale {scale}: choose a factor from 1 to {MAX_DATA_SCALE}")
    for flag, value in (("--long-side", long_side), ("--size", size)):
        if not 1 <= value <= MAX_DATA_SIDE:
            fail(f"{flag} {value}: choose a side from 1 to {MAX_DATA_SIDE} px")
    config = BenchConfig(long_side=long_side, size=size, scale=scale, preset=preset, seed=seed)
    with _progress() as progress:
        task = progress.add_task(f"make-bench {suite.value}", total=None)
        try:
            result = build_suite(suite.value, list(src), out, config, overwrite=overwrite,
                                 on_progress=lambda d, t: progress.update(task, completed=d, total=t))
        except (FileNotFoundError, FileExistsError, ValueError) as exc:
            progress.stop()
            fail(str(exc))
    for s in result.skipped:
        typer.echo(f"skipped {shown(s['source'])}: {shown(s['reason'])}", err=True)
    typer.echo(f"{result.manifest}: {len(result.entries)} images, {len(result.skipped)} skipped")


def make_tiles(
    sources: list[Path] = typer.Argument(..., help="Images, folders or curation manifests (.jsonl: kept rows)."),
    out: Path = typer.Option(..., "--out", help="Folder for the tiles and tiles.jsonl."),
    size: int = typer.Option(512, "--size", min=32, help="Tile side in pixels."),
    stride: int = typer.Option(512, "--stride", min=1, help="Grid step in pixels."),
    exclude: list[Path] = typer.Option([], "--exclude", help="Images to leave out (e.g. a held-out benchmark set)."),
) -> None:
    """Cut a corpus into fixed-size training tiles once (fast training reads); re-runs do no work."""
    from rich.progress import Progress

    from op4ksr.data.datasets import image_sources
    from op4ksr.data.tiles import TileSpec, write_tile_index
    from op4ksr.data.tiles import make_tiles as cut

    excluded = {p.resolve() for p in exclude}
    files = [p for p in image_sources([str(s) for s in sources]) if Path(p).resolve() not in excluded]
    if not files:
        fail("no images found in the given sources")
    records: list[dict] = []
    with Progress() as bar:
        task = bar.add_task("tiles", total=len(files))
        for file in files:
            try:
                records.extend(cut([Path(file)], out, TileSpec(size=size, stride=stride)))
            except (OSError, ValueError) as exc:
                typer.echo(f"{shown(file)}: skipped: {shown(str(exc))}", err=True)
            bar.advance(task)
    index = write_tile_index(records, out)
    typer.echo(f"{len(records)} tiles from {len(files)} images → {out} (index {index})")


def register(app: typer.Typer) -> None:
    app.command("degrade")(degrade)
    app.command("curate")(curate)
    app.command("make-bench")(make_bench)
    app.command("make-tiles")(make_tiles)
