"""Test doubles for code that drives a pipeline (CLI, Ray path, web server) without a model.

Importable from every test as ``doubles`` (``pythonpath = ["tests"]`` in pyproject.toml); not
shipped in the wheel.

:class:`InterpolationPipeline` honours the ``OP4KSRPipeline`` contract (``pipe(images,
tiled=False)``, ``scale``, ``device``, ``dtype``, ``check_fits``, ``to``) with a plain
bicubic resize, so file handling can be tested fast and exactly. ``write_bad_files`` makes
the damaged inputs a batch must survive; ``hf_cache_snapshot`` lays a folder out as the
Hugging Face cache does (symlinks into blobs/). Not for real upscaling.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F


class InterpolationPipeline:
    """Bicubic ×scale with the pipeline's attributes; records each call's input shape."""

    def __init__(
        self,
        scale: int = 4,
        dtype: torch.dtype = torch.float32,
        *,
        nan_in_half: bool = False,
        max_output_pixels: int | None = None,
        delay_s: float = 0.0,
    ):
        self.scale = scale
        self.device = torch.device("cpu")
        self.dtype = dtype
        self.nan_in_half = nan_in_half  # mimic older GPUs whose fp16 overflows
        self.max_output_pixels = max_output_pixels  # mimic the memory planner's refusal
        self.delay_s = delay_s
        self.calls: list[tuple[int, ...]] = []

    def to(self, dtype: torch.dtype) -> InterpolationPipeline:
        self.dtype = dtype
        return self

    def check_fits(self, height: int, width: int) -> None:
        from op4ksr.api import memory_plan_error

        if self.max_output_pixels is not None and height * width > self.max_output_pixels:
            raise memory_plan_error()(
                f"{width}×{height} output needs more than the {self.max_output_pixels:,}-pixel budget"
            )

    def __call__(self, images: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        self.calls.append(tuple(images.shape))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = F.interpolate(images.float(), scale_factor=self.scale, mode="bicubic", align_corners=False)
        out = out.clamp(0.0, 1.0)
        if self.nan_in_half and self.dtype != torch.float32:
            out = out.clone()
            out[..., 0, 0] = float("nan")
        return out


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` but holds no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write the damaged inputs a batch must survive; returns {file name: expected reason fragment}."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    full = folder / "_full.jpg"
    noisy.save(full, quality=90)
    body = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(body[: len(body) // 2])
    (folder / "notes.png").write_text("this is not an image\n", encoding="utf-8")
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(png_header_only(30000, 30000))
    (folder / "zero.png").write_bytes(png_header_only(0, 16))
    return {
        "truncated.jpg": "truncated",
        "notes.png": "not an image",
        "empty.png": "empty file",
        "huge.png": "exceeds the limit",
        "zero.png": "zero-sized",
    }


def hf_cache_snapshot(source: Path, cache: Path, repo_id: str, revision: str = "0" * 40) -> Path:
    """Store the files of folder ``source`` as the Hugging Face cache does: each file's bytes in
    ``models--OWNER--NAME/blobs/<sha256>``, and ``snapshots/<revision>/<path>`` a relative symlink
    to it. Returns the snapshot folder."""
    import hashlib
    import os
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = blobs / digest
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
