"""Metric base class, registry, colour conversion and patch tiling shared by all metrics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

# BT.601 "MATLAB rgb2ycbcr" luma row (for R,G,B in [0,1]; gives Y in [16,235]).
_Y_COEFFS = (65.481, 128.553, 24.966)


class MetricUnavailable(RuntimeError):
    """A metric cannot run here; ``reason`` is one line for a report column (e.g. "pyiqa not installed")."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class PatchConfig:
    """Patch-based evaluation for deep-feature metrics (paper: crop 512, stride 512)."""

    size: int = 512
    stride: int = 512

    def __post_init__(self) -> None:
        if self.size <= 0 or self.stride <= 0:
            raise ValueError(f"patch size and stride must be positive, got {self.size}, {self.stride}")


class Metric:
    """Base class. Subclasses set ``name``, ``lower_better``, ``full_reference`` and implement ``compute``."""

    name: ClassVar[str]
    lower_better: ClassVar[bool]
    full_reference: ClassVar[bool]

    def __call__(self, images: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Score each image of ``images`` ``[B,3,H,W]`` in [0,1]; returns a float64 tensor ``[B]``."""
        _check_images(images, "images")
        if self.full_reference:
            if reference is None:
                raise ValueError(f"{self.name} is a full-reference metric: pass a reference")
            _check_images(reference, "reference")
            if reference.shape != images.shape:
                raise ValueError(
                    f"{self.name}: images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape"
                )
        with torch.no_grad():
            return self.compute(images, reference).to(torch.float64).cpu()

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


_REGISTRY: dict[str, type[Metric]] = {}


def register_metric(cls: type[Metric]) -> type[Metric]:
    if cls.name in _REGISTRY:
        raise ValueError(f"metric {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def metric_class(name: str) -> type[Metric]:
    """The class registered as ``name`` (its ``lower_better``/``full_reference``), without building it."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(available_metrics())}")
    return _REGISTRY[name]


def available_metrics() -> list[str]:
    """All metric names (whether or not their assets/extras are present here)."""
    return sorted(_REGISTRY)


def create_metric(name: str, **kwargs) -> Metric:
    """Build metric ``name``; raises :class:`MetricUnavailable` (with the reason) when it cannot run."""
    return metric_class(name)(**kwargs)


def metric_status(name: str, **kwargs) -> str | None:
    """``None`` when ``name`` can be created here, else the one-line reason it cannot."""
    from op4ksr.assets import AssetMissingError

    try:
        create_metric(name, **kwargs)
    except MetricUnavailable as exc:
        return exc.reason
    except AssetMissingError as exc:
        return str(exc)
    return None


def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a tensor [B,3,H,W] in [0,1], got {shape}")


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """``round(255·clamp(x,0,1))`` as float64 in [0,255] (what an 8-bit PNG stores)."""
    return torch.round(images.to(torch.float64).clamp(0, 1) * 255)


def rgb_to_y(images_255: torch.Tensor) -> torch.Tensor:
    """BT.601 MATLAB ``rgb2ycbcr`` luma of ``[B,3,H,W]`` in [0,255] -> ``[B,H,W]`` in [16,235], float64."""
    w = torch.tensor(_Y_COEFFS, dtype=torch.float64, device=images_255.device).view(1, 3, 1, 1)
    return 16.0 + (images_255.to(torch.float64) * w).sum(dim=1) / 255.0


def shave(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on every side of the last two dimensions."""
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    if border == 0:
        return x
    if x.shape[-2] <= 2 * border or x.shape[-1] <= 2 * border:
        raise ValueError(f"image {tuple(x.shape[-2:])} too small to shave a {border}-pixel border")
    return x[..., border:-border, border:-border]


def patch_boxes(height: int, width: int, patch: PatchConfig) -> list[tuple[int, int, int, int]]:
    """``(top, left, h, w)`` crops tiling the image; the last crop in each axis ends at the border."""

    def starts(length: int) -> list[int]:
        if length <= patch.size:
            return [0]
        out = list(range(0, length - patch.size + 1, patch.stride))
        if out[-1] + patch.size < length:
            out.append(length - patch.size)
        return out

    ph, pw = min(patch.size, height), min(patch.size, width)
    return [(t, l, ph, pw) for t in starts(height) for l in starts(width)]


def iter_patches(x: torch.Tensor, patch: PatchConfig) -> Iterator[torch.Tensor]:
    for t, l, h, w in patch_boxes(x.shape[-2], x.shape[-1], patch):
        yield x[..., t : t + h, l : l + w]
