import json

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from op4ksr.models.loading import load_part
from op4ksr.models.vae import F16AutoencoderKL, nearest2x_conv

TINY = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            use_quant_conv=False, use_post_quant_conv=False)


def test_nearest2x_conv_equals_upsample_then_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 3, 3, padding=1)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    conv = conv.double()
    expected = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(nearest2x_conv(x, conv), expected, rtol=0, atol=1e-12)


def test_f16_vae_compresses_16x_with_stock_parameter_names():
    vae = F16AutoencoderKL(**TINY).eval()
    stock = AutoencoderKL(**TINY)
    assert {k: v.shape for k, v in vae.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    assert vae.encoder.conv_in.stride == (2, 2)
    assert vae.spatial_factor == 16
    x = torch.rand(1, 3, 64, 96)
    z = vae.encode_mode(x)
    assert z.shape == (1, 4, 4, 6)
    assert vae.decode_images(z).shape == (1, 3, 64, 96)


def test_decoder_tail_is_norm_silu_nearest_conv():
    vae = F16AutoencoderKL(**TINY).eval()
    dec = vae.decoder
    z = torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        h = dec.conv_in(z)
        h = dec.mid_block(h)
        for block in dec.up_blocks:
            h = block(h)
        h = F.silu(dec.conv_norm_out(h))
        expected = dec.conv_out(F.interpolate(h, scale_factor=2, mode="nearest"))
        torch.testing.assert_close(dec(z), expected, rtol=1e-5, atol=1e-5)


def test_normalise_round_trip():
    vae = F16AutoencoderKL(**TINY, scaling_factor=0.3611, shift_factor=0.1159)
    z = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(vae.normalize(z), (z - 0.1159) * 0.3611)
    torch.testing.assert_close(vae.denormalize(vae.normalize(z)), z)


def test_ultraflux_layout_vae_folder_loads_unchanged(tmp_path):
    """A folder as UltraFlux ships it: stock class name, its `stride` key, stock parameter names."""
    torch.manual_seed(1)
    stock = AutoencoderKL(**TINY, scaling_factor=0.3611, shift_factor=0.1159)
    folder = tmp_path / "vae"
    folder.mkdir()
    config = dict(stock.config)
    config.update(_class_name="AutoencoderKL", _diffusers_version="0.30.0", stride=2)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(stock.state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    vae = load_part("vae", folder)
    assert isinstance(vae, F16AutoencoderKL)
    assert vae.config.stride == 2 and vae.config.scaling_factor == 0.3611
    for k, v in stock.state_dict().items():
        assert torch.equal(vae.state_dict()[k], v)
    # Same weights, same encoder except for the stride: the F16 latent equals the stock encoder
    # run on the stride-2 conv_in output.
    x = torch.rand(1, 3, 64, 64)
    assert vae.encode_mode(x).shape == (1, 4, 4, 4)
