"""``op4ksr inspect IMAGE...``: find token-period grid artifacts in any SR output.

Thin layer over :mod:`op4ksr.eval.diagnostics.inspector`; the score, its calibration and the
``--json`` schema are documented in docs/INSPECTOR.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from op4ksr.cli.common import fail
from op4ksr.io.limits import DEFAULT_MAX_PIXELS
from op4ksr.models.constants import TOKEN_PERIOD
from op4ksr.utils.errors import one_line
from op4ksr.utils.names import json_safe, shown, with_raw_names

JSON_SCHEMA_VERSION = 1


def _default_out(image: Path) -> Path:
    """``<image folder>/<stem>_inspect/``: beside the image, never the image itself."""
    return image.parent / f"{image.stem}_inspect"


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect(
        images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Images to inspect (any SR output).")],
        reference: Annotated[Path | None, typer.Option(
            "--reference", help="Reference image of the same size (e.g. ground truth): adds its score and L_AP.")] = None,
        period: Annotated[int, typer.Option("--period", help="Token period in px (16× VAE × 2×2 packing = 32).")] = TOKEN_PERIOD,
        threshold_db: Annotated[float | None, typer.Option(
            "--threshold-db", help="Flag threshold in dB (default: the calibrated one, docs/INSPECTOR.md).")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="Folder for the reports; each image gets <out>/<stem>_inspect/. "
                          "Default: <image folder>/<stem>_inspect/.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (schema_version 1) to stdout.")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing report files.")] = False,
        max_pixels: Annotated[int, typer.Option(
            "--max-pixels", min=1, help="Refuse larger images (decompression bombs), as upscale does.")] = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Grid score at the token period, dominant period, heatmap and spectrum (paper Fig. 10)."""
        from rich.console import Console
        from rich.progress import Progress
        from rich.table import Table
        from rich.text import Text

        from op4ksr.eval.diagnostics.inspector import (
            DEFAULT_THRESHOLD_DB,
            InspectorConfig,
            compare_to_reference,
            inspect_image,
            save_inspection,
        )
        from op4ksr.eval.diagnostics.spectrum import to_luma
        from op4ksr.io.images import ImageError, load_image

        try:
            config = InspectorConfig(period=period,
                                     threshold_db=DEFAULT_THRESHOLD_DB if threshold_db is None else threshold_db)
        except ValueError as exc:
            fail(f"--period {period} / --threshold-db {threshold_db}: {exc}")

        def load(path: Path):  # -> np.ndarray [H, W, C] float32 in [0, 1]
            if path.is_dir():  # said here: the reader's own hint names upscale's --recursive
                fail(f"{path}: is a folder; inspect takes image files (e.g. {path / '*.png'})")
            try:
                return load_image(path, max_pixels=max_pixels).pixels
            except (ImageError, OSError) as exc:
                fail(f"{path}: {getattr(exc, 'reason', None) or one_line(exc)}")

        reference_pixels = load(reference) if reference is not None else None
        results = []
        console = Console(stderr=True)
        with Progress(console=console, transient=True, disable=as_json) as progress:
            task = progress.add_task("inspecting", total=len(images))
            for path in images:
                pixels = load(path)
                folder = (out / f"{path.stem}_inspect") if out is not None else _default_out(path)
                try:
                    report = inspect_image(pixels, config)
                    # names that are not UTF-8 are shown escaped, their bytes kept as path_raw
                    extra: dict = with_raw_names({"path": str(path)}, ("path",))
                    if reference_pixels is not None:
                        comparison = compare_to_reference(pixels, reference_pixels, report, config)
                        extra["reference"] = {**with_raw_names({"path": str(reference)}, ("path",)),
                                              **comparison.to_dict()}
                    files = save_inspection(report, folder, image_name=shown(path.name), luma=to_luma(pixels),
                                            extra=extra, overwrite=overwrite)
                except (ValueError, FileExistsError, OSError) as exc:
                    fail(f"{path}: {one_line(exc)}")
                results.append(with_raw_names({**extra, **report.to_dict(), "report_dir": str(folder)}, ("report_dir",))
                               | {"outputs": json_safe({key: str(p) for key, p in files.items()})})
                progress.advance(task)

        if as_json:
            typer.echo(json.dumps({"schema_version": JSON_SCHEMA_VERSION, "images": results}, indent=2))
            return
        table = Table(title=f"grid inspection at {period} px (threshold {config.threshold_db:g} dB)")
        for column in ("image", "score (dB)", "grid?", "dominant period", "report"):
            table.add_column(column)
        for row in results:
            dominant = "-" if row["dominant_period"] is None else f"{row['dominant_period']} px ({row['dominant_feature']})"
            # names as plain Text: escaped, and never read as rich markup ("[red]x.png")
            table.add_row(Text(shown(Path(row["path"]).name)), f"{row['score_db']:.2f}",
                          "YES" if row["flagged"] else "no", dominant, Text(shown(row["outputs"]["html"])))
        Console().print(table)
        for row in results:
            if "reference" in row:
                ref = row["reference"]
                typer.echo(f"{shown(Path(row['path']).name)} vs {shown(Path(ref['path']).name)}: reference score "
                           f"{ref['reference_score_db']:.2f} dB, added {ref['score_delta_db']:+.2f} dB, "
                           f"L_AP {ref['periodicity_loss']:.3g}")
