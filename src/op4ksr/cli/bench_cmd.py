"""``op4ksr bench SUITE_DIR... --methods LIST --out RESULTS_DIR``: the paper's Tables 3–5 and a report.

Thin layer over :mod:`op4ksr.eval.bench` (running, metrics, timing, memory) and
:mod:`op4ksr.eval.report` (CSV, Markdown, HTML). docs/BENCHMARKS.md explains the columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from op4ksr.cli.common import fail
from op4ksr.utils.errors import one_line

_DEFAULT_METHODS = "bicubic,lanczos,realesrgan,op4ksr-tiled,op4ksr"


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        suites: Annotated[list[Path], typer.Argument(metavar="SUITE_DIR...",
                                                     help="Suite folders made by `op4ksr make-bench`.")],
        out: Annotated[Path, typer.Option("--out", help="RESULTS_DIR: outputs, CSV, tables.md, report.html.")],
        methods: Annotated[str, typer.Option(
            "--methods", help="Comma-separated method specs NAME[:ARG], e.g. "
                              "'bicubic,op4ksr:runs/x/model,op4ksr-tiled:runs/x/model,realesrgan'.")] = _DEFAULT_METHODS,
        metrics: Annotated[str | None, typer.Option(
            "--metrics", help="Comma-separated metric names (default: the paper's plus periodicity at 32 and 16 px).")] = None,
        max_images: Annotated[int | None, typer.Option("--max-images", min=1, help="At most N images per suite.")] = None,
        runs: Annotated[int, typer.Option("--runs", min=1, help="Timed calls per image (median).")] = 3,
        warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed warm-up calls per image.")] = 1,
        crop: Annotated[int, typer.Option("--crop", min=8, help="Side of the aligned crops in the HTML report (output px).")] = 256,
        patch_size: Annotated[int, typer.Option("--patch-size", min=1, help="Deep-feature metric crop size (paper: 512).")] = 512,
        patch_stride: Annotated[int, typer.Option("--patch-stride", min=1, help="Deep-feature metric crop stride (paper: 512).")] = 512,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
        embed: Annotated[bool, typer.Option("--embed/--no-embed",
                                            help="Embed report images as base64 (one file) or write report_files/.")] = True,
        verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check suite files against the manifest's sha256.")] = True,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files in RESULTS_DIR.")] = False,
    ) -> None:
        """Run methods on benchmark suites: quality (Tables 3–4), speed and memory (Table 5), HTML report."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from op4ksr.eval.bench import (
            DEFAULT_METRICS,
            RESULTS_JSON,
            BenchConfig,
            load_suites,
            method_labels,
            planned_outputs,
            run_bench,
        )
        from op4ksr.eval.metrics import PatchConfig, available_metrics
        from op4ksr.eval.report import REPORT_OUTPUTS, ReportConfig, report_image_count, write_reports

        metric_names = _split(metrics) if metrics is not None else DEFAULT_METRICS
        unknown = [m for m in metric_names if m not in available_metrics()]
        if unknown:
            fail(f"--metrics: unknown metric {unknown[0]!r}; known: {', '.join(available_metrics())}")
        try:
            config = BenchConfig(methods=_split(methods), metrics=metric_names, max_images=max_images,
                                 warmup_runs=warmup, timed_runs=runs, patch=PatchConfig(patch_size, patch_stride),
                                 device=device)
            labels = method_labels(config.methods)
            loaded = load_suites(suites, max_images=max_images, verify=verify)
        except (ValueError, OSError) as exc:
            fail(one_line(exc))
        # Refuse before any work, so a long run never ends on a collision.
        if not overwrite:
            for rel in [RESULTS_JSON, *REPORT_OUTPUTS, *planned_outputs(loaded, labels)]:
                if (out / rel).exists():
                    fail(f"{out / rel}: exists (use --overwrite to replace it)")

        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("benchmark", total=None)

            def on_progress(what: str, done: int, total: int) -> None:
                progress.update(task, description=what, completed=done, total=total)

            try:
                results = run_bench(suites, out, config, overwrite=overwrite, on_progress=on_progress)
            except (ValueError, OSError, RuntimeError) as exc:
                fail(one_line(exc))
            report_task = progress.add_task("report", total=report_image_count(results))
            try:
                paths = write_reports(results, out, ReportConfig(crop=crop, embed=embed), overwrite=overwrite,
                                      on_image=lambda: progress.advance(report_task))
            except (ValueError, OSError) as exc:
                fail(one_line(exc))

        for info in results.metrics:
            if info.unavailable:
                console.print(f"[yellow]note[/]: {info.name} skipped: {info.unavailable}")
        typer.echo((out / "tables.md").read_text(encoding="utf-8"))
        for path in paths.values():
            typer.echo(f"wrote {path}")
