"""`op4ksr info`: parameter counts, token grid, FLOPs and peak-memory estimate for an output size."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from op4ksr.cli.common import fail, parse_size


def info(
    model: str = typer.Argument("compact", help="Preset name (ultraflux, compact, tiny) or model directory."),
    size: str = typer.Option("4096x4096", "--size", help="Output size WxH."),
    dtype: str = typer.Option("auto", "--dtype", help="fp32, bf16 or fp16 (auto: bf16 for ultraflux, else fp32)."),
    batch: int = typer.Option(1, "--batch", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show parameter counts, token grid, FLOPs and estimated peak memory, without loading weights."""
    import torch

    from op4ksr.models.loading import ModelLoadError, meta_pipeline_from_dir
    from op4ksr.models.planner import human_bytes
    from op4ksr.models.presets import build_pipeline, list_presets
    from op4ksr.utils.device import resolve_dtype

    width, height = parse_size(size)
    try:
        if Path(model).is_dir():
            pipe = meta_pipeline_from_dir(model)
        elif model in list_presets():
            pipe = build_pipeline(model, device="meta", seed=None)
        else:
            fail(f"{model}: neither a preset ({', '.join(list_presets())}) nor a model directory")
    except ModelLoadError as exc:
        fail(str(exc))
    if dtype == "auto":
        dtype = "bf16" if model == "ultraflux" else "fp32"
    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    est = pipe.estimate(height, width, batch=batch, dtype=torch_dtype)
    if as_json:
        typer.echo(json.dumps({"model": model, **est.as_dict()}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"op4ksr info: {model} → {width}×{height} ({est.dtype}, batch {batch})", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    rows = [
        ("VAE parameters", f"{est.vae_params:,} ({est.vae_params / 1e6:.1f} M)"),
        ("DiT parameters", f"{est.dit_params:,} ({est.dit_params / 1e9:.3f} B)"),
        ("token grid", f"{est.token_rows}×{est.token_cols} = {est.tokens:,} tokens (+{est.text_tokens} text)"),
        ("DiT FLOPs", f"{est.dit_flops / 1e12:.1f} TFLOP (attention {est.dit_attention_flops / 1e12:.1f})"),
        ("VAE FLOPs", f"{est.vae_flops / 1e12:.1f} TFLOP"),
        ("compensation", f"{est.compensation_params:,} parameters, {est.compensation_flops / 1e12:.2f} TFLOP"
                         if est.compensation_params else "none"),
        ("weights", human_bytes(est.weights_bytes)),
        ("peak memory (est.)", human_bytes(est.peak_bytes)),
        ("  encode stage", human_bytes(est.encode_bytes)),
        ("  DiT stage", human_bytes(est.dit_bytes)),
        ("  decode stage", human_bytes(est.decode_bytes)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    Console(width=max(100, Console().width)).print(table)


def export(
    model: Path = typer.Argument(..., help="Model directory to export (e.g. runs/compact-sr/model), or a "
                                           "checkpoint of a run (runs/compact-sr/checkpoints/step-0001000)."),
    out: Path = typer.Option(..., "--out", help="New model directory."),
    dtype: str = typer.Option("fp16", "--dtype", help="Storage dtype: fp16 (half the size), bf16 or fp32."),
    color_fix: str = typer.Option(None, "--color-fix", help="Set the model's default colour anchoring: none, wavelet, adain."),
    grid_fix: str = typer.Option(None, "--grid-fix", help="Set the model's default token-grid fix: none, notch."),
    fidelity: float = typer.Option(None, "--fidelity", help="Set the model's default compensation strength (0–1)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing directory."),
) -> None:
    """Copy a model directory (or a training checkpoint) with its weights stored in another dtype (for shipping)."""
    import shutil
    import tempfile

    import torch

    from op4ksr.models.loading import ModelLoadError, export_pipeline, from_pretrained
    from op4ksr.models.post_steps import check_post_steps
    from op4ksr.utils.device import resolve_dtype
    from op4ksr.utils.errors import one_line

    if out.is_symlink():  # a link (dangling, looping or not) is never replaced by a model folder
        fail(f"--out {out}: is a symbolic link; choose a new folder")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder (--overwrite replaces only a model folder)")
    if out.exists() and not overwrite:
        fail(f"{out}: exists (use --overwrite to replace it)")
    try:
        storage_dtype = resolve_dtype(dtype, torch.device("cpu"))  # before any work: int8 is no choice
    except ValueError as exc:
        fail(f"--dtype {dtype}: {exc}")
    try:
        check_post_steps(color_fix, grid_fix, fidelity)
    except ValueError as exc:
        fail(str(exc))
    staging, source = None, model
    if (model / "model.safetensors").is_file() and (model / "state.json").is_file():
        from op4ksr.train.checkpoint import export_checkpoint

        staging = Path(tempfile.mkdtemp(prefix="op4ksr-export-"))
        try:
            model = export_checkpoint(model, staging / "model")
        except (FileNotFoundError, KeyError, ValueError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            fail(f"{model}: cannot export this checkpoint ({one_line(exc)})")
    try:
        pipe = from_pretrained(model)
    except ModelLoadError as exc:
        fail(str(exc))
    # None keeps the model's own post-steps
    options = {k: v for k, v in (("color_fix", color_fix), ("grid_fix", grid_fix), ("fidelity", fidelity))
               if v is not None}
    pipe.register_to_config(**options)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    export_pipeline(pipe, tmp, dtype=storage_dtype)
    if (model / "training.json").is_file():  # keep the record of how the model was trained
        shutil.copy2(model / "training.json", tmp / "training.json")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    typer.echo(f"exported {source} → {out} ({dtype}, {size / 2**20:.1f} MiB)")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("export")(export)
