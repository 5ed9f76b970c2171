import json

import pytest
from typer.testing import CliRunner

from op4ksr.cli import app


def test_info_ultraflux_reports_params_tokens_memory_without_allocating():
    result = CliRunner().invoke(app, ["info", "ultraflux", "--size", "4096x4096", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert abs(data["dit_params"] - 11.9e9) / 11.9e9 < 0.01
    assert data["token_rows"] == data["token_cols"] == 128 and data["tokens"] == 16384
    assert data["peak_bytes"] > data["weights_bytes"] > 0
    table = CliRunner().invoke(app, ["info", "ultraflux", "--size", "4096x4096"])
    assert table.exit_code == 0 and "16,384 tokens" in table.output


def test_info_on_a_model_directory_and_bad_input(tiny_model_dir):
    result = CliRunner().invoke(app, ["info", str(tiny_model_dir), "--size", "512x256", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["token_cols"] == 16
    bad = CliRunner().invoke(app, ["info", "no-such-model"])
    assert bad.exit_code != 0 and "neither a preset" in bad.output
    bad_size = CliRunner().invoke(app, ["info", "tiny", "--size", "big"])
    assert bad_size.exit_code != 0 and "WIDTHxHEIGHT" in bad_size.output


def test_export_fp16_halves_size_and_stays_close(tiny_model_dir, tmp_path):
    import torch

    from op4ksr.models.loading import from_pretrained

    out = tmp_path / "shipped"
    result = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))
    assert size(out) < 0.6 * size(tiny_model_dir)
    a, b = from_pretrained(tiny_model_dir), from_pretrained(out)
    assert b.dtype == torch.float32  # stored in fp16, run in fp32 on CPU
    x = torch.rand(1, 3, 32, 32)
    assert (a(x) - b(x)).abs().max() < 2e-2
    again = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--out", str(out)])
    assert again.exit_code != 0 and "exists" in again.output


@pytest.mark.parametrize(("flag", "key", "value", "bad", "choices"), [
    ("--color-fix", "color_fix", "wavelet", "sepia", "choose none, wavelet or adain"),
    ("--grid-fix", "grid_fix", "notch", "blur", "choose none or notch"),
])
def test_export_sets_the_default_post_steps(tiny_model_dir, tmp_path, flag, key, value, bad, choices):
    out = tmp_path / "shipped"
    result = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--out", str(out), flag, value])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model_index.json").read_text())[key] == value
    bad_run = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--out", str(tmp_path / "x"), flag, bad])
    assert bad_run.exit_code != 0 and choices in bad_run.output
    assert not (tmp_path / "x").exists()


def test_lora_parameter_count_equals_peft(tiny_pipeline):
    from op4ksr.models.lora import DIT_TARGETS, VAE_ENCODER_TARGETS, LoraSettings, add_lora
    from op4ksr.models.planner import lora_parameter_count

    for part, targets in (("transformer", DIT_TARGETS), ("vae", VAE_ENCODER_TARGETS)):
        module = getattr(tiny_pipeline, part)
        predicted = lora_parameter_count(module, targets, 3)
        add_lora(module, targets, LoraSettings(rank=3, alpha=3))
        actual = sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
        assert predicted == actual > 0


def test_sr_training_estimate_for_the_full_size_model():
    import torch

    from op4ksr.models.planner import estimate_sr_training
    from op4ksr.models.presets import build_pipeline

    pipe = build_pipeline("ultraflux", device="meta", seed=None)
    dit = sum(p.numel() for p in pipe.transformer.parameters())
    one = estimate_sr_training(pipe, 1024)
    fp32 = estimate_sr_training(pipe, 1024, dit_dtype=torch.float32)
    assert fp32.frozen_bytes - one.frozen_bytes == 2 * dit  # bf16 halves the frozen DiT: 23.8 GB instead of 47.6
    assert abs(2 * dit / 1e9 - 23.8) < 0.2
    sharded = estimate_sr_training(pipe, 1024, processes=8, fsdp=True)
    assert sharded.trainable_bytes * 8 <= one.trainable_bytes < sharded.trainable_bytes * 8 + 8
    assert one.per_gpu_bytes > 24e9 > sharded.per_gpu_bytes
    assert sharded.activation_bytes == one.activation_bytes  # FSDP shards weights, not activations
    no_ckpt = estimate_sr_training(pipe, 1024, gradient_checkpointing=False)
    assert no_ckpt.activation_bytes > one.activation_bytes
    assert estimate_sr_training(pipe, 2048).activation_bytes > one.activation_bytes
    info = CliRunner().invoke(app, ["info", "ultraflux", "--train-crop", "1024", "--gpus", "8", "--json"])
    assert info.exit_code == 0, info.output
    training = json.loads(info.output)["training"]
    assert training["one_gpu"]["per_gpu_bytes"] == one.per_gpu_bytes
    assert training["fsdp_8_gpus"]["per_gpu_bytes"] == sharded.per_gpu_bytes


# --- export option errors (issue 24): one line before any work, nothing replaced -------------
def _export_error(*args) -> str:
    result = CliRunner().invoke(app, ["export", *map(str, args)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    return lines[0]


def test_export_out_that_is_a_file_or_a_link_loop_is_refused(tiny_model_dir, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = _export_error(tiny_model_dir, "--out", target, "--overwrite")
    assert f"--out {target}: exists and is not a folder" in line and target.read_text() == "mine"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    line = _export_error(tiny_model_dir, "--out", loop, "--overwrite")
    assert f"--out {loop}: is a symbolic link" in line and loop.is_symlink()


def test_export_dtype_int8_is_refused_before_any_work(tiny_model_dir, tmp_path):
    line = _export_error(tiny_model_dir, "--out", tmp_path / "m", "--dtype", "int8")
    assert "--dtype int8: unknown dtype 'int8'" in line
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
