"""The data tools' reader (curation, benchmark suites, datasets, tiles, ``op4ksr degrade``):
image files → 8-bit RGB, built on :mod:`op4ksr.io.images`.

Opening and validation are io's (:func:`~op4ksr.io.images.open_checked`), and so is the error:
an unreadable file raises :class:`~op4ksr.io.images.ImageError` with a one-line reason, which
curation turns into a rejected row, never a crash. What differs from ``load_image`` is the
result: pixels only, 8 bits, RGB, transparency composited on white — what the quality scores,
crops and degradations work on.
"""

from __future__ import annotations

import errno
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from op4ksr.io.images import DECODE_ERRORS, DEFAULT_MAX_PIXELS, PHOTO_SUFFIXES, ImageError, open_checked

# Twice Pillow's warning threshold: where Pillow itself refuses, the data tools' limit since the start.
MAX_PIXELS = 2 * DEFAULT_MAX_PIXELS


def find_images(sources: list[str | Path], extensions: frozenset[str] = PHOTO_SUFFIXES, *,
                unusable: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files given directly, plus image files found recursively under folders; sorted, unique, absolute.

    Entries under a folder with an image extension that are not files (a broken symbolic link,
    a link loop, a FIFO or device) are appended to ``unusable`` as (path, reason), so that the
    caller reports them as ``op4ksr upscale`` does instead of dropping them without a word."""
    found: set[Path] = set()
    for src in sources:
        path = Path(src)
        if path.is_dir():
            for entry in path.rglob("*"):
                if entry.suffix.lower() not in extensions:
                    continue
                if entry.is_file():
                    found.add(entry.resolve())
                elif unusable is not None and not entry.is_dir():
                    unusable.append((entry, not_a_file_reason(entry)))
        elif path.is_file():
            found.add(path.resolve())
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return sorted(found)


def not_a_file_reason(path: Path) -> str:
    """Why ``path`` (which exists as a name) is no readable file, in upscale's words."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13
            return "symbolic link loop"
        except OSError as exc:
            return "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
    kind = stat.S_IFMT(path.stat().st_mode) if path.exists() else 0
    return {stat.S_IFIFO: "a FIFO (named pipe), not a file", stat.S_IFSOCK: "a socket, not a file",
            stat.S_IFCHR: "a device, not a file", stat.S_IFBLK: "a device, not a file"}.get(kind, "not a regular file")


def decode_rgb(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Fully decode a file's bytes to an 8-bit RGB image with EXIF orientation applied."""
    return _rgb8(open_checked(data, MAX_PIXELS, name=name))


def read_rgb(path: str | Path) -> Image.Image:
    """Fully decode the file at ``path`` to an 8-bit RGB image with EXIF orientation applied."""
    return _rgb8(open_checked(path, MAX_PIXELS))


def _rgb8(image: Image.Image) -> Image.Image:
    with image:
        try:
            with warnings.catch_warnings():
                # A decompression-bomb warning must not spam a million-file run; the limit is checked.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()  # truncated files fail here, not later
                img = ImageOps.exif_transpose(image)
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
        except Image.DecompressionBombError as exc:  # a plug-in checking frame sizes while decoding
            raise ImageError(f"too many pixels ({exc})") from None
        except DECODE_ERRORS as exc:
            raise ImageError(f"truncated or corrupt image data ({exc})") from None


def to_float_array(img: Image.Image) -> np.ndarray:
    """HxWx3 float32 in [0,1]."""
    return np.asarray(img, dtype=np.float32) / 255.0
