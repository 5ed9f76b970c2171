import json

import pytest
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
    assert vae.config.partitioned_decode is True  # UltraFlux's default decoder tail
    for k, v in stock.state_dict().items():
        assert torch.equal(vae.state_dict()[k], v)
    # Same weights, same encoder except for the stride: the F16 latent equals the stock encoder
    # run on the stride-2 conv_in output.
    x = torch.rand(1, 3, 64, 64)
    assert vae.encode_mode(x).shape == (1, 4, 4, 4)


# ------------------------------------------------------------------ UltraFlux's partitioned tail


def _ultraflux_partitioned_tail(h: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """UltraFlux's four-partition loop, written out directly (slow): cut the map after norm → SiLU
    into 2×2 partitions, each taken with a one-pixel overlap into its neighbours, zero-padded by
    one on its outer sides, upsampled nearest ×2, ``conv_out`` (its own padding), cropped, reassembled."""
    _, _, height, width = h.shape
    mid_r, mid_c = height // 2, width // 2
    out = h.new_zeros(h.shape[0], conv.out_channels, 2 * height, 2 * width)
    for top in (True, False):
        for left in (True, False):
            r0, r1 = (0, mid_r + 1) if top else (mid_r - 1, height)  # overlap of one inward
            c0, c1 = (0, mid_c + 1) if left else (mid_c - 1, width)
            part = h[:, :, r0:r1, c0:c1]
            # zero padding by one on the outer sides only
            part = F.pad(part, (1 if left else 0, 0 if left else 1, 1 if top else 0, 0 if top else 1))
            y = conv(F.interpolate(part, scale_factor=2, mode="nearest"))
            # local upsampled row u of this partition is global padded-upsampled row u + off, and the
            # output row r is padded-upsampled row r + 1 (the one-pixel zero border at the top/left)
            off_r, off_c = (0 if top else 2 * r0 + 2), (0 if left else 2 * c0 + 2)
            o_r0, o_r1 = (0, 2 * mid_r) if top else (2 * mid_r, 2 * height)
            o_c0, o_c1 = (0, 2 * mid_c) if left else (2 * mid_c, 2 * width)
            out[:, :, o_r0:o_r1, o_c0:o_c1] = y[:, :, o_r0 + 1 - off_r:o_r1 + 1 - off_r,
                                                 o_c0 + 1 - off_c:o_c1 + 1 - off_c]
    return out


@pytest.mark.parametrize("size", [(6, 8), (5, 7), (7, 4), (3, 3)])
def test_partitioned_tail_equals_ultraflux_four_partition_loop(size):
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(6, 3, 3, padding=1).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    expected = _ultraflux_partitioned_tail(x, conv)
    torch.testing.assert_close(nearest2x_conv(x, conv, shift=1), expected, rtol=0, atol=1e-12)
    # the net effect: the plain tail shifted one output pixel down-right
    plain = nearest2x_conv(x, conv)
    torch.testing.assert_close(expected[..., 1:, 1:], plain[..., :-1, :-1], rtol=0, atol=1e-12)
    assert not torch.allclose(expected, plain)


def test_partitioned_decode_in_the_decoder_and_its_config(tmp_path):
    torch.manual_seed(3)
    plain = F16AutoencoderKL(**TINY).eval()
    part = F16AutoencoderKL(**TINY, partitioned_decode=True).eval()
    part.load_state_dict(plain.state_dict())
    assert plain.config.partitioned_decode is False and part.config.partitioned_decode is True
    z = torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        a, b = plain.decode_images(z), part.decode_images(z)
    assert a.shape == b.shape == (1, 3, 48, 80)
    torch.testing.assert_close(b[..., 1:, 1:], a[..., :-1, :-1], rtol=1e-5, atol=1e-5)
    # op4ksr writes the key, and a saved partitioned VAE reloads partitioned
    part.save_pretrained(tmp_path / "vae")
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["partitioned_decode"] is True
    assert load_part("vae", tmp_path / "vae").decoder.partitioned
    with pytest.raises(ValueError, match="stride 2"):
        F16AutoencoderKL(**TINY, stride=1, partitioned_decode=True)


def test_missing_partitioned_key_means_ultraflux_default_only_for_foreign_f16_configs():
    base = {**TINY, "stride": 2}
    assert F16AutoencoderKL.from_config({**base, "_class_name": "AutoencoderKL"}).decoder.partitioned
    # op4ksr's own configs without the key (older models, the bundled compact one): plain tail
    assert not F16AutoencoderKL.from_config({**base, "_class_name": "F16AutoencoderKL"}).decoder.partitioned
    assert not F16AutoencoderKL.from_config({**base, "_class_name": "AutoencoderKL", "stride": 1}).decoder.partitioned
    assert not F16AutoencoderKL.from_config({**base, "_class_name": "AutoencoderKL",
                                             "partitioned_decode": False}).decoder.partitioned
