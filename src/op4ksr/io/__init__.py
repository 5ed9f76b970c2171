"""Image I/O with metadata (``images``), batch planning/running (``batch``), Ray (``cluster``).

``images`` needs only numpy and Pillow at import; torch is imported where the pixels meet the
model (``op4ksr.api``) and Ray only by ``cluster``. The names below are loaded on first use
(PEP 562), so ``op4ksr.io.limits`` stays importable without numpy/Pillow (the CLI's ``--help``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_MAX_PIXELS", "ImageData", "ImageError", "load_image", "save_image", "to_pil"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("op4ksr.io.images"), name)
    raise AttributeError(f"module 'op4ksr.io' has no attribute {name!r}")
