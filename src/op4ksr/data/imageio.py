"""Decoding for the data tools: bytes in, RGB out, with a one-line reason on failure.

Curation must turn any unreadable file into a rejected row, never a crash, so decoding errors
are normalised into :class:`UnreadableImage` with a short human reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})


class UnreadableImage(ValueError):
    """The file is not an image Pillow can fully decode; ``str(exc)`` is the reason."""


def find_images(sources: list[str | Path], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files given directly, plus image files found recursively under folders; sorted, unique, absolute."""
    found: set[Path] = set()
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found.update(p.resolve() for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return sorted(found)


def decode_rgb(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Fully decode ``data`` to an 8-bit RGB image with EXIF orientation applied."""
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning must not spam a million-file run; the error stays.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # truncated files fail here, not later
                img = ImageOps.exif_transpose(img)
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(img, dtype=np.float64)
                    scale = 65535.0 if arr.max() > 255 else 255.0
                    img = Image.fromarray((arr / scale * 255.0).round().clip(0, 255).astype(np.uint8))
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    # Composite on white so transparent pixels do not read as black texture.
                    rgba = img.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(background, rgba)
                return img.convert("RGB")
    except Image.UnidentifiedImageError:
        # Pillow's message names the in-memory buffer's address: keep the reason reproducible.
        raise UnreadableImage("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow signals corrupt data with OSError ("image file is truncated"), SyntaxError
        # (broken PNG chunks) or ValueError; UnidentifiedImageError is an OSError.
        reason = str(exc).replace(str(name), "").strip() or type(exc).__name__
        raise UnreadableImage(reason) from None


def read_rgb(path: str | Path) -> Image.Image:
    path = Path(path)
    return decode_rgb(path.read_bytes(), str(path))


def to_float_array(img: Image.Image) -> np.ndarray:
    """HxWx3 float32 in [0,1]."""
    return np.asarray(img, dtype=np.float32) / 255.0
