"""op4ksr: one-step, patch-free 4K image super-resolution (OP4KSR).

The heavy parts (torch and the model code) are imported lazily so that ``import op4ksr`` and the
command line start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "upscale", "load_pipeline"]

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def upscale(image: Any, scale: int = 4, model: Any = None, **kwargs: Any) -> "Image.Image":
    """Upscale one image (PIL image, numpy array or path) and return a PIL image.

    ``model`` is ``None`` (the bundled compact model), a preset/directory name, or an already
    loaded :class:`op4ksr.models.pipeline.OP4KSRPipeline` (for repeated calls without reloading).
    """
    from op4ksr.api import upscale as _upscale

    return _upscale(image, scale=scale, model=model, **kwargs)


def load_pipeline(model: str | None = None, **kwargs: Any):
    """Load an :class:`~op4ksr.models.pipeline.OP4KSRPipeline` (``None`` = bundled compact model)."""
    from op4ksr.models.loading import load_pipeline as _load

    return _load(model, **kwargs)
