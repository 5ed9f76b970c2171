"""Image quality metrics, pyiqa style: one metric, one class, one name, ``lower_better``.

    >>> metric = create_metric("psnr_y")              # crop_border defaults to the scale (4)
    >>> metric(sr, hr)                                 # [B,3,H,W] in [0,1] -> tensor [B]

Conventions (those of the SR literature, e.g. BasicSR / the MATLAB scripts):

- **PSNR-Y / SSIM-Y**: images are first quantised to 8 bits (``round(255·x)``, as when the SR
  result is saved as PNG), converted to Y with BT.601 "MATLAB ``rgb2ycbcr``"
  (``Y = 16 + 65.481 R + 128.553 G + 24.966 B``, R,G,B in [0,1], so Y ∈ [16, 235]), a border of
  ``crop_border`` pixels (default: the scale factor) is shaved, and all arithmetic is float64.
  PSNR uses peak 255. SSIM is Wang et al.'s: 11×11 Gaussian window, σ = 1.5, K1 = 0.01,
  K2 = 0.03, L = 255, "valid" filtering, mean of the SSIM map.
- **LPIPS / LPIPS-VGG / DISTS** (deep features, resolution-sensitive): patch-based evaluation on
  large images, as in the paper: non-overlapping ``512×512`` crops (stride 512; the last row
  and column of crops are moved inward to end at the border, so every pixel is covered and no
  padding is invented), the metric averaged over crops. Images no larger than a crop are
  evaluated whole. Configurable with ``patch=PatchConfig(size, stride)``.
- **NIQE**: BasicSR/MATLAB NIQE on the rounded Y channel, 96×96 blocks, two scales (MATLAB
  bicubic ×0.5 with antialiasing), pristine model from the ``niqe`` asset.
- **BRISQUE**: LIVE's BRISQUE (36 features on two scales, RBF-SVR) on the 8-bit luma
  (OpenCV's BT.601 grey), model from the optional ``brisque`` asset (GPL-3).
- **periodicity**: the inspector's grid score (``op4ksr.eval.diagnostics.inspector.grid_score``).
- **topiq_fr, topiq_nr, topiq_iaa, maniqa, musiq, clipiqa, nima**: through pyiqa (extra
  ``[iqa]``) with weights the user already has; otherwise :class:`MetricUnavailable` says why.

Full-reference metrics require ``reference``; no-reference metrics ignore it.
"""

from __future__ import annotations

from op4ksr.utils.plugins import import_package_modules

# Every module of this package registers its metrics on import: a new metric is one new file.
import_package_modules(__name__, exclude={"base"})

from op4ksr.eval.metrics.base import (
    Metric,
    MetricUnavailable,
    PatchConfig,
    available_metrics,
    create_metric,
    iter_patches,
    metric_class,
    metric_status,
    patch_boxes,
    quantize_8bit,
    register_metric,
    rgb_to_y,
    shave,
)
from op4ksr.eval.metrics.fidelity import ssim_map
from op4ksr.eval.metrics.nss import brisque_features, matlab_resize_matrix, niqe_score, rgb_to_grey_8bit

__all__ = [
    "Metric",
    "MetricUnavailable",
    "PatchConfig",
    "available_metrics",
    "brisque_features",
    "create_metric",
    "iter_patches",
    "matlab_resize_matrix",
    "metric_class",
    "metric_status",
    "niqe_score",
    "patch_boxes",
    "quantize_8bit",
    "register_metric",
    "rgb_to_grey_8bit",
    "rgb_to_y",
    "shave",
    "ssim_map",
]
