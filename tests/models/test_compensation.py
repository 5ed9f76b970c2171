"""High-frequency compensation: exact identity until trained, the fidelity knob, save/load, planner."""

import json

import pytest
import torch
from numerics import assert_same_function

from op4ksr.models.compensation import (
    HighFrequencyCompensation,
    compensation_flops,
    conv_flops_per_pixel,
    decoder_level_factors,
)
from op4ksr.models.loading import from_pretrained
from op4ksr.models.presets import build_compensation, build_pipeline


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter (the zero-initialised output convs and the skip gate included) a value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_level_factors_of_the_f16_decoder():
    # latent at ÷16; up blocks 0–2 upsample ×2 (÷8, ÷4, ÷2), block 3 does not, the tail ×2 makes ÷1
    assert decoder_level_factors((16, 32, 64, 128), stride=2) == (8, 4, 2, 2)
    assert decoder_level_factors((128, 256, 512, 512), stride=2) == (8, 4, 2, 2)
    assert decoder_level_factors((8, 16, 32), stride=2) == (4, 2, 2)


def test_every_preset_has_a_matched_compensation():
    # compact v2 draws its pixels with SPAN (models/pixel_path.py): its compensation is off by default
    assert build_pipeline("compact", device="meta").compensation is None
    for name, overrides in (("tiny", {}), ("compact", {"compensation": {"enabled": True}})):
        pipe = build_pipeline(name, overrides=overrides)
        comp = pipe.compensation
        assert comp is not None
        assert tuple(comp.config.level_channels) == tuple(reversed(pipe.vae.config.block_out_channels))
    meta = build_pipeline("ultraflux", device="meta")
    assert tuple(meta.compensation.config.level_channels) == (512, 512, 256, 128)
    assert build_pipeline("tiny", overrides={"compensation": {"enabled": False}}).compensation is None


def test_untrained_compensation_is_bit_exact_identity():
    lr = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    with_comp = build_pipeline("tiny", seed=0)
    without = build_pipeline("tiny", seed=0, overrides={"compensation": {"enabled": False}})
    assert torch.equal(with_comp(lr, check_memory=False), without(lr, check_memory=False))


def test_fidelity_zero_is_the_decoder_alone_and_one_differs():
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    pipe = build_pipeline("tiny", seed=0)
    plain = build_pipeline("tiny", seed=0, overrides={"compensation": {"enabled": False}})
    _randomise(pipe.compensation)
    ref = plain(lr, check_memory=False)
    assert torch.equal(pipe(lr, check_memory=False, fidelity=0.0), ref)
    full = pipe(lr, check_memory=False, fidelity=1.0)
    assert (full - ref).abs().max() > 1e-3
    assert full.shape == (1, 3, 64, 64)


def test_refine_is_linear_in_the_weight_and_the_skip_gate_reaches_bicubic():
    comp = HighFrequencyCompensation(level_channels=(8, 8), level_factors=(4, 2), guide_channels=4,
                                     head_channels=4, head_layers=1)
    gen = torch.Generator().manual_seed(3)
    rgb, image = torch.rand(1, 3, 16, 16, generator=gen), torch.rand(1, 3, 16, 16, generator=gen)
    guide = comp.guide(image)
    assert [tuple(g.shape[-2:]) for g in guide] == [(8, 8), (4, 4)]
    # zero head, skip gate 1: the output is the bicubic input exactly, whatever the decoder drew
    with torch.no_grad():
        comp.skip.fill_(1.0)
    torch.testing.assert_close(comp.refine(rgb, image, guide, 1.0), image, rtol=0, atol=1e-7)
    _randomise(comp, seed=4)
    out0, out1, half = (comp.refine(rgb, image, guide, w) for w in (0.0, 1.0, 0.5))
    assert torch.equal(out0, rgb)
    torch.testing.assert_close(half - rgb, 0.5 * (out1 - rgb), rtol=1e-5, atol=1e-6)


def test_fuse_refuses_a_guide_of_the_wrong_size():
    comp = HighFrequencyCompensation(level_channels=(8,), level_factors=(2,), guide_channels=4, head_channels=4)
    guide = comp.guide(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="does not match decoder level 0"):
        comp.fuse(0, torch.rand(1, 8, 4, 4), guide)


def test_bad_level_factors_are_refused():
    with pytest.raises(ValueError, match="powers of two"):
        HighFrequencyCompensation(level_channels=(8,), level_factors=(3,))
    with pytest.raises(ValueError, match="differ in length"):
        HighFrequencyCompensation(level_channels=(8, 8), level_factors=(2,))


def test_save_and_load_round_trip(tmp_path):
    pipe = build_pipeline("tiny", seed=0)
    _randomise(pipe.compensation)
    pipe.register_to_config(fidelity=0.6)
    pipe.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["compensation"] == ["op4ksr.models.compensation", "HighFrequencyCompensation"]
    assert index["fidelity"] == 0.6
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.fidelity == 0.6
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    for part in ("vae", "transformer", "prompt", "compensation"):  # the round trip itself: bit-exact weights
        saved, back = getattr(pipe, part).state_dict(), getattr(loaded, part).state_dict()
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved), part
    assert_same_function(loaded, pipe, lr, check_memory=False)


def test_model_without_compensation_loads_as_before(tmp_path):
    pipe = build_pipeline("tiny", seed=0, overrides={"compensation": {"enabled": False}})
    pipe.save_pretrained(tmp_path / "m")
    index_file = tmp_path / "m" / "model_index.json"
    index = json.loads(index_file.read_text())
    assert index["compensation"] == [None, None]
    del index["compensation"], index["fidelity"]  # an index written before the part existed (v0.3)
    index_file.write_text(json.dumps(index))
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.compensation is None and loaded.fidelity == 1.0


def test_index_naming_a_missing_part_is_refused(tmp_path):
    from op4ksr.models.loading import ModelLoadError

    build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "m")
    import shutil

    shutil.rmtree(tmp_path / "m" / "compensation")
    with pytest.raises(ModelLoadError, match="compensation/ is missing"):
        from_pretrained(tmp_path / "m")


def test_fidelity_outside_the_range_is_refused():
    pipe = build_pipeline("tiny", seed=0)
    with pytest.raises(ValueError, match=r"fidelity must be in \[0, 1\]"):
        pipe(torch.rand(1, 3, 8, 8), fidelity=1.5)


def test_flop_model_counts_every_conv_once():
    comp = build_compensation("compact", build_pipeline("compact", device="meta").vae.config)
    h = w = 1024
    half = h * w / 4
    expected = (conv_flops_per_pixel(comp.guide_stem) + conv_flops_per_pixel(comp.head)) * half
    expected += sum(conv_flops_per_pixel(d) * half / 4 ** (k + 1) for k, d in enumerate(comp.guide_down))
    expected += sum(conv_flops_per_pixel(f) * h * w / fac**2 for f, fac in zip(comp.fusions, (8, 4, 2, 2)))
    assert compensation_flops(comp, h, w) == pytest.approx(expected)
    # hand-computed: the head's first conv sees 12 + 12 unshuffled channels and 16 guide channels
    assert comp.head[0].in_channels == 40 and comp.head[0].out_channels == 32


def test_planner_counts_the_compensation_only_when_it_runs():
    pipe = build_pipeline("compact", device="meta",
                          overrides={"compensation": {"enabled": True}, "pixel_path": {"enabled": False}})
    on = pipe.estimate(2048, 2048)
    assert on.compensation_flops == pytest.approx(compensation_flops(pipe.compensation, 2048, 2048))
    assert on.total_flops == pytest.approx(on.dit_flops + on.vae_flops + on.compensation_flops)
    pipe.register_to_config(fidelity=0.0)
    off = pipe.estimate(2048, 2048)
    assert off.compensation_flops == 0.0
    assert on.decode_bytes > off.decode_bytes
    assert on.compensation_params == off.compensation_params > 0
