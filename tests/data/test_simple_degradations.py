"""The simple presets (mild, light), mixtures, and random-scale training crops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from op4ksr.data.degradations import (
    DegradationPipeline,
    MixtureDegradation,
    SimpleDegradation,
    SimpleDegradationConfig,
    load_preset,
    parse_mixture,
)


def _hr(seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_clean_simple_degradation_is_the_antialiased_bicubic_downscale_quantised():
    pipe = SimpleDegradation(SimpleDegradationConfig(), scale=4)
    hr = _hr()
    lr, rec = pipe.degrade_one(hr, seed=7)
    expected = F.interpolate(hr, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(lr, (expected.clamp(0, 1) * 255).round() / 255, rtol=0, atol=0)
    assert rec.final["noise"] is None and rec.final["jpeg_quality"] is None
    assert rec.lr_size == (16, 16)


def test_mild_preset_matches_the_suite_definition():
    cfg = load_preset("mild")
    assert isinstance(cfg, SimpleDegradationConfig)
    assert cfg.resize_modes == ("bicubic",) and cfg.noise_prob == 0.0 and cfg.jpeg_range == (60, 90)
    pipe = DegradationPipeline.from_preset("mild")
    qualities = [pipe.degrade_one(_hr(s, 32), seed=s)[1].final["jpeg_quality"] for s in range(40)]
    used = [q for q in qualities if q is not None]
    assert 0 < len(used) < 40  # JPEG on some images, not all (p = 0.5)
    assert all(60 <= q <= 90 for q in used)


def test_light_preset_draws_noise_within_its_range():
    pipe = DegradationPipeline.from_preset("light")
    sigmas = [r.final["noise"]["sigma"] for r in (pipe.degrade_one(_hr(s, 32), seed=s)[1] for s in range(40))
              if r.final["noise"] is not None]
    assert sigmas and all(1.0 <= s <= 5.0 for s in sigmas)


def test_same_seed_same_lr():
    pipe = DegradationPipeline.from_preset("light")
    a, _ = pipe.degrade_one(_hr(), seed=11)
    b, _ = pipe.degrade_one(_hr(), seed=11)
    assert torch.equal(a, b)


def test_mixture_uses_both_members_with_their_weights():
    pipe = DegradationPipeline.from_preset("osediff:1,mild:3")
    assert isinstance(pipe, MixtureDegradation)
    assert pipe.weights == [0.25, 0.75]
    members = [pipe.degrade_one(_hr(s, 32), seed=s)[1].final["member"] for s in range(80)]
    n_mild = members.count("mild")
    assert set(members) == {"osediff", "mild"} and 40 < n_mild < 75


@pytest.mark.parametrize("spec, message", [("osediff:x", "not a number"), ("osediff:0", "positive weight"),
                                           (":1", "positive weight")])
def test_bad_mixtures_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_mixture(spec)


def test_simple_config_checks_its_values(tmp_path):
    with pytest.raises(ValueError, match="resize_modes"):
        SimpleDegradationConfig(resize_modes=("nearest",))
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "simple"\njpeg_prob = 2.0\n')
    with pytest.raises(ValueError, match="bad.toml: jpeg_prob must be a probability"):
        load_preset(bad)


def test_random_scale_crops_keep_the_crop_size_and_are_seeded(tmp_path):
    from op4ksr.data.datasets import DatasetConfig, PairedImageDataset

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    cfg = DatasetConfig(crop_size=128, scale=4, preset="mild", scale_range=(0.5, 0.9), cache_images=True)
    ds = PairedImageDataset([tmp_path], cfg)
    first, again = ds[0], ds[0]
    assert first["hr"].shape == (3, 128, 128) and first["lr"].shape == (3, 32, 32)
    assert torch.equal(first["hr"], again["hr"])
    # a downscaled region is smoother than a native crop of the noise image
    native = PairedImageDataset([tmp_path], DatasetConfig(crop_size=128, scale=4, preset=None))[0]["hr"]
    assert first["hr"].std() < native.std()
    # 8-bit values, like an unscaled crop
    assert torch.equal(first["hr"], (first["hr"] * 255).round() / 255)
    with pytest.raises(ValueError, match="scale_range"):
        DatasetConfig(scale_range=(0.0, 1.0))
