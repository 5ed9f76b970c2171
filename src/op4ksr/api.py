"""The Python API: ``op4ksr.upscale(...)`` and :class:`Upscaler` for repeated calls.

:class:`Upscaler` holds one loaded pipeline and does the per-image work that the CLI, the Ray
path and a web server all share: memory check, alpha handling, the model at its native scale,
a high-quality resize to the requested scale, NaN/Inf fallback to fp32, and writing the file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from op4ksr.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageData,
    ImageError,
    from_tensor,
    load_image,
    open_checked,
    save_image,
    to_pil,
    to_tensor,
)
from op4ksr.utils.errors import ModelLoadError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

# Below this upscaled alpha a pixel is treated as fully transparent when un-premultiplying
# (dividing by a near-zero alpha would only amplify noise in pixels nobody can see).
_ALPHA_EPS = 1.0 / 1024.0


@dataclass
class FileOutcome:
    """What ``Upscaler.upscale_file`` did for one file."""

    input_size: tuple[int, int]
    output_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # read_s, compute_s, write_s


def is_pipeline(model: Any) -> bool:
    """True for an already loaded pipeline (anything callable with a native ``scale``)."""
    return not isinstance(model, (str, os.PathLike)) and model is not None and callable(model) and hasattr(model, "scale")


def load_model(model: str | os.PathLike | None = None, *, device: str = "auto", dtype: str | None = None) -> Any:
    """Load a pipeline by name/folder (``None`` = the bundled compact model); one-line errors."""
    from op4ksr.models.loading import load_pipeline  # here, not at import: the CLI plans before torch loads

    label = str(model) if model is not None else "compact"
    try:
        return load_pipeline(None if model is None else str(model), device=device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the user gets one line
        raise ModelLoadError(f"model {label!r}: {one_line(exc)}") from None


def memory_plan_error() -> type[BaseException]:
    """The planner's error class, imported when first needed (it pulls in torch)."""
    from op4ksr.models.planner import MemoryPlanError

    return MemoryPlanError


class Upscaler:
    """One loaded model, reused across calls.

    >>> up = Upscaler()                       # bundled compact model, device auto
    >>> big = up(Image.open("photo.jpg"), scale=2)
    >>> up.upscale_file("in.png", "out/in_x4.png", scale=4)

    ``model`` is ``None``/``"compact"``, a model folder, or an already loaded pipeline.
    After a non-finite result in half precision the pipeline is moved to float32 for good
    (older GPUs that overflow once will overflow again) and the outcome says so.
    """

    def __init__(self, model: Any = None, *, device: str = "auto", dtype: str | None = None,
                 color_fix: str | None = None, grid_fix: str | None = None, fidelity: float | None = None):
        started = time.perf_counter()
        self.pipe = model if is_pipeline(model) else load_model(model, device=device, dtype=dtype)
        self.load_seconds = time.perf_counter() - started  # imports of the model code included
        # None keeps the model's own setting (model_index.json); a value overrides it per call:
        # color_fix "none"/"wavelet"/"adain", grid_fix "none"/"notch", fidelity 0–1 (the
        # pixel-path blend: 0 = perceptual end, 1 = faithful end; or the compensation's strength).
        self.color_fix = color_fix
        self.grid_fix = grid_fix
        self.fidelity = fidelity

    @property
    def native_scale(self) -> int:
        return int(self.pipe.scale)

    def check_scale(self, scale: int) -> int:
        native = self.native_scale
        if int(scale) != scale or not 2 <= int(scale) <= native:
            raise ValueError(f"scale must be an integer from 2 to the model's native ×{native}, got {scale}")
        return int(scale)

    def check_fits(self, width: int, height: int) -> None:
        """Raise the planner's MemoryPlanError if this input cannot be upscaled on this device."""
        check = getattr(self.pipe, "check_fits", None)
        if check is not None:
            check(height * self.native_scale, width * self.native_scale)

    def upscale_data(self, data: ImageData, scale: int = 4, *, tiled: bool = False,
                     fidelity: float | None = None) -> ImageData:
        """Upscale pixels and alpha by ``scale``; metadata and kind carry over unchanged.
        ``fidelity`` overrides this upscaler's (and the model's) fidelity."""
        import torch
        import torch.nn.functional as F

        scale = self.check_scale(scale)
        self.check_fits(data.width, data.height)
        notes = list(data.notes)
        out_hw = (data.height * scale, data.width * scale)
        rgb = to_tensor(data.pixels)
        if rgb.shape[1] == 1:
            rgb = rgb.expand(-1, 3, -1, -1)
        alpha = None if data.alpha is None else torch.from_numpy(np.ascontiguousarray(data.alpha))[None, None].float()
        if alpha is not None:
            # Premultiplied colour: transparent pixels (often black underneath) then weigh
            # nothing when the model and the resize mix neighbours → no dark fringes.
            rgb = rgb * alpha
        out = self._run_model(rgb, tiled, notes, self.fidelity if fidelity is None else fidelity).float().cpu()
        if scale != self.native_scale:
            out = F.interpolate(out, size=out_hw, mode="bicubic", align_corners=False, antialias=True)
        alpha_np = None
        if alpha is not None:
            out = out.clamp(0.0, 1.0)
            up_alpha = F.interpolate(alpha, size=out_hw, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
            out = torch.where(up_alpha > _ALPHA_EPS, out / up_alpha.clamp_min(_ALPHA_EPS), torch.zeros_like(out))
            alpha_np = up_alpha[0, 0].numpy()
        pixels = from_tensor(out)  # clamped to [0, 1]
        if data.pixels.shape[-1] == 1:
            pixels = pixels.mean(axis=-1, keepdims=True)  # grey in → grey out
        result = data.with_pixels(np.ascontiguousarray(pixels, dtype=np.float32), alpha_np)
        result.notes = notes
        return result

    def _run_model(self, rgb: torch.Tensor, tiled: bool, notes: list[str], fidelity: float | None) -> torch.Tensor:
        import torch

        x = rgb.to(self.pipe.device)
        options: dict[str, Any] = {"tiled": tiled}
        if fidelity is not None:
            options["fidelity"] = fidelity
        if self.color_fix is not None:
            options["color_fix"] = self.color_fix
        if self.grid_fix is not None:
            options["grid_fix"] = self.grid_fix
        with torch.inference_mode():
            out = self.pipe(x, **options)
            if bool(torch.isfinite(out).all()):
                return out
            dtype = self.pipe.dtype
            if dtype in (torch.float16, torch.bfloat16):
                self.pipe.to(torch.float32)
                notes.append(f"non-finite output in {str(dtype).removeprefix('torch.')}: re-ran in float32")
                out = self.pipe(x, **options)
                if bool(torch.isfinite(out).all()):
                    return out
        raise ImageError("the model produced NaN/Inf values")

    def __call__(
        self, image: Any, scale: int = 4, *, tiled: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
        fidelity: float | None = None,
    ) -> Image.Image:
        """Upscale a PIL image, numpy array or path; returns a PIL image of the input's kind.

        PIL has no 16-bit colour mode: such inputs come back 8-bit here (``upscale_file``
        writes them as 16-bit PNG/TIFF).
        """
        data = load_image(image, max_pixels=max_pixels)
        return to_pil(self.upscale_data(data, scale, tiled=tiled, fidelity=fidelity))

    def upscale_file(
        self,
        source: str | os.PathLike,
        output: str | os.PathLike,
        *,
        scale: int = 4,
        fmt: str | None = None,
        quality: int | None = None,
        overwrite: bool = False,
        tiled: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        png_compression: int | None = None,
    ) -> FileOutcome:
        """Read ``source``, upscale, write ``output`` atomically (ICC/EXIF/alpha/bit depth kept).

        The output exists under its name only once fully written; raises ``ImageError``,
        ``FileExistsError`` or the planner's ``MemoryPlanError`` with a one-line reason.
        """
        clock = time.perf_counter
        start = clock()
        # The memory plan from the header, before decoding: a tiny PNG can declare 8000² pixels.
        with open_checked(source, max_pixels=max_pixels) as header:
            width, height = header.size
        self.check_fits(width, height)
        data = load_image(source, max_pixels=max_pixels)
        read_done = clock()
        result = self.upscale_data(data, scale, tiled=tiled)
        computed = clock()
        save_notes = save_image(result, output, fmt, quality=quality, overwrite=overwrite,
                                png_compression=png_compression)
        timings = {"read_s": read_done - start, "compute_s": computed - read_done, "write_s": clock() - computed}
        return FileOutcome(data.size, result.size, result.notes + save_notes, timings)


def upscale(
    image: Any,
    scale: int = 4,
    model: Any = None,
    *,
    device: str = "auto",
    dtype: str | None = None,
    tiled: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fidelity: float | None = None,
) -> Image.Image:
    """Upscale one image (PIL, numpy or path) → PIL image of the same kind, ``scale``× larger.

    ``fidelity`` (0–1): 0 = the perceptual end, 1 = the faithful end of the compact model's pixel
    path (between: the blend of the two networks); for a decoder model the high-frequency
    compensation's strength. ``None``: the model's.

    ``model``: ``None`` (bundled compact), a model folder, or a loaded pipeline / :class:`Upscaler`
    (pass one of those for repeated calls: a name is loaded again on every call).
    """
    upscaler = model if isinstance(model, Upscaler) else Upscaler(model, device=device, dtype=dtype)
    return upscaler(image, scale, tiled=tiled, max_pixels=max_pixels, fidelity=fidelity)

