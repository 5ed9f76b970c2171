import json
import math

import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

from op4ksr.models.loading import load_part
from op4ksr.models.presets import build_pipeline, get_preset
from op4ksr.models.rope import (
    ULTRAFLUX_ROPE_SCALING,
    RescaledRoPE,
    rope_frequencies,
    ultraflux_rope_scaling,
    yarn_frequencies,
)
from op4ksr.models.transformer import OP4KSRTransformer

TINY_DIT = get_preset("tiny").transformer


def test_rope_frequencies_match_paper_eq2():
    f = rope_frequencies(56, 100.0)
    assert f.shape == (28,)
    for i in (0, 1, 7, 27):
        assert math.isclose(float(f[i]), 100.0 ** (-2 * i / 56), rel_tol=1e-12)


def test_rope_theta_is_config_and_module():
    t = OP4KSRTransformer(**TINY_DIT)
    assert isinstance(t.pos_embed, RescaledRoPE)
    assert t.pos_embed.theta == 100.0 and t.config.rope_theta == 100.0
    t.set_rope_theta(10000)
    assert t.pos_embed.theta == 10000.0 and t.config.rope_theta == 10000.0


def test_ultraflux_transformer_defaults_to_theta_100_on_meta_device():
    pipe = build_pipeline("ultraflux", device="meta", seed=None)
    t = pipe.transformer
    assert t.config.rope_theta == 100.0 and t.pos_embed.theta == 100.0
    params = sum(p.numel() for p in t.parameters())
    assert abs(params - 11.9e9) / 11.9e9 < 0.01
    assert all(p.device.type == "meta" for p in t.parameters())


def _velocity(pipe, tokens):
    with torch.no_grad():
        return pipe.velocity(tokens, 4, 4)


def test_changing_theta_changes_the_output():
    pipe = build_pipeline("tiny", seed=0)
    tokens = torch.randn(1, 16, 16)
    v100 = _velocity(pipe, tokens)
    pipe.transformer.set_rope_theta(10000)
    v10k = _velocity(pipe, tokens)
    assert (v100 - v10k).abs().max() > 1e-4


def test_rope_tables_reach_attention(monkeypatch):
    """Replacing the rotation by the identity changes the output: the tables are used in attention."""
    pipe = build_pipeline("tiny", seed=0)
    tokens = torch.randn(1, 16, 16)
    before = pipe.transformer.pos_embed.calls
    v = _velocity(pipe, tokens)
    assert pipe.transformer.pos_embed.calls == before + 1
    real_forward = RescaledRoPE.forward

    def identity_rotation(self, ids):
        cos, sin = real_forward(self, ids)
        return torch.ones_like(cos), torch.zeros_like(sin)

    monkeypatch.setattr(RescaledRoPE, "forward", identity_rotation)
    v_no_rope = _velocity(pipe, tokens)
    assert (v - v_no_rope).abs().max() > 1e-4


def test_ultraflux_layout_transformer_folder_loads_with_yarn_keys(tmp_path):
    torch.manual_seed(0)
    stock = FluxTransformer2DModel(**{k: v for k, v in TINY_DIT.items() if k != "rope_theta"})
    folder = tmp_path / "transformer"
    folder.mkdir()
    config = dict(stock.config)
    config.update(_class_name="FluxTransformer2DModel", method="yarn", ntk_factor=4)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(stock.state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    t = load_part("transformer", folder)
    assert t.config.rope_theta == 100.0
    t10k = load_part("transformer", folder, config_overrides={"rope_theta": 10000.0})
    # with θ = 10000 the project's transformer reproduces the stock diffusers model exactly
    stock.eval()
    kwargs = dict(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 4, 16),
                  pooled_projections=torch.randn(1, 16), timestep=torch.tensor([0.5]),
                  img_ids=torch.randn(16, 3).round(), txt_ids=torch.zeros(4, 3), return_dict=False)
    with torch.no_grad():
        torch.testing.assert_close(t10k(**kwargs)[0], stock(**kwargs)[0])
        assert (t(**kwargs)[0] - stock(**kwargs)[0]).abs().max() > 1e-5


def test_rope_cache_distinguishes_transposed_grids():
    rope = RescaledRoPE(100.0, [4, 6, 6])
    from op4ksr.models.packing import image_ids

    a = rope(image_ids(2, 8))
    b = rope(image_ids(8, 2))
    assert not torch.equal(a[0], b[0])
    assert rope.calls == 2
    rope(image_ids(8, 2))
    assert rope.calls == 2  # cached


@pytest.mark.parametrize("theta", [100.0, 10000.0])
def test_rescaled_rope_matches_diffusers_posembed(theta):
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    ids = torch.randint(0, 50, (30, 3)).float()
    ours = RescaledRoPE(theta, [16, 56, 56])(ids)
    ref = FluxPosEmbed(theta=int(theta), axes_dim=[16, 56, 56])(ids)
    torch.testing.assert_close(ours[0], ref[0])
    torch.testing.assert_close(ours[1], ref[1])


# ------------------------------------------------------------------ UltraFlux's RoPE beyond 2048 px


def _ultraflux_pair_frequency(i: int, dim: int, theta: float, s: float) -> float:
    """One pair's frequency as UltraFlux computes it beyond its 64-token window, one scalar at a
    time (resonance rounding, YaRN's β/γ bands over the pair index, linear and NTK spectra)."""
    window = 64
    alpha = 2 * i / dim
    rotations = max(round(window * theta ** alpha / (2 * math.pi)), 1.0)
    alpha = math.log(2 * math.pi * rotations / window) / math.log(theta)
    base = theta ** -alpha
    linear, ntk = base / s, (theta * s ** (dim / (dim - 2))) ** -alpha

    def band(r_low, r_high):
        def at(r):
            return dim * math.log(window / (r * 2 * math.pi)) / (2 * math.log(theta))
        low, high = max(math.floor(at(r_low)), 0), min(math.ceil(at(r_high)), dim - 1, dim // 2)
        high = high + 0.001 if low == high else high
        return 1 - min(max((i - low) / (high - low), 0.0), 1.0)  # weight of the second spectrum

    beta = band(1.25, 0.75)
    f = linear * (1 - beta) + ntk * beta
    gamma = band(16, 2)
    return f * (1 - gamma) + base * gamma


@pytest.mark.parametrize("theta", [10000.0, 100.0])
@pytest.mark.parametrize("span", [65, 96, 128])
def test_ultraflux_yarn_tables_against_a_scalar_implementation(theta, span):
    rope = RescaledRoPE(theta, [4, 12, 8], ULTRAFLUX_ROPE_SCALING)
    rows, cols = span, 40  # the column axis stays inside the window: plain there
    ids = torch.zeros(5 + rows * cols, 3)
    ids[5:, 1] = torch.arange(rows).repeat_interleave(cols).float()
    ids[5:, 2] = torch.arange(cols).repeat(rows).float()
    cos, sin = rope(ids)
    s = span / 64
    mscale = 1 + 0.1 * math.log(s)
    for token in (5 + 0, 5 + 17 * cols + 3, 5 + (rows - 1) * cols + cols - 1):
        row, col = float(ids[token, 1]), float(ids[token, 2])
        for i in range(6):  # row axis: columns 4 … 15 of the table, pairs repeated
            phase = row * _ultraflux_pair_frequency(i, 12, theta, s)
            assert math.isclose(float(cos[token, 4 + 2 * i]), math.cos(phase) * mscale, abs_tol=2e-6)
            assert math.isclose(float(sin[token, 4 + 2 * i + 1]), math.sin(phase) * mscale, abs_tol=2e-6)
        for i in range(4):  # column axis: plain, no mscale
            phase = col * theta ** (-2 * i / 8)
            assert math.isclose(float(cos[token, 16 + 2 * i]), math.cos(phase), abs_tol=2e-6)
    torch.testing.assert_close(cos[:5, :4], torch.ones(5, 4))  # text axis untouched


def test_ultraflux_yarn_at_4096_px_halves_the_slow_pairs():
    """At 128 tokens per side (4096 px): s = 2, mscale = 1 + 0.1·ln 2; the slow pairs (8–27)
    run at half speed, the fastest keep theirs, pair 7 sits halfway in the β band."""
    f = yarn_frequencies(56, 10000.0, 2.0, ULTRAFLUX_ROPE_SCALING)
    ratio = f / rope_frequencies(56, 10000.0)
    assert torch.allclose(ratio[10:], torch.full((18,), 0.5, dtype=ratio.dtype), atol=1e-3)
    assert 0.49 < float(ratio[8]) < 0.51 and float(ratio[0]) > 1.0  # resonance rounds pair 0 up
    ntk7 = 2 ** (-(56 / 54) * 0.25)
    assert abs(float(ratio[7]) - 0.5 * (0.5 + ntk7)) < 0.01


def test_rope_scaling_is_plain_inside_the_window_and_a_config_value(tmp_path):
    plain = RescaledRoPE(10000.0, [4, 6, 6])
    scaled = RescaledRoPE(10000.0, [4, 6, 6], ULTRAFLUX_ROPE_SCALING)
    from op4ksr.models.packing import image_ids

    inside, beyond = image_ids(64, 64), image_ids(65, 8)
    for a, b in zip(plain(inside), scaled(inside)):
        assert torch.equal(a, b)
    assert not torch.allclose(plain(beyond)[0], scaled(beyond)[0])
    t = OP4KSRTransformer(**{**TINY_DIT, "rope_theta": 10000.0, "rope_scaling": ULTRAFLUX_ROPE_SCALING})
    t.save_pretrained(tmp_path / "t")
    loaded = load_part("transformer", tmp_path / "t")
    assert loaded.pos_embed.scaling == ULTRAFLUX_ROPE_SCALING and loaded.config.rope_scaling["type"] == "ultraflux_yarn"
    loaded.set_rope_theta(100.0)  # keeps the scaling unless told
    assert loaded.pos_embed.scaling == ULTRAFLUX_ROPE_SCALING
    loaded.set_rope_theta(100.0, rope_scaling=None)
    assert loaded.pos_embed.scaling is None and loaded.config.rope_scaling is None
    with pytest.raises(ValueError, match="rope_scaling"):
        OP4KSRTransformer(**{**TINY_DIT, "rope_scaling": {"type": "dynamic"}})
    assert ultraflux_rope_scaling({"method": "yarn"}) == ULTRAFLUX_ROPE_SCALING
    assert ultraflux_rope_scaling({}) == ULTRAFLUX_ROPE_SCALING  # UltraFlux's default method
    assert ultraflux_rope_scaling({"method": "base"}) is None
