"""The ``op4ksr`` command line: a thin layer over the library.

Each command group lives in its own module with a ``register(app)`` function, so that the
concerns (model, diagnostics, data, upscaling, training, evaluation) stay apart and every
module imports its heavy dependencies only when its command runs.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="op4ksr",
    help="One-step, patch-free 4K image super-resolution (OP4KSR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help and errors: rendering them with rich imports ~0.15 s of rich modules
    # on every `--help` (target: under 0.5 s, docs/PERFORMANCE.md); progress bars still use rich.
    rich_markup_mode=None,
)

# Order = order in `op4ksr --help`.
_COMMAND_MODULES = (
    "upscale_cmd",
    "model_cmds",
    "inspect_cmd",
    "analyze_cmds",
    "data_cmds",
    "assets_cmd",
    "train_cmd",
    "bench_cmd",
    "serve_cmd",
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """One-step, patch-free 4K image super-resolution (OP4KSR)."""
    if version:
        from op4ksr import __version__

        typer.echo(f"op4ksr {__version__}")
        raise typer.Exit()


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"op4ksr.cli.{name}").register(app)


_register_all()


def main() -> None:
    app()
