"""The sr stage's UltraFlux options: RoPE beyond 2048 px (``sr.rope_scaling``) and the
posterior mode/sample (``sr.posterior``)."""

import pytest
import torch

from op4ksr.models.rope import ULTRAFLUX_ROPE_SCALING
from op4ksr.train.config import ConfigError, load_config
from op4ksr.train.stages import SRStage


def _config(tmp_path, photo_dir, init, *overrides):
    path = tmp_path / "c.toml"
    path.write_text('stage = "sr"\n[model]\npreset = "tiny"\n[loss]\nmse = 1.0\nvae_align = 5.0\nlpips = 0.0\n'
                    "[sr]\nlora_rank = 2\nlora_alpha = 2\n")
    return load_config(path, [f'data.train=["{photo_dir}"]', f'model.init="{init}"', *overrides])


@pytest.mark.parametrize("theta,choice,expected", [
    (100.0, "auto", None),  # RFR: plain RoPE, as the paper's Fig. 5 reasons
    (10000.0, "auto", ULTRAFLUX_ROPE_SCALING),  # the θ = 10000 ablation: what UltraFlux computes
    (100.0, "ultraflux", ULTRAFLUX_ROPE_SCALING),
    (10000.0, "none", None),
])
def test_sr_stage_rope_scaling(tmp_path, photo_dir, tiny_init_dir, theta, choice, expected):
    cfg = _config(tmp_path, photo_dir, tiny_init_dir, f"sr.rope_theta={theta}", f'sr.rope_scaling="{choice}"')
    stage = SRStage(cfg)
    assert stage.transformer.pos_embed.theta == theta
    assert stage.transformer.pos_embed.scaling == expected
    assert stage.transformer.config.rope_scaling == expected


def test_sr_stage_posterior_sample_vs_mode(tmp_path, photo_dir, tiny_init_dir):
    lr = torch.rand(1, 3, 16, 16)
    latents = {}
    for choice in ("mode", "sample"):
        stage = SRStage(_config(tmp_path, photo_dir, tiny_init_dir, f'sr.posterior="{choice}"'))
        with torch.no_grad():
            latents[choice] = [stage._lr_latent(lr, torch.Generator().manual_seed(seed)).latent for seed in (0, 1)]
    mode, sample = latents["mode"], latents["sample"]
    assert torch.equal(mode[0], mode[1])  # deterministic
    with torch.no_grad():
        expected = stage.pipe.lr_latent(lr).latent
    torch.testing.assert_close(mode[0], expected)
    assert not torch.equal(sample[0], sample[1]) and sample[0].shape == mode[0].shape
    # a sample is mean + std·ε: the same seed gives the same sample
    with torch.no_grad():
        again = stage._lr_latent(lr, torch.Generator().manual_seed(0)).latent
    assert torch.equal(again, sample[0])


def test_sr_options_are_checked(tmp_path, photo_dir, tiny_init_dir):
    with pytest.raises(ConfigError, match="sr.rope_scaling"):
        _config(tmp_path, photo_dir, tiny_init_dir, 'sr.rope_scaling="yarn"')
    with pytest.raises(ConfigError, match="sr.posterior"):
        _config(tmp_path, photo_dir, tiny_init_dir, 'sr.posterior="mean"')


def test_sr_stage_keeps_a_bf16_stored_dit_in_bf16_and_trains_its_lora(tmp_path, photo_dir, tiny_pipeline):
    import copy

    init = tmp_path / "bf16-init"
    pipe = copy.deepcopy(tiny_pipeline)
    pipe.transformer.to(torch.bfloat16)  # as UltraFlux stores it (and `convert ultraflux` copies it)
    pipe.save_pretrained(init)
    stage = SRStage(_config(tmp_path, photo_dir, init))
    frozen = {n: p for n, p in stage.transformer.named_parameters() if not p.requires_grad}
    lora = {n: p for n, p in stage.transformer.named_parameters() if p.requires_grad}
    assert frozen and lora
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    assert {p.dtype for p in stage.vae.parameters()} == {torch.float32}
    batch = {"hr": torch.rand(1, 3, 64, 64), "lr": torch.rand(1, 3, 16, 16)}
    loss, _ = stage(batch, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for n, p in lora.items() if "lora_A" in n)
    # an fp32-stored init, or the explicit choice, gives fp32
    forced = SRStage(_config(tmp_path, photo_dir, init, 'sr.frozen_dit_dtype="fp32"'))
    assert {p.dtype for p in forced.transformer.parameters()} == {torch.float32}


def test_the_ultraflux_sr_config_is_valid(tmp_path, photo_dir, tiny_init_dir):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "ultraflux-sr.toml"
    cfg = load_config(config, [f'data.train=["{photo_dir}"]', f'data.val=["{photo_dir}"]', f'model.init="{tiny_init_dir}"'])
    assert cfg.model.preset == "ultraflux" and cfg.run.fsdp and cfg.run.mixed_precision == "bf16"
    assert cfg.sr.rope_theta == 100.0 and cfg.sr.rope_scaling == "auto" and cfg.sr.frozen_dit_dtype == "auto"


@pytest.mark.slow
def test_training_from_a_bf16_dit_checkpoints_resumes_and_exports_bf16(tmp_path, photo_dir, tiny_pipeline):
    """A short sr run from a bf16-stored DiT: the frozen DiT stays bf16 through checkpoints,
    resume and export (the exported transformer is stored in bf16 and reloads)."""
    import copy

    from safetensors.torch import load_file

    from op4ksr.models.loading import from_pretrained, stored_dtype
    from op4ksr.train.trainer import train

    init = tmp_path / "bf16-init"
    pipe = copy.deepcopy(tiny_pipeline)
    pipe.transformer.to(torch.bfloat16)
    pipe.save_pretrained(init)

    def config(out):
        return load_config(None, [
            'stage="sr"', 'model.preset="tiny"', f'model.init="{init}"',
            f'data.train=["{photo_dir / "astronaut.png"}"]', "data.crop_size=64", f'run.output_dir="{out}"',
            "run.max_steps=4", "run.checkpoint_every=2", "run.validate_every=1000", "run.log_every=1",
            "optim.lr=2e-3", "optim.warmup_steps=1", "optim.batch_size=1", "loss.mse=1.0", "loss.vae_align=5.0",
            "loss.lpips=0.0",
            "sr.lora_rank=2", "sr.lora_alpha=2", "sr.compensation=false",
        ])

    full = train(config(tmp_path / "full"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in full.history)
    part = train(config(tmp_path / "resumed"), stop_at_step=2)
    assert part.interrupted
    rest = train(config(tmp_path / "resumed"), resume=True)
    assert rest.final_step == 4
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step-0000004" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    model = full.model_dir
    assert stored_dtype(model / "transformer", model, "transformer") == torch.bfloat16
    exported = from_pretrained(model)
    assert not any("lora" in n for n, _ in exported.transformer.named_parameters())
    assert exported(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)
