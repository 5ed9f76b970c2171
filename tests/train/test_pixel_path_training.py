"""The sr stage training the compact v2 pixel path: one end at a time, from SPAN weights, with an
optional moving average; exact resume; the exported model is what ships."""

import json

import pytest
import torch
from safetensors.torch import save_file

from op4ksr.models.loading import from_pretrained
from op4ksr.models.span import SPAN
from op4ksr.train.config import ConfigError, load_config
from op4ksr.train.stages import SRStage
from op4ksr.train.trainer import train

SMALL_SPAN = {"feature_channels": 8, "num_blocks": 2, "upscale": 4}


@pytest.fixture(scope="module")
def span_weights(tmp_path_factory):
    """A small random SPAN in the converter's safetensors format (weights + span_config metadata)."""
    torch.manual_seed(5)
    span = SPAN(**SMALL_SPAN)
    path = tmp_path_factory.mktemp("span") / "span.safetensors"
    save_file(span.state_dict(), str(path), metadata={"span_config": json.dumps(dict(span.config))})
    return path, span


def _config(out, photo_dir, init, span_path, *extra):
    return load_config(None, [
        'stage="sr"', 'model.preset="tiny"', f'model.init="{init}"', f'data.train=["{photo_dir}"]',
        "data.crop_size=96", 'data.degradation="clean:0.5,osediff:0.5"', "data.cache_images=true",
        f'run.output_dir="{out}"', "run.max_steps=12", "run.checkpoint_every=6", "run.validate_every=1000",
        "run.log_every=1", "optim.lr=2e-3", "optim.warmup_steps=1", "optim.batch_size=2", "loss.lpips=0.0",
        "loss.l1=1.0", "loss.periodicity=1.0", "sr.train_dit=false", "sr.train_vae_encoder=false",
        "sr.compensation=false", "sr.pixel_path=true", f'sr.pixel_path_span="{span_path}"',
        # the tiny preset has no pixel path of its own: the compact widths (48 ch) would not match
        # the small SPAN above, so the test overrides them through the preset of the init
        *extra,
    ])


@pytest.fixture()
def small_pixel_path(monkeypatch):
    """Build pixel paths with the small SPAN's widths (the compact ones are 48 channels)."""
    from op4ksr.models import presets

    original = presets.build_pixel_path

    def small(preset, vae_config, *, use_latent=True):
        path = original(preset, vae_config, use_latent=use_latent)
        return type(path)(**{**dict(path.config), **SMALL_SPAN, "fusion_channels": 8})

    monkeypatch.setattr(presets, "build_pixel_path", small)


def test_faithful_end_trains_alone_from_span_and_exports(tmp_path, photo_dir, tiny_init_dir, span_weights,
                                                         small_pixel_path):
    path, span = span_weights
    stage = SRStage(_config(tmp_path / "s", photo_dir, tiny_init_dir, path))
    trainable = {n for n, p in stage.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("pixel_path.faithful.") for n in trainable)
    assert any(".fusion." in n for n in trainable)
    lr = torch.rand(1, 3, 16, 16)
    with torch.no_grad():  # step 0: the pipeline is the SPAN it started from
        torch.testing.assert_close(stage.pipe(lr), span(lr).clamp(0, 1), rtol=0, atol=1e-5)
    assert stage.pipe.compensation is None and stage.pipe.config.color_fix == "none"

    result = train(_config(tmp_path / "run", photo_dir, tiny_init_dir, path))
    losses = [r["loss"] for r in result.history]
    assert sum(losses[-4:]) < sum(losses[:4])
    note = json.loads((result.model_dir / "training.json").read_text())
    assert note["trained_parts"] == ["pixel_path.faithful"]
    model = from_pretrained(result.model_dir)
    assert model.config.grid_fix == "none" and model.pixel_path is not None
    with torch.no_grad():
        # the perceptual end did not train: it is still the SPAN it started from (fusion at zero)
        torch.testing.assert_close(model(lr, fidelity=0.0), span(lr).clamp(0, 1), rtol=0, atol=1e-5)
        assert not torch.allclose(model(lr, fidelity=1.0), model(lr, fidelity=0.0))
    assert model.pixel_path.faithful.fusion.out.weight.abs().sum() > 0  # the latent is used now


def test_perceptual_end_with_ema_resumes_exactly(tmp_path, photo_dir, tiny_init_dir, span_weights, small_pixel_path):
    path, _ = span_weights
    extra = ('sr.train_end="perceptual"', "sr.ema_decay=0.5", "sr.perceptual_from_faithful=true")
    whole = train(_config(tmp_path / "whole", photo_dir, tiny_init_dir, path, *extra))
    first = train(_config(tmp_path / "split", photo_dir, tiny_init_dir, path, *extra), stop_at_step=6)
    assert first.interrupted
    second = train(_config(tmp_path / "split", photo_dir, tiny_init_dir, path, *extra), resume=True)
    assert [r["loss"] for r in second.history] == [r["loss"] for r in whole.history[6:]]
    a, b = from_pretrained(whole.model_dir), from_pretrained(second.model_dir)
    for k, v in a.pixel_path.state_dict().items():
        assert torch.equal(v, b.pixel_path.state_dict()[k]), k
    note = json.loads((whole.model_dir / "training.json").read_text())
    assert note["trained_parts"] == ["pixel_path.perceptual (EMA)"]


def test_ema_is_the_moving_average_of_the_trained_end(tmp_path, photo_dir, tiny_init_dir, span_weights,
                                                      small_pixel_path):
    path, _ = span_weights
    stage = SRStage(_config(tmp_path / "e", photo_dir, tiny_init_dir, path, "sr.ema_decay=0.9"))
    before = {n: p.clone() for n, p in stage.pixel_ema.named_parameters()}
    with torch.no_grad():
        for p in stage.pipe.pixel_path.faithful.parameters():
            p.add_(1.0)
    stage.after_optimizer_step()
    for name, p in stage.pixel_ema.named_parameters():
        torch.testing.assert_close(p, before[name] + 0.1)  # 0.9·old + 0.1·(old + 1)
    assert all(k.startswith(("pixel_path.faithful.", "pixel_ema.")) for k in stage.trainable_state_dict())


def test_pixel_path_options_are_checked(tmp_path, photo_dir, tiny_init_dir, span_weights):
    path, _ = span_weights
    with pytest.raises(ConfigError, match="sr.train_end"):
        _config(tmp_path, photo_dir, tiny_init_dir, path, 'sr.train_end="middle"')
    with pytest.raises(ConfigError, match="sr.ema_decay"):
        _config(tmp_path, photo_dir, tiny_init_dir, path, "sr.ema_decay=1.0")
