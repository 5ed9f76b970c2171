"""Image loading and saving that keep what the user's file holds.

``load_image`` turns a file, PIL image or numpy array into :class:`ImageData`: float pixels in
[0, 1] (grey or RGB, EXIF orientation applied), alpha kept apart, and the metadata needed to
write an output *of the same kind*: bit depth, colour model, ICC profile bytes and EXIF (with the
orientation reset to 1, since the pixels are already upright). ``save_image`` writes it back
atomically (temporary ``.NAME.*.part.EXT`` file, then a rename; never overwriting unless asked).

Colour management: pixel values are passed through unchanged and the ICC profile bytes are
embedded again, so a Display-P3 or Adobe-RGB photo keeps its colours without gamut clipping.
The only conversion is CMYK → RGB for the model and back (through the embedded profile when
there is one), and every lossy step (a format that cannot hold the input's kind) is recorded
in ``ImageData.notes`` rather than done silently.

Pillow holds 16-bit data only for single-channel images, so 16-bit colour PNGs go through
``pypng`` and 16-bit colour TIFFs through ``tifffile``.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from op4ksr.utils.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

from op4ksr.io.limits import DEFAULT_MAX_PIXELS, check_max_pixels  # noqa: E402 - re-exported; defined without numpy

OUTPUT_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}
FORMAT_SUFFIX: dict[str, str] = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif"}
_FORMAT_ALIASES = {"jpeg": "jpg", "tif": "tiff"}
# Formats Pillow may lack a registered extension for, but which we can read when a plugin is present.
_EXTRA_IMAGE_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl"})
# The photo formats the data tools collect from folders (curation, benchmark suites, training
# sets): a corpus's GIFs, icons and documents stay out. A file named explicitly is always tried.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})

# zlib level 3 instead of Pillow's 6: a 4096² photo encodes several times faster for a ~15 %
# larger file; at 4K the PNG encoder would otherwise take about as long as the model on a GPU.
# zlib level 1: measured on a 4096² output (docs/PERFORMANCE.md, benchmarks/startup.py) it encodes
# in 1.7 s against 2.7 s at level 3 and 7.1 s at 6, for an 11 % larger file than level 3.
PNG_COMPRESS_LEVEL = 1

_EXIF_ORIENTATION = 0x0112
_ICC_TAG = 34675  # TIFF InterColorProfile
_pil_limit_lock = threading.Lock()
# What Pillow raises for damaged pixel data (truncated files, bad zlib streams, short reads).
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class ImageError(ValueError):
    """A file cannot be used; ``reason`` is a short phrase fit for a one-line report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ImageData:
    """Pixels plus what is needed to write an output of the same kind.

    ``pixels`` is float32 [H, W, C] in [0, 1] with C = 1 (grey) or 3 (RGB; CMYK inputs are
    held as RGB and converted back on save). ``alpha`` is float32 [H, W] or ``None``
    (straight, not premultiplied).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    bits: int = 8
    colour: str = "rgb"  # "grey" | "rgb" | "cmyk" (the kind to write back)
    palette: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None
    source_mode: str = ""
    source_format: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports it."""
        return self.width, self.height

    def with_pixels(self, pixels: np.ndarray, alpha: np.ndarray | None) -> ImageData:
        return replace(self, pixels=pixels, alpha=alpha, notes=list(self.notes))


def image_suffixes() -> frozenset[str]:
    """File extensions treated as images when scanning folders and globs (``op4ksr upscale``)."""
    from PIL import Image

    return frozenset(Image.registered_extensions()) | _EXTRA_IMAGE_SUFFIXES


def normalise_format(fmt: str) -> str:
    key = fmt.lower().lstrip(".")
    key = _FORMAT_ALIASES.get(key, key)
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    return key


# ----------------------------------------------------------------------------- tensors


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """An image array [H, W, C] or [H, W] → a [1, C, H, W] float32 tensor (the model's layout).

    uint8 is divided by 255 and uint16 by 65535; floats are cast to float32 as they are (not
    clamped). A C-contiguous float32 array is not copied: the tensor is a view of its memory
    (channels-last strides; ``.contiguous()`` for a packed [1, C, H, W] copy).
    """
    import torch

    values = np.asarray(array)
    if values.ndim == 2:
        values = values[..., None]
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(values.dtype)
    if top is not None:
        values = values.astype(np.float32) / top
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).permute(2, 0, 1)[None]


def from_tensor(tensor: torch.Tensor, dtype: type[np.generic] = np.float32) -> np.ndarray:
    """A [1, C, H, W] (or [C, H, W]) tensor → an [H, W, C] array on the CPU, clamped to [0, 1].

    ``dtype`` float32 keeps the values; uint8 and uint16 quantise them as :func:`save_image`
    does (round half to even).
    """
    image = tensor[0] if tensor.ndim == 4 else tensor
    values = image.detach().float().clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy()
    if dtype == np.float32:
        return values
    if dtype in (np.uint8, np.uint16):
        return _quantise(values, 16 if dtype == np.uint16 else 8)
    raise ValueError(f"from_tensor gives float32, uint8 or uint16, not {np.dtype(dtype)}")


# ----------------------------------------------------------------------------- orientation


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1–8 to an [H, W, ...] array (the same result as ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return np.rot90(array, k=2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


# ----------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _pillow_pixel_limit(limit: int | None) -> Iterator[None]:
    """Temporarily set Pillow's bomb limit (a module global) under a lock, restoring it after.

    Pillow raises at 2× its limit before we can read the size; our own ``max_pixels`` must win
    in both directions, so the header is opened with Pillow's check relaxed and ours applied.
    """
    from PIL import Image

    with _pil_limit_lock:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _register_optional_openers() -> None:
    """HEIC/HEIF via pillow-heif when installed (AVIF is built into Pillow ≥ 11)."""
    with contextlib.suppress(ImportError):
        import pillow_heif  # type: ignore[import-not-found]

        pillow_heif.register_heif_opener()


def _png_header_size(source: Path | bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, read directly: Pillow rejects 0-sized PNGs as unknown."""
    if isinstance(source, bytes):
        head = source[:24]
    else:
        with open(source, "rb") as fh:
            head = fh.read(24)
    if len(head) < 24 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def open_checked(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 name: str = "") -> Image.Image:
    """Open ``source`` lazily (header only) and check it before any pixel is decoded.

    ``source`` is a path or a whole file's bytes (``name``: that file's name, for the hints that
    depend on its extension). Raises :class:`ImageError` for a missing or empty file, an
    unrecognised format, a zero-sized image or one over ``max_pixels``.
    """
    from PIL import Image, UnidentifiedImageError

    check_max_pixels(max_pixels)
    opened: Path | io.BytesIO
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty file (0 bytes)")
        opened, suffix = io.BytesIO(source), Path(name).suffix.lower()
    else:
        source = Path(source)
        try:
            if source.stat().st_size == 0:
                raise ImageError("empty file (0 bytes)")
        except FileNotFoundError:
            raise ImageError("no such file") from None
        if source.is_dir():
            raise ImageError("is a folder, not an image (use --recursive to go into folders)")
        opened, suffix = source, source.suffix.lower()
    _register_optional_openers()
    try:
        # Size is read from the header; Pillow's bomb check is relaxed so ours decides.
        with _pillow_pixel_limit(None):
            image = Image.open(opened)
    except UnidentifiedImageError:
        header_size = _png_header_size(source)
        if header_size is not None and 0 in header_size:
            raise ImageError(f"zero-sized image ({header_size[0]}×{header_size[1]})") from None
        if suffix in {".heic", ".heif"}:
            raise ImageError("HEIC/HEIF needs the pillow-heif package (pip install pillow-heif)") from None
        raise ImageError("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"unreadable image header ({exc})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise ImageError(f"zero-sized image ({width}×{height})")
    try:
        check_pixel_count(width, height, max_pixels)
    except ImageError:
        image.close()
        raise
    return image


def check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    """ImageError when ``width × height`` exceeds ``max_pixels`` (files, PIL images and arrays alike)."""
    if width * height > max_pixels:
        raise ImageError(
            f"{width}×{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(raise it with --max-pixels)"
        )


def _exif_upright(image: Image.Image) -> tuple[int, bytes | None]:
    """(orientation, EXIF bytes with orientation reset to 1) — or (1, None) without EXIF."""
    try:
        exif = image.getexif()
    except Exception:  # malformed EXIF must not lose the picture  # noqa: BLE001
        return 1, None
    if not exif:
        return 1, None
    orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    if _EXIF_ORIENTATION in exif:
        exif[_EXIF_ORIENTATION] = 1
    try:
        return orientation, exif.tobytes()
    except Exception:  # noqa: BLE001
        return orientation, None


def _raw_mode(image: Image.Image) -> str:
    tile = getattr(image, "tile", None) or []
    if not tile:
        return ""
    args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
    return args[0] if isinstance(args, tuple) else str(args)


def _decode_png16(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit colour / grey+alpha PNG through pypng (Pillow would truncate it to 8 bits)."""
    try:
        import png  # type: ignore[import-untyped]
    except ImportError:
        raise ImageError("16-bit colour PNG needs the pypng package (pip install pypng)") from None
    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = int(info["planes"])
        data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except Exception as exc:  # pypng raises several types for damaged data  # noqa: BLE001
        raise ImageError(f"truncated or corrupt image data ({exc})") from None
    data = data.reshape(height, width, planes).astype(np.float32) / 65535.0
    if info.get("alpha"):
        return data[..., :-1], data[..., -1]
    return data, None


def _decode_tiff16(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import tifffile

    try:
        data = tifffile.imread(path, key=0)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"truncated or corrupt image data ({exc})") from None
    if data.dtype != np.uint16 or data.ndim != 3:
        raise ImageError(f"unsupported TIFF layout {data.shape} {data.dtype}")
    data = data.astype(np.float32) / 65535.0
    if data.shape[-1] in (2, 4):
        return data[..., :-1], data[..., -1]
    return data[..., :3], None


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    if icc:
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(image, src, srgb, outputMode="RGB")
            notes.append("CMYK converted to RGB for the model through its ICC profile, and back")
            return rgb
        except (ImageCms.PyCMSError, OSError) as exc:
            notes.append(f"CMYK ICC profile unusable ({exc}); naive CMYK→RGB conversion used")
    else:
        notes.append("CMYK without ICC profile: naive CMYK↔RGB conversion used (black separation not kept)")
    return image.convert("RGB")


def _pil_to_data(image: Image.Image, notes: list[str], icc: bytes | None) -> ImageData:
    """Decoded PIL image (any mode) → ImageData before orientation."""
    mode = image.mode
    palette = mode in ("P", "PA")
    if mode == "1":
        image, mode = image.convert("L"), "L"
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("LA" if mode == "L" else "RGBA")  # tRNS colour key → real alpha
        mode = image.mode
    elif mode in ("La", "RGBa", "RGBX", "YCbCr", "HSV"):
        image = image.convert({"La": "LA", "RGBa": "RGBA"}.get(mode, "RGB"))
        mode = image.mode
    if mode == "CMYK":
        rgb = _cmyk_to_rgb(image, icc, notes)
        return ImageData(np.asarray(rgb, dtype=np.float32) / 255.0, colour="cmyk")
    if mode in ("L", "LA"):
        arr = np.asarray(image, dtype=np.float32) / 255.0
        if mode == "LA":
            return ImageData(arr[..., :1], alpha=arr[..., 1], colour="grey", palette=palette)
        return ImageData(arr[..., None], colour="grey", palette=palette)
    if mode in ("RGB", "RGBA"):
        arr = np.asarray(image, dtype=np.float32) / 255.0
        alpha = arr[..., 3] if mode == "RGBA" else None
        return ImageData(arr[..., :3], alpha=alpha, colour="rgb", palette=palette)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(image).astype(np.float32)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError("32-bit integer image with values outside 0–65535 is not supported")
        return ImageData(arr[..., None] / 65535.0, bits=16, colour="grey")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageError("32-bit float image holds NaN or Inf")
        notes.append("32-bit float greyscale read as [0, 1] and written as 16-bit")
        return ImageData(np.clip(arr, 0.0, 1.0)[..., None], bits=16, colour="grey")
    raise ImageError(f"unsupported image mode {mode!r}")


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Load a path, PIL image or numpy array into :class:`ImageData` (orientation applied).

    numpy arrays: [H, W] or [H, W, 1|2|3|4] (the last channel of 2/4 is alpha), uint8, uint16
    or float in [0, 1]. Raises :class:`ImageError` with a one-line reason.
    """
    from PIL import Image

    check_max_pixels(max_pixels)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:  # the same limit as a file's header: before any conversion
            check_pixel_count(source.shape[1], source.shape[0], max_pixels)
        return _array_to_data(source)
    if isinstance(source, Image.Image):
        check_pixel_count(*source.size, max_pixels)
        return _load_pil(source, path=None)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        image = open_checked(path, max_pixels)
        with image:
            return _load_pil(image, path=path)
    raise TypeError(f"cannot load an image from {type(source).__name__}")


def _load_pil(image: Image.Image, path: Path | None) -> ImageData:
    notes: list[str] = []
    n_frames = int(getattr(image, "n_frames", 1) or 1)
    if n_frames > 1:
        notes.append(f"first frame of {n_frames} used")
    raw = _raw_mode(image)  # before getexif(), which may decode the image and drop the tile
    icc = image.info.get("icc_profile") or None
    orientation, exif = _exif_upright(image)
    fmt = image.format
    data: ImageData | None = None
    if path is not None and fmt == "PNG" and raw.endswith(";16B") and image.mode in ("RGB", "RGBA", "LA"):
        pixels, alpha = _decode_png16(path)
        data = ImageData(pixels, alpha=alpha, bits=16, colour="grey" if pixels.shape[-1] == 1 else "rgb")
    elif path is not None and fmt == "TIFF" and ";16" in raw and image.mode in ("RGB", "RGBA"):
        pixels, alpha = _decode_tiff16(path)
        data = ImageData(pixels, alpha=alpha, bits=16, colour="rgb")
    else:
        try:
            image.load()
        except DECODE_ERRORS as exc:
            raise ImageError(f"truncated or corrupt image data ({exc})") from None
        data = _pil_to_data(image, notes, icc)
    pixels = np.ascontiguousarray(apply_orientation(data.pixels, orientation))
    alpha = None if data.alpha is None else np.ascontiguousarray(apply_orientation(data.alpha, orientation))
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied (reset to 1 in the kept EXIF)")
    return replace(
        data,
        pixels=pixels,
        alpha=alpha,
        icc_profile=icc,
        exif=exif,
        source_mode=image.mode,
        source_format=fmt,
        notes=notes + data.notes,
    )


def _array_to_data(array: np.ndarray) -> ImageData:
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(f"array of shape {tuple(array.shape)} is not an image ([H, W] or [H, W, 1–4])")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"zero-sized image ({arr.shape[1]}×{arr.shape[0]})")
    if arr.dtype == np.uint8:
        bits, values = 8, arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        bits, values = 16, arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("array holds NaN or Inf")
        bits, values = 8, np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise ImageError(f"unsupported array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
    channels = values.shape[-1]
    alpha = values[..., -1] if channels in (2, 4) else None
    colour_channels = values[..., : (1 if channels <= 2 else 3)]
    return ImageData(
        np.ascontiguousarray(colour_channels),
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        bits=bits,
        colour="grey" if channels <= 2 else "rgb",
        source_mode=f"array{tuple(arr.shape[-1:])}{arr.dtype}",
    )


# ----------------------------------------------------------------------------- saving


def _quantise(values: np.ndarray, bits: int) -> np.ndarray:
    top = 65535.0 if bits == 16 else 255.0
    out = np.rint(np.clip(values, 0.0, 1.0) * top)
    return out.astype(np.uint16 if bits == 16 else np.uint8)


def output_plan(data: ImageData, fmt: str) -> tuple[str, int, bool, list[str]]:
    """What ``fmt`` can hold of ``data``: (colour, bits, keep_alpha, notes on what is lost)."""
    fmt = normalise_format(fmt)
    notes: list[str] = []
    colour, bits, keep_alpha = data.colour, data.bits, data.alpha is not None
    if colour == "cmyk" and fmt in ("png", "webp"):
        notes.append(f"{fmt} cannot hold CMYK: written as RGB (use --format tiff or jpg to keep CMYK)")
        colour = "rgb"
    if bits == 16 and fmt in ("jpg", "webp"):
        notes.append(f"{fmt} cannot hold 16 bits: written as 8-bit (use --format png or tiff)")
        bits = 8
    if keep_alpha and (fmt == "jpg" or colour == "cmyk"):
        notes.append(f"{fmt} cannot hold transparency: composited over white")
        keep_alpha = False
    if colour == "grey" and fmt == "webp":
        notes.append("webp has no greyscale: written as RGB")
        colour = "rgb"
    if data.palette:
        notes.append("palette image written as full colour (re-quantising would discard the new detail)")
    return colour, bits, keep_alpha, notes


def to_pil(data: ImageData) -> Image.Image:
    """ImageData → PIL image of the same kind (16-bit colour has no PIL mode: 8-bit then)."""
    from PIL import Image

    colour = "rgb" if data.colour == "cmyk" else data.colour
    bits = data.bits if colour == "grey" and data.alpha is None else 8
    pil = _build_pil(data, colour, bits, keep_alpha=data.alpha is not None)
    if data.colour == "cmyk":
        pil = _rgb_to_cmyk(pil, data.icc_profile)
    if data.icc_profile:
        pil.info["icc_profile"] = data.icc_profile
    if data.exif:
        pil.info["exif"] = data.exif
    assert isinstance(pil, Image.Image)
    return pil


def _build_pil(data: ImageData, colour: str, bits: int, keep_alpha: bool) -> Image.Image:
    from PIL import Image

    pixels = data.pixels
    if not keep_alpha and data.alpha is not None:
        a = data.alpha[..., None]
        pixels = pixels * a + (1.0 - a)  # over white
    if colour == "rgb" and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    if colour == "grey" and pixels.shape[-1] == 3:
        pixels = pixels.mean(axis=-1, keepdims=True)
    if colour == "grey" and bits == 16 and not keep_alpha:
        return Image.fromarray(_quantise(pixels[..., 0], 16))
    channels = [pixels] + ([data.alpha[..., None]] if keep_alpha and data.alpha is not None else [])
    stacked = _quantise(np.concatenate(channels, axis=-1), 8)
    mode = {("grey", False): "L", ("grey", True): "LA", ("rgb", False): "RGB", ("rgb", True): "RGBA"}[
        (colour, keep_alpha)
    ]
    return Image.fromarray(stacked[..., 0] if mode == "L" else stacked, mode=mode)


def _rgb_to_cmyk(image: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        from PIL import ImageCms

        with contextlib.suppress(ImageCms.PyCMSError, OSError):
            dst = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(image, srgb, dst, outputMode="CMYK")
    return image.convert("CMYK")


def _icc_colour_space(icc: bytes) -> str | None:
    from PIL import ImageCms

    try:
        return str(ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space).strip().upper()
    except (ImageCms.PyCMSError, OSError, AttributeError):
        return None


def icc_for_output(data: ImageData, colour: str) -> tuple[bytes | None, str | None]:
    """The profile to embed for an output of ``colour`` and a note when it differs from the input's.

    A profile only describes pixels of its own colour space: CMYK written as RGB gets sRGB
    (the space the conversion went to), and a profile that fits no longer is left out.
    """
    if not data.icc_profile:
        return None, None
    if data.colour == "cmyk" and colour == "rgb":
        from PIL import ImageCms

        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        return srgb, "CMYK ICC profile replaced by sRGB (the pixels were converted to sRGB)"
    space = _icc_colour_space(data.icc_profile)
    wanted = {"rgb": "RGB", "grey": "GRAY", "cmyk": "CMYK"}[colour]
    if space is None or space == wanted:
        return data.icc_profile, None  # unreadable profiles are kept as bytes: nothing is guessed
    return None, f"input ICC profile ({space}) does not describe {wanted} output: not embedded"


def _save_kwargs(fmt: str, data: ImageData, quality: int | None, png_compression: int | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if data.icc_profile:
        kwargs["icc_profile"] = data.icc_profile
    if data.exif:
        kwargs["exif"] = data.exif
    if fmt == "jpg":
        kwargs.update(quality=quality or 95, subsampling=0 if (quality or 95) >= 90 else 2)
    elif fmt == "webp":
        kwargs.update(quality=quality or 95, method=4)
    elif fmt == "png":
        kwargs.update(compress_level=check_png_compression(png_compression))
    elif fmt == "tiff":
        kwargs.update(compression="tiff_deflate")
    return kwargs


def check_png_compression(level: int | None) -> int:
    """The zlib level for PNG output (``None``: :data:`PNG_COMPRESS_LEVEL`); ValueError outside 0–9."""
    if level is None:
        return PNG_COMPRESS_LEVEL
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"--png-compression {level!r}: choose a zlib level from 0 (none, fastest) to 9 (smallest)")
    return level


def encode_image(data: ImageData, fmt: str, quality: int | None = None,
                 png_compression: int | None = None) -> tuple[bytes, list[str]]:
    """Encode ``data`` in ``fmt``; returns the file bytes and notes on anything the format lost.

    ``png_compression`` is the zlib level of PNG output (0–9, default :data:`PNG_COMPRESS_LEVEL`).
    """
    fmt = normalise_format(fmt)
    colour, bits, keep_alpha, notes = output_plan(data, fmt)
    icc, icc_note = icc_for_output(data, colour)
    notes += [icc_note] if icc_note else []
    data = replace(data, icc_profile=icc)
    colour_16 = bits == 16 and (colour == "rgb" or keep_alpha)
    if colour_16 and fmt == "png":
        return _encode_png16(data, colour, keep_alpha, check_png_compression(png_compression)), notes
    if colour_16 and fmt == "tiff":
        body, tiff_notes = _encode_tiff16(data, colour, keep_alpha)
        return body, notes + tiff_notes
    pil = _build_pil(data, "rgb" if colour == "cmyk" else colour, bits, keep_alpha)
    if colour == "cmyk":
        pil = _rgb_to_cmyk(pil, data.icc_profile)
    buffer = io.BytesIO()
    pil.save(buffer, format=OUTPUT_FORMATS[fmt], **_save_kwargs(fmt, data, quality, png_compression))
    return buffer.getvalue(), notes


def _encode_png16(data: ImageData, colour: str, keep_alpha: bool, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    import png

    pixels = data.pixels if colour == "grey" or data.pixels.shape[-1] == 3 else np.repeat(data.pixels, 3, -1)
    if colour == "grey" and pixels.shape[-1] == 3:
        pixels = pixels.mean(axis=-1, keepdims=True)
    planes = [pixels] + ([data.alpha[..., None]] if keep_alpha and data.alpha is not None else [])
    arr = _quantise(np.concatenate(planes, axis=-1), 16)
    height, width = arr.shape[:2]
    writer = png.Writer(
        width, height, greyscale=colour == "grey", alpha=keep_alpha, bitdepth=16, compression=level
    )
    raw = io.BytesIO()
    writer.write_array(raw, arr.reshape(-1))
    chunks = list(png.Reader(bytes=raw.getvalue()).chunks())
    extra: list[tuple[bytes, bytes]] = []
    if data.icc_profile:
        extra.append((b"iCCP", b"icc\x00\x00" + zlib.compress(data.icc_profile)))
    if data.exif:
        exif = data.exif[6:] if data.exif.startswith(b"Exif\x00\x00") else data.exif
        extra.append((b"eXIf", exif))
    out = io.BytesIO()
    png.write_chunks(out, [chunks[0], *extra, *chunks[1:]])  # after IHDR, before IDAT
    return out.getvalue()


def _encode_tiff16(data: ImageData, colour: str, keep_alpha: bool) -> tuple[bytes, list[str]]:
    import tifffile

    notes: list[str] = []
    pixels = data.pixels if data.pixels.shape[-1] == 3 or colour == "grey" else np.repeat(data.pixels, 3, -1)
    planes = [pixels] + ([data.alpha[..., None]] if keep_alpha and data.alpha is not None else [])
    arr = _quantise(np.concatenate(planes, axis=-1), 16)
    extratags = []
    if data.icc_profile:
        extratags.append((_ICC_TAG, "B", len(data.icc_profile), data.icc_profile, True))
    if data.exif:
        notes.append("EXIF is not written into 16-bit colour TIFF (ICC profile is kept)")
    out = io.BytesIO()
    tifffile.imwrite(
        out,
        arr if arr.shape[-1] > 1 else arr[..., 0],
        photometric="minisblack" if colour == "grey" else "rgb",
        extrasamples=("unassalpha",) if keep_alpha else None,
        compression="zlib",
        extratags=extratags,
    )
    return out.getvalue(), notes


def save_image(
    data: ImageData,
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    quality: int | None = None,
    overwrite: bool = False,
    png_compression: int | None = None,
) -> list[str]:
    """Encode and write ``data`` atomically; returns notes on anything the format lost.

    The file appears under its final name only once complete and synced; an existing file is
    never replaced unless ``overwrite`` (``FileExistsError`` otherwise).
    """
    path = Path(path)
    fmt = normalise_format(fmt or path.suffix or "png")
    body, notes = encode_image(data, fmt, quality, png_compression)
    with atomic_path(path, overwrite=overwrite) as tmp:
        write_temp_bytes(tmp, body)
    return notes


def write_temp_bytes(tmp: Path, body: bytes) -> None:
    """Write the encoded image into the temporary file (a seam tests use to stall a write)."""
    tmp.write_bytes(body)
