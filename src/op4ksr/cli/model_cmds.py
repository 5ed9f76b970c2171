"""`op4ksr info` (parameter counts, token grid, FLOPs and peak-memory estimate for an output size),
`op4ksr export` (a model folder in another storage dtype) and `op4ksr convert ultraflux` (a
downloaded UltraFlux snapshot → an op4ksr model folder)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from op4ksr.cli.common import fail, parse_size


def info(
    model: str = typer.Argument("compact", help="Preset name (ultraflux, compact, tiny) or model directory."),
    size: str = typer.Option("4096x4096", "--size", help="Output size WxH."),
    dtype: str = typer.Option("auto", "--dtype", help="fp32, bf16 or fp16 (auto: bf16 for ultraflux and for a "
                                                      "folder whose DiT is stored in bf16, else fp32)."),
    batch: int = typer.Option(1, "--batch", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    train_crop: int = typer.Option(0, "--train-crop", min=0, help="Also estimate the sr training stage's memory "
                                                                  "per GPU for HR crops of this size (0: off)."),
    gpus: int = typer.Option(8, "--gpus", min=1, help="Processes (GPUs) for the training estimate's FSDP2 case."),
) -> None:
    """Show parameter counts, token grid, FLOPs and estimated peak memory, without loading weights."""
    import torch

    from op4ksr.models.loading import ModelLoadError, meta_pipeline_from_dir, stored_dtype
    from op4ksr.models.planner import human_bytes
    from op4ksr.models.presets import build_pipeline, list_presets
    from op4ksr.utils.device import resolve_dtype

    width, height = parse_size(size)
    stored = None
    try:
        if Path(model).is_dir():
            pipe = meta_pipeline_from_dir(model)
            stored = stored_dtype(Path(model) / "transformer", Path(model), "transformer")
        elif model in list_presets():
            pipe = build_pipeline(model, device="meta", seed=None)
        else:
            fail(f"{model}: neither a preset ({', '.join(list_presets())}) nor a model directory")
    except ModelLoadError as exc:
        fail(str(exc))
    if dtype == "auto":
        dtype = "bf16" if model == "ultraflux" or stored == torch.bfloat16 else "fp32"
    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    est = pipe.estimate(height, width, batch=batch, dtype=torch_dtype)
    training = {}
    if train_crop:
        from op4ksr.models.planner import estimate_sr_training

        # the frozen DiT in bf16 (train's sr.frozen_dit_dtype for a converted UltraFlux), checkpointing on
        training = {name: estimate_sr_training(pipe, train_crop, batch=batch, processes=n, fsdp=n > 1)
                    for name, n in (("one_gpu", 1), (f"fsdp_{gpus}_gpus", gpus))}
    if as_json:
        extra = {"training": {k: v.as_dict() for k, v in training.items()}} if training else {}
        typer.echo(json.dumps({"model": model, **est.as_dict(), **extra}, indent=2))
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
        ("pixel path", f"{est.pixel_path_params:,} parameters, {est.pixel_path_flops / 1e12:.2f} TFLOP"
                       if est.pixel_path_params else "none (the F16 decoder draws the output)"),
        ("weights", human_bytes(est.weights_bytes)),
        ("peak memory (est.)", human_bytes(est.peak_bytes)),
        ("  encode stage", human_bytes(est.encode_bytes)),
        ("  DiT stage", human_bytes(est.dit_bytes)),
        ("  decode stage", human_bytes(est.decode_bytes)),
    ]
    for t in training.values():
        where = "1 GPU" if t.processes == 1 else f"{t.processes} GPUs FSDP2"
        parts = (f"{human_bytes(t.per_gpu_bytes)}/GPU: frozen {human_bytes(t.frozen_bytes)}, "
                 f"LoRA+AdamW {human_bytes(t.trainable_bytes)}, act. {human_bytes(t.activation_bytes)}")
        rows.append((f"sr train {train_crop}², {where}", parts))
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
    fidelity: float = typer.Option(None, "--fidelity", help="Set the model's default fidelity (0–1: perceptual … faithful end, or the compensation strength)."),
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


def convert_ultraflux(
    snapshot: Path = typer.Argument(..., help="UltraFlux snapshot folder (e.g. ~/.cache/huggingface/hub/"
                                              "models--Owen777--UltraFlux-v1/snapshots/<rev>, or the models--… folder)."),
    out: Path = typer.Option(..., "--out", help="New op4ksr model folder."),
    transformer: Path = typer.Option(None, "--transformer", help="Another transformer folder, e.g. the v1.1 "
                                                                 "transformer repository's snapshot."),
    prompt: str = typer.Option(None, "--prompt", help="The fixed prompt to encode (default: S3Diff's positive "
                                                      "prompt; OMGSR-F uses \"\")."),
    device: str = typer.Option("auto", "--device", help="Where the text encoders run: auto, cpu, cuda, …"),
) -> None:
    """Convert an UltraFlux snapshot: copy its VAE and transformer, encode the fixed prompt once with its own
    T5 and CLIP, and write an op4ksr model folder (for upscale --model, train model.init, info)."""
    from op4ksr.models.convert import convert_ultraflux as convert
    from op4ksr.models.prompt import S3DIFF_PROMPT
    from op4ksr.utils.device import resolve_device, resolve_dtype
    from op4ksr.utils.errors import ModelLoadError, one_line

    if out.exists():
        fail(f"{out}: exists; choose a new folder (nothing was converted)")
    run_device = resolve_device(device)
    try:
        result = convert(snapshot, out, transformer=transformer, prompt=S3DIFF_PROMPT if prompt is None else prompt,
                         device=run_device, text_dtype=resolve_dtype(None, run_device))
    except (ModelLoadError, FileExistsError) as exc:
        fail(str(exc))
    except OSError as exc:  # writing the folder (disk full, permissions): nothing was left behind
        fail(f"{out}: not written ({one_line(exc)})")
    record = json.loads((result / "conversion.json").read_text())
    cut = [name for name, truncated in record["truncated"].items() if truncated]
    typer.echo(f"converted {snapshot} → {result} (prompt {record['prompt']!r}"
               + (f"; the {' and '.join(n.upper() for n in cut)} tokenizer{'s' if len(cut) > 1 else ''} cut it, "
                  f"see conversion.json" if cut else "") + ")")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("export")(export)
    convert_app = typer.Typer(name="convert", help="Import models from other projects' layouts.", no_args_is_help=True)
    convert_app.command("ultraflux")(convert_ultraflux)
    app.add_typer(convert_app, name="convert")
