"""Images shared by the data tests (a uniquely named module: `conftest` names collide across folders)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def blurred(rgb: np.ndarray, sigma: float) -> np.ndarray:
    out = np.stack([ndimage.gaussian_filter(rgb[..., c].astype(np.float64), sigma) for c in range(3)], -1)
    return out.round().clip(0, 255).astype(np.uint8)
