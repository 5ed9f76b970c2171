"""The sr stage training only the high-frequency compensation (the v1.0 recipe), and its ablation."""

import json

import torch
from numerics import assert_same_function

from op4ksr.models.loading import from_pretrained
from op4ksr.train.config import load_config
from op4ksr.train.trainer import train


def _config(out, photo_dir, init, extra=()):
    return load_config(None, [
        'stage="sr"', 'model.preset="tiny"', f'model.init="{init}"', f'data.train=["{photo_dir}"]',
        "data.crop_size=64", 'data.degradation="osediff:0.5,light:0.5"', "data.scale_range=[0.5, 1.0]",
        "data.cache_images=true", f'run.output_dir="{out}"', "run.max_steps=24", "run.checkpoint_every=100",
        "run.validate_every=1000", "run.log_every=1", "optim.lr=3e-3", "optim.warmup_steps=1", "optim.batch_size=2",
        "loss.lpips=0.0", "loss.l1=1.0", "sr.train_dit=false", "sr.train_vae_encoder=false", *extra,
    ])


def test_compensation_only_run_trains_nothing_else(tmp_path, photo_dir, tiny_init_dir):
    result = train(_config(tmp_path / "run", photo_dir, tiny_init_dir))
    losses = [r["loss"] for r in result.history]
    assert "vae_align" not in result.history[-1]  # no encoder LoRA → no latent alignment term
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8
    note = json.loads((result.model_dir / "training.json").read_text())
    assert note["trained_parts"] == ["compensation"]
    init, trained = from_pretrained(tiny_init_dir), from_pretrained(result.model_dir)
    for part in ("vae", "transformer", "prompt"):
        a, b = getattr(init, part).state_dict(), getattr(trained, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    # the zero-initialised output convs have learned something
    assert trained.compensation.head[-1].weight.abs().sum() > 0
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(trained(lr), trained(lr, fidelity=0.0))
    assert_same_function(trained, init, lr, a_call={"fidelity": 0.0})


def test_decoder_finetune_alternative_trains_only_the_decoder(tmp_path, photo_dir, tiny_init_dir):
    result = train(_config(tmp_path / "dec", photo_dir, tiny_init_dir,
                           extra=("run.max_steps=4", "sr.compensation=false", "sr.train_compensation=false",
                                  "sr.train_decoder=true")))
    note = json.loads((result.model_dir / "training.json").read_text())
    assert note["trained_parts"] == ["vae.decoder"]
    init, trained = from_pretrained(tiny_init_dir), from_pretrained(result.model_dir)
    enc_a, enc_b = init.vae.encoder.state_dict(), trained.vae.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    dec_a, dec_b = init.vae.decoder.state_dict(), trained.vae.decoder.state_dict()
    assert any(not torch.equal(dec_a[k], dec_b[k]) for k in dec_a)


def test_a_checkpoint_exports_like_the_finished_run(tmp_path, photo_dir, tiny_init_dir):
    from typer.testing import CliRunner

    from op4ksr.cli import app

    result = train(_config(tmp_path / "run", photo_dir, tiny_init_dir, extra=("run.max_steps=6",)))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000006"
    cli = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "exported"), "--dtype", "fp32"])
    assert cli.exit_code == 0, cli.output
    assert f"exported {checkpoint}" in cli.output
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert_same_function(from_pretrained(tmp_path / "exported"), from_pretrained(result.model_dir), lr)
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "checkpoints"), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0
