"""op4ksr's own F16 VAE against diffusers' AutoencoderKL (the reference it reproduces).

For stride 2 the reference is diffusers' AutoencoderKL with UltraFlux's two changes applied
here, plainly: a stride-2 ``encoder.conv_in`` and a nearest ×2 in front of ``decoder.conv_out``.

Bit-identity: the encoder, the posterior mode and the stride-1 decoder are bit-identical
(torch.equal). The F16 decoder is bit-identical up to its last conv: ours computes nearest ×2 +
``conv_out`` as one phase-packed conv at the low resolution (``nearest2x_conv``), which sums the
same products in a different order (two taps that read the same source pixel are pre-added into
one weight), so the final output differs from upsample-then-conv by float32 rounding only. Those
tests check the features entering the tail with torch.equal, our output against
``nearest2x_conv`` of the *reference's* features with torch.equal, and the output against the
reference within the worst-case rounding bound of the two summation orders (numerics.py:
``summation_bound``, computed per output pixel from |weights|·|features|), not a bound
measured on one CPU.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_within, summation_bound
from torch import nn

from op4ksr.models.vae import F16AutoencoderKL, nearest2x_conv

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_VAE = ROOT / "src" / "op4ksr" / "weights" / "compact" / "vae"

BASE = {"block_out_channels": (8, 16, 32, 32), "norm_num_groups": 4, "latent_channels": 4,
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}

# (stride, mid attention, layers_per_block, quant_conv, post_quant_conv, channels_last)
CASES = [
    (2, True, 1, False, False, False),
    (2, False, 2, True, True, True),
    (2, True, 2, True, False, True),
    (1, True, 2, True, True, False),
    (1, False, 1, False, True, True),
]
H, W = 64, 96


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _config(stride, attention, layers, quant, post_quant) -> dict:
    return dict(BASE, stride=stride, mid_block_add_attention=attention, layers_per_block=layers,
                use_quant_conv=quant, use_post_quant_conv=post_quant)


def _reference(diffusers, config: dict):
    """diffusers' AutoencoderKL with the same config; for stride 2 with UltraFlux's two changes."""
    config = dict(config)
    stride = config.pop("stride")
    # op4ksr writes the F16 tail's kind explicitly; the bundled (plain-tail) VAE is the reference here
    assert not config.pop("partitioned_decode", False)
    for key in ("_class_name", "_diffusers_version"):
        config.pop(key, None)
    ref = diffusers.AutoencoderKL(**config)
    if stride == 2:
        old = ref.encoder.conv_in
        ref.encoder.conv_in = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=2, padding=1)
        # decoder tail: conv_act(conv_norm_out(x)) → nearest ×2 → conv_out
        ref.decoder.conv_out.register_forward_pre_hook(
            lambda module, args: (F.interpolate(args[0], scale_factor=2.0, mode="nearest"),))
    return ref


def _pair(diffusers, config: dict, seed: int = 0, channels_last: bool = False):
    """(ours, reference) with the same random weights; ours loads the reference's state dict strictly."""
    torch.manual_seed(seed)
    ref = _reference(diffusers, config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that every parameter matters
        for name, p in ref.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ours = F16AutoencoderKL(**config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    if channels_last:
        ours.to(memory_format=torch.channels_last)
        ref.to(memory_format=torch.channels_last)
    return ours, ref


def _capture(module: nn.Module) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    module.register_forward_hook(lambda m, args, out: outputs.append(out))
    return outputs


def _assert_decoded_equal(ours_out, ref_out, ours_features, ref_features, ref, stride):
    if stride == 1:
        assert torch.equal(ours_out, ref_out)
        return
    assert torch.equal(ours_features, ref_features)  # everything before the tail: bit-identical
    assert torch.equal(ours_out, nearest2x_conv(ref_features, ref.decoder.conv_out))
    assert_within(ours_out, ref_out, _tail_bound(ref_features, ref.decoder.conv_out))  # the tail: rounding only


def _tail_bound(features: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Rounding bound of upsample-then-conv vs the phase-packed conv: both sum the same
    |w|·|x| terms (the packed one pre-adds up to 4 weights), ≤ 9·C_in + 4 of them per output."""
    up = F.interpolate(features.abs(), scale_factor=2, mode="nearest")
    magnitude = F.conv2d(up, conv.weight.abs(), conv.bias.abs(), padding=1)
    return summation_bound(magnitude, 9 * conv.in_channels + 4)


@pytest.mark.parametrize("stride,attention,layers,quant,post_quant,channels_last", CASES)
def test_outputs_match_diffusers(diffusers, stride, attention, layers, quant, post_quant, channels_last):
    config = _config(stride, attention, layers, quant, post_quant)
    ours, ref = _pair(diffusers, config, channels_last=channels_last)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours_features, ref_features = _capture(ours.decoder.conv_act), _capture(ref.decoder.conv_act)
    with torch.no_grad():
        z_ref = ref.encode(x * 2 - 1).latent_dist.mode()
        z = ours.encode_mode(x)
        assert z.shape == (2, 4, H // ours.spatial_factor, W // ours.spatial_factor)
        assert torch.equal(z, z_ref)
        assert torch.equal(ours.encode(x * 2 - 1).latent_dist.mode(), z_ref)
        # decode a latent with some structure (the encoder's) and a random one
        for latent in (z_ref, torch.randn(z_ref.shape, generator=torch.Generator().manual_seed(2))):
            ours_features.clear(), ref_features.clear()
            out, out_ref = ours.decode_images(latent), (ref.decode(latent).sample + 1) * 0.5
            assert out.shape == (2, 3, H, W)
            ours_raw = ours.decode(latent).sample
            _assert_decoded_equal(ours_raw, ref.decode(latent).sample, ours_features[-1], ref_features[-1],
                                  ref, stride)
            # (x + 1)·0.5 halves the raw difference and adds one rounding of a value ≤ 1 per side
            raw_bound = 0.0 if stride == 1 else _tail_bound(ref_features[-1], ref.decoder.conv_out)
            assert_within(out, out_ref, 0.5 * raw_bound + 2 * torch.finfo(torch.float32).eps)


def test_posterior_sample_and_kl_match_diffusers(diffusers):
    ours, ref = _pair(diffusers, _config(2, True, 1, True, False))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        post, post_ref = ours.encode(x).latent_dist, ref.encode(x).latent_dist
        assert torch.equal(post.mode(), post_ref.mode())
        assert torch.equal(post.kl(), post_ref.kl())
        a = post.sample(generator=torch.Generator().manual_seed(4))
        b = post_ref.sample(generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
        assert torch.equal(ours(x).sample, ours.decode(post.mode()).sample)


def test_seeded_construction_gives_the_stock_random_weights(diffusers):
    """Modules are created in diffusers' order: a seeded fresh model equals a seeded stock one."""
    for stride, attention, layers, quant, post_quant, _ in CASES:
        config = _config(stride, attention, layers, quant, post_quant)
        torch.manual_seed(7)
        ours = F16AutoencoderKL(**config)
        torch.manual_seed(7)
        stock = diffusers.AutoencoderKL(**{k: v for k, v in config.items() if k != "stride"})
        ours_state, stock_state = ours.state_dict(), stock.state_dict()
        assert list(ours_state) == list(stock_state)
        assert all(torch.equal(ours_state[k], stock_state[k]) for k in stock_state)


@pytest.mark.parametrize("stride", [2, 1])
def test_gradient_checkpointing_gives_the_same_grads(diffusers, stride):
    config = _config(stride, True, 2, True, True)
    ours, ref = _pair(diffusers, config)
    plain, _ = _pair(diffusers, config)
    for model in (ours, ref, plain):
        model.train()
    ours.enable_gradient_checkpointing()
    ref.enable_gradient_checkpointing()
    assert ours.encoder.gradient_checkpointing and ours.decoder.mid_block.gradient_checkpointing
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(5))

    def grads(model, reference=False):
        model.zero_grad()
        if reference:
            out = model.decode(model.encode(x * 2 - 1).latent_dist.mode()).sample
        else:
            out = model.decode(model.encode_mode(x)).sample
        (out.square().mean() + out.mean()).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    g_ours, g_plain, g_ref = grads(ours), grads(plain), grads(ref, reference=True)
    assert g_ours.keys() == g_plain.keys() == g_ref.keys()
    for name in g_ref:
        assert torch.equal(g_ours[name], g_plain[name]), name  # recomputation changes nothing
        if stride == 1:
            assert torch.equal(g_ours[name], g_ref[name]), name
        else:  # the tail's rounding (module docstring) propagates into every gradient
            torch.testing.assert_close(g_ours[name], g_ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bundled_compact_vae_matches_diffusers(diffusers):
    from op4ksr.models.loading import load_part
    from op4ksr.models.modeling import read_config_file

    ours = load_part("vae", BUNDLED_VAE).float()  # shipped in fp16; run in fp32 as on CPU
    assert isinstance(ours, F16AutoencoderKL) and ours.config.stride == 2
    ref = _reference(diffusers, read_config_file(BUNDLED_VAE / "config.json"))
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref.float().eval()
    # the runtime layout (loading.move_pipeline): channels-last on CPU
    ours.to(memory_format=torch.channels_last)
    ref.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    x = x.contiguous(memory_format=torch.channels_last)
    ours_features, ref_features = _capture(ours.decoder.conv_act), _capture(ref.decoder.conv_act)
    with torch.no_grad():
        z = ours.encode_mode(x)
        assert torch.equal(z, ref.encode(x * 2 - 1).latent_dist.mode())
        out, out_ref = ours.decode(z).sample, ref.decode(z).sample
    _assert_decoded_equal(out, out_ref, ours_features[-1], ref_features[-1], ref, 2)


def test_only_diffusers_block_types_are_accepted():
    with pytest.raises(ValueError, match="'AttnDownEncoderBlock2D' is not supported"):
        F16AutoencoderKL(**dict(BASE, down_block_types=("AttnDownEncoderBlock2D",) * 4))
    with pytest.raises(ValueError, match="'UpBlock2D' is not supported"):
        F16AutoencoderKL(**dict(BASE, up_block_types=("UpDecoderBlock2D",) * 3 + ("UpBlock2D",)))
    with pytest.raises(ValueError, match="must match"):
        F16AutoencoderKL(**dict(BASE, down_block_types=("DownEncoderBlock2D",) * 3))
    with pytest.raises(ValueError, match="stride must be 1"):
        F16AutoencoderKL(**dict(BASE, stride=4))


def test_meta_construction_of_the_full_size_vae():
    with torch.device("meta"):
        vae = F16AutoencoderKL()
    assert vae.device.type == "meta"
    assert vae.decoder.mid_block.attentions[0].to_q.weight.shape == (512, 512)
    assert vae.quant_conv is None and vae.post_quant_conv is None


def test_importing_the_model_modules_pulls_in_no_heavy_library():
    code = """
import sys
HEAVY = ("diffusers", "peft", "transformers", "torch._dynamo")
import torch
import op4ksr.models.vae, op4ksr.models.prompt, op4ksr.models.compensation
loaded = [m for m in HEAVY if m in sys.modules]
assert not loaded, f"imported: {loaded}"
from op4ksr.models.compensation import HighFrequencyCompensation
from op4ksr.models.prompt import FixedPromptEmbeddings
from op4ksr.models.vae import F16AutoencoderKL
vae = F16AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                       down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
comp = HighFrequencyCompensation.for_vae(vae.config, guide_channels=4, head_channels=4, head_layers=1)
FixedPromptEmbeddings(sequence_length=2, joint_attention_dim=4, pooled_projection_dim=4)(1)
with torch.no_grad():
    x = torch.rand(1, 3, 16, 16)
    guide = comp.guide(x)
    rgb = vae.decode_images(vae.encode_mode(x), level_hook=lambda i, f: comp.fuse(i, f, guide))
    comp.refine(rgb, x, guide)
loaded = [m for m in HEAVY if m in sys.modules]
assert not loaded, f"imported at run time: {loaded}"
"""
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
