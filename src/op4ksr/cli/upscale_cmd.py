"""``op4ksr upscale``: files, folders and globs → upscaled files, with a summary or JSON report.

Exit codes: 0 all done/skipped, 1 some file failed, 2 nothing was started (bad options,
colliding outputs, model unavailable), 130 interrupted (Ctrl-C or SIGTERM: the file being
written is removed, the summary and the JSON report still come). See docs/UPSCALE.md.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from op4ksr.cli.common import fail, sigterm_as_interrupt
from op4ksr.io.limits import DEFAULT_MAX_PIXELS
from op4ksr.utils.names import json_safe, shown


class OutputFormat(str, Enum):
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"


def _err(message: str) -> None:
    typer.echo(f"error: {shown(message)}", err=True)


def _fail_fast(message: str, as_json: bool, code: int = 2, problems: list[str] | None = None) -> NoReturn:
    """Print one line per problem (and, with --json, a document holding ``error``); exit before any work."""
    if as_json:
        from op4ksr.batch.run import REPORT_SCHEMA

        document = {"schema": REPORT_SCHEMA, "error": message, "problems": problems or [message]}
        typer.echo(json.dumps(json_safe(document), ensure_ascii=True))
    for problem in (problems or [message])[:-1]:
        _err(problem)
    fail((problems or [message])[-1] if problems else message, code)


def upscale(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Image files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (created if needed).")] = Path("upscaled"),
    scale: Annotated[int, typer.Option("-s", "--scale", min=2, max=4, help="Upscaling factor: 2, 3 or 4.")] = 4,
    model: Annotated[str | None, typer.Option("--model", help="'compact' (bundled, default) or a model folder.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, fp16, bf16.")
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.png,
    quality: Annotated[
        int | None, typer.Option("--quality", min=1, max=100, help="jpg/webp quality (default 95).")
    ] = None,
    png_compression: Annotated[
        int | None,
        typer.Option("--png-compression", min=0, max=9,
                     help="PNG zlib level, 0 (fastest) to 9 (smallest); default 1, chosen by measurement "
                          "(docs/PERFORMANCE.md)."),
    ] = None,
    suffix: Annotated[
        str | None, typer.Option("--suffix", help="Added to each output name (default _x<scale>).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Leave existing outputs alone, count them as skipped.")
    ] = False,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Go into sub-folders; the tree is mirrored under --out.")
    ] = False,
    tiled: Annotated[
        bool, typer.Option("--tiled", help="Patch-based baseline (OMGSR-style tiles) instead of the whole image.")
    ] = False,
    color_fix: Annotated[
        str | None,
        typer.Option("--color-fix", help="Anchor colours to the input: none, wavelet or adain (default: the model's)."),
    ] = None,
    grid_fix: Annotated[
        str | None,
        typer.Option("--grid-fix", help="Shrink what stands out at the 32-px token harmonics (grids on the "
                                        "latent lattice): none or notch (default: the model's)."),
    ] = None,
    fidelity: Annotated[
        float | None,
        typer.Option("--fidelity", help="0 = the perceptual end (sharpest), 1 = the faithful end (closest to the "
                                        "input), between = the blend of the two networks; for a decoder model the "
                                        "compensation's strength (default: the model's)."),
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse inputs with more pixels (decompression-bomb limit).")
    ] = DEFAULT_MAX_PIXELS,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON report on stdout (schema in docs/UPSCALE.md).")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="Spread the batch over a Ray cluster: 'auto' or ADDRESS (needs the cluster extra)."),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option("--ray-actors", min=1, help="Model replicas on the cluster (default: one per GPU, else 1)."),
    ] = None,
) -> None:
    """Upscale images (files, folders, globs); never overwrites unless --overwrite."""
    from op4ksr.batch.plan import BatchOptions, PlanError, plan_batch

    if overwrite and skip_existing:
        _fail_fast("--overwrite and --skip-existing cannot be used together", as_json)
    try:
        options = BatchOptions(
            out_dir=out,
            scale=scale,
            fmt=fmt.value,
            quality=quality,
            png_compression=png_compression,
            suffix=suffix,
            recursive=recursive,
            existing="overwrite" if overwrite else "skip" if skip_existing else "fail",
            max_pixels=max_pixels,
            tiled=tiled,
            color_fix=color_fix,
            grid_fix=grid_fix,
            fidelity=fidelity,
        )
        plan = plan_batch(inputs, options)
    except PlanError as exc:
        _fail_fast(f"{len(exc.problems)} problem(s) found before starting; nothing was done", as_json,
                   problems=exc.problems)
    except ValueError as exc:
        _fail_fast(str(exc), as_json)

    meta: dict[str, Any] = {
        "model": model or "compact",
        "scale": scale,
        "format": options.fmt,
        "output_dir": str(out),
    }
    from op4ksr.batch.run import interrupted_report

    with sigterm_as_interrupt():
        try:
            if ray is not None:
                report = _run_ray(plan, options, model, device, dtype, ray, ray_actors, as_json, meta)
            else:
                report = _run_local(plan, options, model, device, dtype, as_json, meta)
        except KeyboardInterrupt:  # before the batch started (loading the model) or on the Ray path
            report = interrupted_report(plan)
    _finish(report, meta, as_json)


def _run_local(plan: Any, options: Any, model: str | None, device: str, dtype: str | None,
               as_json: bool, meta: dict[str, Any]) -> Any:
    from op4ksr.batch.run import process_item, run_batch

    upscaler = _load_upscaler(options, model, device, dtype, as_json) if plan.items else None
    if upscaler is not None:
        meta["device"] = str(upscaler.pipe.device)
        meta["dtype"] = str(upscaler.pipe.dtype).removeprefix("torch.")
        meta["load_seconds"] = round(upscaler.load_seconds, 4)  # imports of the model code included
    for result in plan.preflight:
        _print_result_line(result)
    progress = _progress(len(plan.items))
    with progress:
        task = progress.add_task("upscaling", total=len(plan.items))

        def on_result(result: Any) -> None:
            _print_result_line(result, progress.console)
            progress.advance(task)

        return run_batch(plan, lambda item: process_item(upscaler, item, options), on_result=on_result)


def _load_upscaler(options: Any, model: str | None, device: str, dtype: str | None, as_json: bool) -> Any:
    from op4ksr.api import ModelLoadError, Upscaler

    try:
        upscaler = Upscaler(model, device=device, dtype=dtype, color_fix=options.color_fix,
                            grid_fix=options.grid_fix, fidelity=options.fidelity)
        upscaler.check_scale(options.scale)
    except (ModelLoadError, ValueError) as exc:
        _fail_fast(str(exc), as_json)
    return upscaler


def _run_ray(plan: Any, options: Any, model: str | None, device: str, dtype: str | None, address: str,
             actors: int | None, as_json: bool, meta: dict[str, Any]) -> Any:
    from op4ksr.batch.cluster import ClusterError, run_batch_ray

    meta["ray"] = address
    for result in plan.preflight:
        _print_result_line(result)
    progress = _progress(len(plan.items))
    try:
        with progress:
            task = progress.add_task("upscaling (ray)", total=len(plan.items))

            def on_result(result: Any) -> None:
                _print_result_line(result, progress.console)
                progress.advance(task)

            return run_batch_ray(plan, options, model=model, device=device, dtype=dtype, address=address,
                                 actors=actors, on_result=on_result)
    except ClusterError as exc:
        _fail_fast(str(exc), as_json)


def _progress(total: int) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=total == 0,
        transient=True,
    )


def _print_result_line(result: Any, console: Any = None) -> None:
    """Failures (and notes) as one line each on stderr, as they happen."""
    name = shown(result.input)  # no ESC sequence or newline of a file name reaches the terminal
    if result.status == "failed":
        line = f"error: {name}: {shown(result.reason)}"
    elif result.status == "skipped":
        line = f"skipped: {name}: {shown(result.reason)}"
    else:
        line = "".join(f"note: {name}: {shown(note)}\n" for note in result.notes).rstrip("\n")
    if not line:
        return
    if console is not None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        typer.echo(line, err=True)


def _finish(report: Any, meta: dict[str, Any], as_json: bool) -> None:
    summary = report.summary()
    if as_json:
        typer.echo(json.dumps(report.to_json_dict(meta), ensure_ascii=True, indent=2))
    stale = f", {summary['stale_temps_removed']} stale temporary file(s) removed" if summary["stale_temps_removed"] else ""
    typer.echo(
        f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed "
        f"in {summary['seconds']:.1f} s{stale}",
        err=as_json,
    )
    sys.stdout.flush()
    if report.interrupted:
        raise typer.Exit(130)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("upscale")(upscale)
