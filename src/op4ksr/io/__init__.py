"""Image reading and writing: files ↔ :class:`~op4ksr.io.images.ImageData` with their metadata
(``images``), arrays ↔ the model's tensors (``to_tensor``/``from_tensor``), and the reader's
limits (``limits``). Batches of files are :mod:`op4ksr.batch`, above :mod:`op4ksr.api`.

``images`` needs only numpy and Pillow at import; torch is imported inside ``to_tensor`` and
``from_tensor``, where the pixels meet the model. The names below are loaded on first use
(PEP 562), so ``op4ksr.io.limits`` stays importable without numpy/Pillow (the CLI's ``--help``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_MAX_PIXELS", "ImageData", "ImageError", "from_tensor", "load_image", "save_image", "to_pil",
           "to_tensor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("op4ksr.io.images"), name)
    raise AttributeError(f"module 'op4ksr.io' has no attribute {name!r}")
