"""Real UltraFlux/Flux parts in diffusers' own on-disk layout load into op4ksr's classes.

Real weights cannot be had here, so the checkpoints are tiny random ones *saved by diffusers'
stock classes* (``save_pretrained``: config.json with ``_class_name``/``_diffusers_version``,
``diffusion_pytorch_model.safetensors``), exactly the layout of UltraFlux's ``vae/`` and
``transformer/`` folders, plus UltraFlux's extra config keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from op4ksr.models.loading import ModelLoadError, load_ultraflux_parts
from op4ksr.models.rope import OP4KSR_ROPE_THETA

diffusers = pytest.importorskip("diffusers")


def _stock_parts(root: Path) -> tuple[Path, Path, Path, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1, use_quant_conv=False, use_post_quant_conv=False)
    dit = diffusers.FluxTransformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                           num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=12,
                                           axes_dims_rope=(4, 6, 6))
    vae.save_pretrained(root / "vae")
    dit.save_pretrained(root / "transformer")
    # UltraFlux's own keys: the F16 stride, and its YaRN RoPE extension (replaced by RFR)
    for part, extra in (("vae", {"stride": 2}), ("transformer", {"method": "yarn", "ntk_factor": 10.0})):
        config_file = root / part / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **extra}))
    prompt = root / "prompt_embeds.safetensors"
    save_file({"prompt_embeds": torch.randn(1, 5, 24), "pooled_prompt_embeds": torch.randn(1, 12)}, str(prompt))
    return root / "vae", root / "transformer", prompt, vae, dit


def test_stock_layout_loads_with_rfr_and_runs_one_step(tmp_path: Path) -> None:
    vae_dir, dit_dir, prompt, vae, dit = _stock_parts(tmp_path)
    pipe = load_ultraflux_parts(vae_dir, dit_dir, prompt, sigma=0.5)
    assert pipe.vae.spatial_factor == 16 and pipe.transformer.config.rope_theta == OP4KSR_ROPE_THETA
    assert pipe.transformer.pos_embed.theta == OP4KSR_ROPE_THETA  # YaRN keys ignored, RFR in place
    for ours, stock in ((pipe.vae, vae), (pipe.transformer, dit)):
        theirs = stock.state_dict()
        assert ours.state_dict().keys() == theirs.keys()
        assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    out = pipe(torch.rand(1, 3, 16, 24))
    assert out.shape == (1, 3, 64, 96) and torch.isfinite(out).all()


def test_missing_prompt_tensor_is_named(tmp_path: Path) -> None:
    vae_dir, dit_dir, prompt, _, _ = _stock_parts(tmp_path)
    save_file({"prompt_embeds": torch.randn(1, 5, 24)}, str(prompt))
    with pytest.raises(ModelLoadError, match="pooled_prompt_embeds"):
        load_ultraflux_parts(vae_dir, dit_dir, prompt)
    prompt.write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="prompt_embeds.safetensors"):
        load_ultraflux_parts(vae_dir, dit_dir, prompt)


def test_bf16_transformer_beside_fp32_vae_gets_one_run_dtype(tmp_path: Path) -> None:
    """UltraFlux's transformer shards are bf16, its VAE fp32: every part is cast to one run dtype."""
    vae_dir, dit_dir, prompt, _, dit = _stock_parts(tmp_path)
    dit.to(torch.bfloat16).save_pretrained(dit_dir)
    pipe = load_ultraflux_parts(vae_dir, dit_dir, prompt, sigma=0.5)
    dtypes = {p.dtype for part in (pipe.vae, pipe.transformer, pipe.prompt) for p in part.parameters()}
    assert dtypes == {torch.float32}  # fp32 on the CPU
    assert torch.equal(pipe.transformer.x_embedder.weight, dit.x_embedder.weight.float())
    out = pipe(torch.rand(1, 3, 16, 24))
    assert out.shape == (1, 3, 64, 96) and torch.isfinite(out).all()
    bf16 = load_ultraflux_parts(vae_dir, dit_dir, prompt, sigma=0.5, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.vae.parameters()} == {torch.bfloat16}


def test_the_encoded_prompt_is_recorded_with_the_embeddings(tmp_path: Path) -> None:
    vae_dir, dit_dir, prompt, _, _ = _stock_parts(tmp_path)
    assert load_ultraflux_parts(vae_dir, dit_dir, prompt).prompt.config.prompt is None  # not recorded: unknown
    save_file({"prompt_embeds": torch.randn(1, 5, 24), "pooled_prompt_embeds": torch.randn(1, 12)}, str(prompt),
              metadata={"prompt": ""})  # OMGSR-F's empty prompt
    pipe = load_ultraflux_parts(vae_dir, dit_dir, prompt)
    assert pipe.prompt.config.prompt == ""
    pipe.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "prompt" / "config.json").read_text())["prompt"] == ""
