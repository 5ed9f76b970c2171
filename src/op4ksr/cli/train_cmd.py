"""`op4ksr train CONFIG.toml [KEY=VALUE ...] [--resume]`: run one training stage."""

from __future__ import annotations

from pathlib import Path

import typer

from op4ksr.cli.common import fail


def train(
    config: Path = typer.Argument(..., help="Stage config (TOML), e.g. configs/compact-sr.toml."),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. optim.lr=1e-4 run.max_steps=50."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from the latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in a non-empty run.output_dir."),
) -> None:
    """Train one stage (vae, prior or sr) with accelerate; use `accelerate launch -m op4ksr train ...` for several GPUs."""
    from op4ksr.assets import AssetMissingError
    from op4ksr.train.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
    import os

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from op4ksr.train.trainer import train as run_training

    main_process = os.environ.get("RANK", "0") == "0"  # torchrun/accelerate set RANK per process
    columns = [TextColumn(f"[bold]{cfg.stage}[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    try:
        with Progress(*columns, transient=False, disable=not main_process) as bar:
            task = bar.add_task("train", total=cfg.run.max_steps, loss=float("nan"))

            def report(step: int, total: int, record: dict) -> None:
                bar.update(task, completed=step, loss=record["loss"])

            result = run_training(cfg, resume=resume, overwrite=overwrite, progress=report)
    except AssetMissingError as exc:
        fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if result.interrupted:
        typer.echo(f"interrupted at step {result.final_step}; checkpoint saved. Resume with: "
                   f"op4ksr train {config} --resume")
        raise typer.Exit(130)
    if not main_process:
        return
    typer.echo(f"done: {result.steps_done} steps in {result.wall_seconds:.0f} s; model → {result.model_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
