"""op4ksr's own Flux DiT (models/transformer.py) against diffusers' FluxTransformer2DModel.

Ours is a plain-PyTorch copy kept to avoid importing diffusers at run time; these tests pin it to
the stock model: same state-dict keys and shapes, same seeded initial weights, and bit-identical
outputs and gradients for the same weights (same operations in the same order, single-threaded
CPU math, see tests/conftest.py).
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from op4ksr.models.loading import bundled_model_dir, load_part
from op4ksr.models.packing import image_ids, text_ids
from op4ksr.models.rope import FLUX_ROPE_THETA, RescaledRoPE, set_rope_theta
from op4ksr.models.transformer import OP4KSRTransformer

diffusers = pytest.importorskip("diffusers")
from diffusers import FluxTransformer2DModel

ROWS, COLS, TEXT, BATCH = 3, 5, 7, 2  # a non-square token grid


def tiny_config(guidance: bool) -> dict:
    # RoPE rotates each head: axes_dims_rope sums to attention_head_dim (2 heads of 32)
    return {"in_channels": 16, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 32,
            "num_attention_heads": 2, "joint_attention_dim": 24, "pooled_projection_dim": 20,
            "guidance_embeds": guidance, "axes_dims_rope": (4, 14, 14)}


def stock_and_ours(config: dict, theta: float) -> tuple[torch.nn.Module, OP4KSRTransformer]:
    """diffusers' model with random weights, and ours holding the same weights, both at RoPE base θ."""
    torch.manual_seed(0)
    stock = FluxTransformer2DModel(**config).eval()
    if theta != FLUX_ROPE_THETA:
        set_rope_theta(stock, theta)  # otherwise the stock FluxPosEmbed(theta=10000) is compared too
    ours = OP4KSRTransformer(**config, rope_theta=theta).eval()
    ours.load_state_dict(stock.state_dict(), strict=True)
    return stock, ours


def inputs(config: dict, dtype: torch.dtype = torch.float32, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    return {
        "hidden_states": randn(BATCH, ROWS * COLS, config["in_channels"]),
        "encoder_hidden_states": randn(BATCH, TEXT, config["joint_attention_dim"]),
        "pooled_projections": randn(BATCH, config["pooled_projection_dim"]),
        "timestep": torch.tensor([0.7, 0.25]).to(dtype),
        "img_ids": image_ids(ROWS, COLS),
        "txt_ids": text_ids(TEXT),
        "guidance": torch.tensor([3.5, 1.0]).to(dtype) if config["guidance_embeds"] else None,
    }


def run(model, kwargs: dict, **extra) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs, return_dict=False, **extra)[0]


@pytest.mark.parametrize("guidance", [False, True])
def test_state_dict_keys_shapes_and_seeded_init_match_diffusers(guidance):
    config = tiny_config(guidance)
    torch.manual_seed(0)
    stock = FluxTransformer2DModel(**config).state_dict()
    torch.manual_seed(0)
    ours = OP4KSRTransformer(**config).state_dict()
    assert list(ours) == list(stock)  # same keys, same order
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in stock.items()}
    # modules are created in diffusers' order, so a seeded fresh model has the stock weights
    assert all(torch.equal(ours[k], stock[k]) for k in stock)
    assert ("time_text_embed.guidance_embedder.linear_1.weight" in ours) == guidance


@pytest.mark.parametrize("guidance", [False, True])
@pytest.mark.parametrize("theta", [FLUX_ROPE_THETA, 100.0])
def test_output_is_bit_identical_to_diffusers(guidance, theta):
    config = tiny_config(guidance)
    stock, ours = stock_and_ours(config, theta)
    kwargs = inputs(config)
    expected = run(stock, kwargs)
    assert expected.shape == (BATCH, ROWS * COLS, config["in_channels"])
    assert torch.equal(run(ours, kwargs), expected)
    # return_dict=True gives an object with .sample, as diffusers' does
    with torch.no_grad():
        assert torch.equal(ours(**kwargs).sample, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_output_is_bit_identical_to_diffusers(dtype):
    """The dtype casts (timestep, embeddings, RoPE in float32, fp16 clipping) follow diffusers'."""
    config = tiny_config(True)
    stock, ours = stock_and_ours(config, 100.0)
    torch.nn.Module.to(stock, dtype)  # nn.Module.to: ModelMixin.to warns on a dtype cast
    ours.to(dtype)
    kwargs = inputs(config, dtype)
    expected = run(stock, kwargs)
    assert expected.dtype == dtype
    assert torch.equal(run(ours, kwargs), expected)


def test_batched_ids_are_reduced_to_the_first_sample_with_a_warning(caplog):
    config = tiny_config(False)
    stock, ours = stock_and_ours(config, 100.0)
    kwargs = inputs(config)
    expected = run(stock, kwargs)
    batched = {**kwargs, "img_ids": kwargs["img_ids"].expand(BATCH, -1, -1),
               "txt_ids": kwargs["txt_ids"].expand(BATCH, -1, -1)}
    with caplog.at_level(logging.WARNING, logger="op4ksr.models.transformer"):
        assert torch.equal(run(ours, batched), expected)
    assert sum("deprecated" in r.getMessage() for r in caplog.records) == 2


def test_guidance_must_match_guidance_embeds():
    for guidance in (False, True):
        config = tiny_config(guidance)
        model = OP4KSRTransformer(**config)
        kwargs = inputs(config)
        kwargs["guidance"] = None if guidance else torch.ones(BATCH)
        with pytest.raises(ValueError, match="guidance_embeds"):
            run(model, kwargs)


def test_rescaled_rope_is_bit_identical_to_flux_posembed():
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    ids = torch.cat([text_ids(TEXT), image_ids(ROWS, COLS), torch.randint(0, 4000, (20, 3)).float()])
    ours = RescaledRoPE(FLUX_ROPE_THETA, [16, 56, 56])(ids)
    ref = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def _gradients(model, kwargs: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(**kwargs, return_dict=False)[0]
    (out.square().mean() + out.sum() * 1e-3).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config(True)
    stock, ours = stock_and_ours(config, 100.0)
    stock.train()
    ours.train()
    kwargs = inputs(config)
    expected = _gradients(stock, kwargs)
    plain = _gradients(ours, kwargs)
    assert plain.keys() == expected.keys()
    assert all(torch.equal(plain[n], expected[n]) for n in expected)  # backward matches diffusers' too

    calls = []
    for block in [*ours.transformer_blocks, *ours.single_transformer_blocks]:
        # a pre-hook: the recomputation stops early, once it has what the backward pass needs
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    ours.enable_gradient_checkpointing()
    assert ours.gradient_checkpointing
    checkpointed = _gradients(ours, kwargs)
    assert len(calls) == 2 * 4  # every block ran again in the backward pass: it was checkpointed
    assert all(torch.equal(checkpointed[n], plain[n]) for n in plain)
    ours.disable_gradient_checkpointing()
    calls.clear()
    _gradients(ours, kwargs)
    assert len(calls) == 4


def test_bundled_transformer_loads_and_matches_diffusers():
    folder = bundled_model_dir() / "transformer"
    ours = load_part("transformer", folder)
    assert isinstance(ours, OP4KSRTransformer) and ours.config.rope_theta == 100.0
    config = json.loads((folder / "config.json").read_text())
    stock = FluxTransformer2DModel.from_config(config)  # ignores our extra key rope_theta
    stock.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")), strict=True)
    set_rope_theta(stock, 100.0)
    torch.nn.Module.to(stock, torch.float32)  # the shipped weights are fp16; compare in float32
    ours.to(torch.float32)
    stock.eval()
    kwargs = inputs(config)
    assert torch.equal(run(ours, kwargs), run(stock, kwargs))


def test_saved_model_loads_in_diffusers_and_builds_on_the_meta_device(tmp_path):
    config = tiny_config(False)
    _, ours = stock_and_ours(config, 100.0)
    ours.save_pretrained(tmp_path / "transformer")
    stock = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    set_rope_theta(stock, 100.0)
    kwargs = inputs(config)
    assert torch.equal(run(stock, kwargs), run(ours, kwargs))

    saved = json.loads((tmp_path / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        meta = OP4KSRTransformer.from_config({**saved, "method": "yarn", "ntk_factor": 4})
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert meta.config.rope_theta == 100.0 and meta.pos_embed.theta == 100.0


def test_importing_the_transformer_does_not_import_diffusers():
    code = ("import sys, op4ksr.models.transformer, op4ksr.models.rope; "
            "print(sorted(m for m in ('diffusers', 'peft', 'transformers', 'torch._dynamo') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
