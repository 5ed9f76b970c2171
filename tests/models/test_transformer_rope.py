import json
import math

import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

from op4ksr.models.loading import load_part
from op4ksr.models.presets import build_pipeline, get_preset
from op4ksr.models.rope import RescaledRoPE, rope_frequencies
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
