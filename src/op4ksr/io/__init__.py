"""Image I/O with metadata (``images``), batch planning/running (``batch``), Ray (``cluster``).

``images`` needs only numpy and Pillow at import; torch is imported where the pixels meet the
model (``op4ksr.api``) and Ray only by ``cluster``.
"""

from op4ksr.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageData,
    ImageError,
    load_image,
    save_image,
    to_pil,
)

__all__ = ["DEFAULT_MAX_PIXELS", "ImageData", "ImageError", "load_image", "save_image", "to_pil"]
