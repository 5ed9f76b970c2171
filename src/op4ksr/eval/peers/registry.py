"""A small registry of super-resolution methods for benchmarks (timm's ``create_model`` shape).

A method is named by a spec string ``NAME[:ARG]``; ``create_method(spec)`` returns an
:class:`SRMethod`: ``method(lr)`` maps ``[B,3,h,w]`` in [0,1] to ``[B,3,s·h,s·w]`` in [0,1]
(float32, on ``lr``'s device), with ``method.name``, ``method.scale``, ``method.device`` and
``method.close()`` (also a context manager).

Built in:

* ``bicubic[:SCALE]`` — PyTorch bicubic (a = −0.75, ``align_corners=False``,
  ``antialias=False``: the classic upsampling kernel), clamped to [0,1] because the kernel
  overshoots at edges.
* ``lanczos[:SCALE]`` — Pillow's LANCZOS (a = 3) per channel on float ("F" mode) images, so
  there is no 8-bit rounding; clamped to [0,1]. Runs on the CPU.
* ``op4ksr[:MODEL]`` / ``op4ksr-tiled[:MODEL]`` — :func:`op4ksr.models.loading.load_pipeline`
  (``MODEL``: a preset name or a model folder; default the bundled model), patch-free or the
  tiled baseline (``pipe(lr, tiled=True)``).
* ``realesrgan[:WEIGHTS]`` — Real-ESRGAN x4plus (:mod:`op4ksr.eval.peers.realesrgan`).

Adding a method is a few lines::

    import torch.nn.functional as F
    from op4ksr.eval.peers import SRMethod, create_method, register_method

    @register_method("nearest")
    class Nearest(SRMethod):
        def __init__(self, arg=None, *, device="auto", scale=4):
            super().__init__(name="nearest", scale=int(arg or scale), device=device)

        def upscale(self, lr):
            return F.interpolate(lr, scale_factor=self.scale, mode="nearest")

    method = create_method("nearest:2")

Any callable ``factory(arg: str | None, *, device, **options) -> SRMethod`` can be registered;
``arg`` is the text after the first ``:`` (so Windows paths with drive letters survive).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from op4ksr.utils.device import resolve_device

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

MethodFactory = Callable[..., "SRMethod"]
_F = TypeVar("_F", bound=MethodFactory)

_METHODS: dict[str, MethodFactory] = {}


class SRMethod(ABC):
    """One upscaler; subclasses implement :meth:`upscale` on a float32 tensor on ``self.device``."""

    def __init__(self, *, name: str, scale: int, device: str | torch.device = "auto") -> None:
        if int(scale) != scale or scale < 1:
            raise ValueError(f"{name}: scale must be a positive integer, got {scale!r}")
        self.name = name
        self.scale = int(scale)
        self.device = resolve_device(device)

    @abstractmethod
    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        """[B,3,h,w] float32 on ``self.device`` → [B,3,s·h,s·w]."""

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"{self.name}: expected an RGB batch [B,3,h,w], got shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise ValueError(f"{self.name}: expected a float tensor in [0,1], got {lr.dtype}")
        b, _, h, w = lr.shape
        out = self.upscale(lr.to(self.device, torch.float32))
        expected = (b, 3, h * self.scale, w * self.scale)
        if tuple(out.shape) != expected:
            raise RuntimeError(f"{self.name}: produced shape {tuple(out.shape)}, expected {expected}")
        return out.to(lr.device, torch.float32)

    def close(self) -> None:
        """Release the model; GPU caches are emptied so the next method starts clean."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, scale={self.scale}, device={str(self.device)!r})"


def register_method(name: str) -> Callable[[_F], _F]:
    """Decorator: register ``factory`` under ``name`` (no ``:``; each name once)."""
    if not name or ":" in name:
        raise ValueError(f"method name {name!r} must be non-empty and contain no ':'")

    def decorator(factory: _F) -> _F:
        if name in _METHODS and _METHODS[name] is not factory:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = factory
        return factory

    return decorator


def list_methods() -> list[str]:
    return sorted(_METHODS)


def parse_method_spec(spec: str) -> tuple[str, str | None]:
    """``"op4ksr:/models/x"`` → ``("op4ksr", "/models/x")``; ``"bicubic"`` → ``("bicubic", None)``."""
    name, sep, arg = spec.partition(":")
    if sep and not arg:
        raise ValueError(f"method spec {spec!r} has an empty argument after ':'")
    return name, (arg if sep else None)


def create_method(spec: str, *, device: str | torch.device = "auto", **options: Any) -> SRMethod:
    """Build the method named by ``spec`` (``NAME[:ARG]``); ``options`` go to its factory."""
    name, arg = parse_method_spec(spec)
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    try:
        return _METHODS[name](arg, device=device, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ValueError(f"method {name!r} does not take option(s) {sorted(options)}") from None
        raise


def _scale_from(name: str, arg: str | None, scale: int) -> int:
    if arg is None:
        return scale
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"{name}: argument must be an integer scale, got {arg!r}") from None


@register_method("bicubic")
class Bicubic(SRMethod):
    """PyTorch bicubic, ``antialias=False`` (upsampling needs no antialiasing), clamped to [0,1]."""

    def __init__(self, arg: str | None = None, *, device: str | torch.device = "auto", scale: int = 4) -> None:
        super().__init__(name="bicubic", scale=_scale_from("bicubic", arg, scale), device=device)

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False, antialias=False)
        return out.clamp_(0, 1)


@register_method("lanczos")
class Lanczos(SRMethod):
    """Pillow LANCZOS per channel in float ("F" mode): no 8-bit rounding; clamped to [0,1]. CPU only."""

    def __init__(self, arg: str | None = None, *, device: str | torch.device = "cpu", scale: int = 4) -> None:
        # Pillow works on host memory; other devices would only add copies.
        super().__init__(name="lanczos", scale=_scale_from("lanczos", arg, scale), device="cpu")

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        b, c, h, w = lr.shape
        size = (w * self.scale, h * self.scale)  # Pillow sizes are (width, height)
        planes = lr.detach().cpu().numpy().astype(np.float32, copy=False)
        out = np.empty((b, c, size[1], size[0]), dtype=np.float32)
        for i in range(b):
            for ch in range(c):
                image = Image.fromarray(np.ascontiguousarray(planes[i, ch]))  # float32 → mode "F"
                out[i, ch] = np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
        return torch.from_numpy(out).clamp_(0, 1)


class OP4KSRMethod(SRMethod):
    """The op4ksr pipeline, patch-free or (``tiled=True``) the tiled baseline."""

    def __init__(self, arg: str | None = None, *, device: str | torch.device = "auto",
                 dtype: str | torch.dtype | None = None, tiled: bool = False, grid_fix: str | None = None,
                 color_fix: str | None = None, fidelity: float | None = None, name: str | None = None) -> None:
        from op4ksr.models.loading import load_pipeline  # heavy: diffusers

        self.pipe: Any = load_pipeline(arg, device=device, dtype=dtype)
        self.tiled = tiled
        self.grid_fix = grid_fix  # None: the model's own setting (also for the two below)
        self.color_fix = color_fix
        self.fidelity = fidelity
        name = name or ("op4ksr-tiled" if tiled else "op4ksr")
        super().__init__(name=name, scale=self.pipe.scale, device=self.pipe.device)

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        if self.pipe is None:
            raise RuntimeError(f"{self.name}: method was closed")
        overrides = {k: v for k, v in (("color_fix", self.color_fix), ("fidelity", self.fidelity)) if v is not None}
        return self.pipe(lr, tiled=self.tiled, grid_fix=self.grid_fix, **overrides)

    def close(self) -> None:
        self.pipe = None
        super().close()


@register_method("op4ksr")
def _op4ksr(arg: str | None = None, *, device: str | torch.device = "auto", **options: Any) -> OP4KSRMethod:
    return OP4KSRMethod(arg, device=device, **options)


@register_method("op4ksr-nogridfix")
def _op4ksr_no_grid_fix(arg: str | None = None, *, device: str | torch.device = "auto", **options: Any) -> OP4KSRMethod:
    """The model with its token-harmonic notch off: what the network alone produces."""
    return OP4KSRMethod(arg, device=device, grid_fix="none", name="op4ksr-nogridfix", **options)


@register_method("op4ksr-raw")
def _op4ksr_raw(arg: str | None = None, *, device: str | torch.device = "auto", **options: Any) -> OP4KSRMethod:
    """The network's own output: colour anchor and notch off (the compensation, if any, on)."""
    return OP4KSRMethod(arg, device=device, grid_fix="none", color_fix="none", name="op4ksr-raw", **options)


@register_method("op4ksr-fidelity0")
def _op4ksr_fidelity0(arg: str | None = None, *, device: str | torch.device = "auto", **options: Any) -> OP4KSRMethod:
    """The model as configured but with the high-frequency compensation off (the decoder alone)."""
    return OP4KSRMethod(arg, device=device, fidelity=0.0, name="op4ksr-fidelity0", **options)


@register_method("op4ksr-tiled")
def _op4ksr_tiled(arg: str | None = None, *, device: str | torch.device = "auto", **options: Any) -> OP4KSRMethod:
    return OP4KSRMethod(arg, device=device, tiled=True, **options)
