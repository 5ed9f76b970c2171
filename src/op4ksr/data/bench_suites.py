"""Benchmark suites in the paper's three shapes (Section 4, Table 2).

* ``syn``        — HR centre-cropped so its longer side is ``long_side`` (4096) and the shorter
                   side is a multiple of the scale; LR made by the degradation pipeline
                   (the 4KSR-Syn recipe). Files ``hr/NAME.png`` and ``lr/NAME.png``.
* ``realsquare`` — real inputs, ``size``×``size`` (1024): shorter side resized to ``size``
                   (Lanczos), then centre-cropped. Files ``lr/NAME.png``.
* ``realvary``   — real inputs with the longer edge resized to ``size``, aspect kept.

Every suite has ``manifest.json`` with the settings, the seed, and the sha256 of every source
and output file. Each image's degradation seed is derived from the suite seed and the source
file's *content* hash, so adding or renaming files does not change the others, and a rebuild
gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from op4ksr.data.imageio import decode_rgb, find_images
from op4ksr.io.images import ImageError, from_tensor, to_tensor
from op4ksr.utils.atomic import atomic_write_bytes, atomic_write_text

SUITES = ("syn", "mild", "clean", "jpeg", "realsquare", "realvary")
# "mild", "clean" and "jpeg" are paired suites like "syn" whose LR always comes from the preset of
# the same name: clean bicubic ×¼ with JPEG q60–90 on half of the images (the inputs people have
# who upscale clean images), clean bicubic ×¼ alone (the literature's LR), and JPEG q60 on all.
PAIRED_SUITES = {"syn": None, "mild": "mild", "clean": "clean", "jpeg": "jpeg"}  # kind → forced preset (None: --preset)


@dataclass(frozen=True)
class BenchConfig:
    long_side: int = 4096  # syn: HR longer side
    size: int = 1024  # realsquare: side; realvary: longer edge
    scale: int = 4  # syn: HR/LR ratio
    preset: str = "osediff"  # syn: degradation preset or .toml
    seed: int = 0


@dataclass
class BenchResult:
    manifest: Path
    entries: list[dict[str, Any]]
    skipped: list[dict[str, str]]


def derive_seed(seed: int, source_sha256: str) -> int:
    digest = hashlib.sha256(f"{seed}:{source_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2  # < 2**62, fits torch/numpy seeds


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Fixed compression settings and no metadata: the bytes depend on the pixels only.
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def syn_hr_crop(img: Image.Image, long_side: int, scale: int) -> Image.Image | None:
    """Centre crop with longer side ``long_side``, shorter side a multiple of ``scale``; None if too small."""
    w, h = img.size
    if max(w, h) < long_side:
        return None
    if w >= h:
        cw, ch = long_side, min(h, long_side)
    else:
        cw, ch = min(w, long_side), long_side
    cw, ch = cw - cw % scale, ch - ch % scale
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def real_square(img: Image.Image, size: int) -> Image.Image | None:
    w, h = img.size
    if min(w, h) < size:
        return None
    if min(w, h) != size:
        ratio = size / min(w, h)
        img = img.resize((max(size, round(w * ratio)), max(size, round(h * ratio))), Image.LANCZOS)
        w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def real_vary(img: Image.Image, size: int) -> Image.Image | None:
    w, h = img.size
    if max(w, h) < size:
        return None
    if max(w, h) == size:
        return img
    ratio = size / max(w, h)
    return img.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.LANCZOS)


def _unique_names(paths: list[Path]) -> list[str]:
    """File stems, disambiguated by a short path hash when two sources share a stem."""
    stems = [p.stem for p in paths]
    return [
        s if stems.count(s) == 1 else f"{s}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"
        for s, p in zip(stems, paths, strict=True)
    ]


def _write(path: Path, data: bytes, overwrite: bool) -> dict[str, Any]:
    atomic_write_bytes(path, data, overwrite=overwrite)
    return {"sha256": hashlib.sha256(data).hexdigest()}


def build_suite(
    kind: str,
    sources: list[str | Path],
    out: str | Path,
    config: BenchConfig | None = None,
    *,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """Build suite ``kind`` from the images under ``sources`` into folder ``out``."""
    if kind not in SUITES:
        raise ValueError(f"unknown suite {kind!r}; choose one of {SUITES}")
    config = config or BenchConfig()
    out = Path(out)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not overwrite:
        raise FileExistsError(f"{manifest_path}: exists (use --overwrite to rebuild)")
    pipe = None
    if kind in PAIRED_SUITES:
        from op4ksr.data.degradations import DegradationPipeline

        config = replace(config, preset=PAIRED_SUITES[kind] or config.preset)
        pipe = DegradationPipeline.from_preset(config.preset, scale=config.scale)
    report = on_progress or (lambda done, total: None)

    paths = find_images(sources)
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for i, (path, name) in enumerate(zip(paths, _unique_names(paths), strict=True)):
        report(i, len(paths))
        data = path.read_bytes()
        source_sha = hashlib.sha256(data).hexdigest()
        try:
            img = decode_rgb(data, str(path))
        except ImageError as exc:
            skipped.append({"source": str(path), "reason": f"unreadable image: {exc}"})
            continue
        entry: dict[str, Any] = {"name": name, "source": str(path), "source_sha256": source_sha}
        if kind in PAIRED_SUITES:
            hr = syn_hr_crop(img, config.long_side, config.scale)
            if hr is None:
                skipped.append({"source": str(path), "reason": f"{img.width}x{img.height}: longer side < {config.long_side}"})
                continue
            lr, record = _degrade(pipe, hr, derive_seed(config.seed, source_sha))
            entry["hr"] = {"file": f"hr/{name}.png", "width": hr.width, "height": hr.height,
                           **_write(out / "hr" / f"{name}.png", png_bytes(hr), overwrite)}
            entry["lr"] = {"file": f"lr/{name}.png", "width": lr.width, "height": lr.height,
                           **_write(out / "lr" / f"{name}.png", png_bytes(lr), overwrite)}
            entry["degradation"] = record
        else:
            made = real_square(img, config.size) if kind == "realsquare" else real_vary(img, config.size)
            if made is None:
                skipped.append({"source": str(path), "reason": f"{img.width}x{img.height}: smaller than {config.size}"})
                continue
            entry["lr"] = {"file": f"lr/{name}.png", "width": made.width, "height": made.height,
                           **_write(out / "lr" / f"{name}.png", png_bytes(made), overwrite)}
        entries.append(entry)
    report(len(paths), len(paths))

    settings = asdict(config)
    if kind not in PAIRED_SUITES:
        settings = {"size": config.size, "seed": config.seed}
    manifest = {"suite": kind, "settings": settings, "files": entries, "skipped": skipped}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n", overwrite=overwrite)
    return BenchResult(manifest_path, entries, skipped)


def _degrade(pipe: Any, hr: Image.Image, seed: int) -> tuple[Image.Image, dict[str, Any]]:
    lr, record = pipe.degrade_one(to_tensor(np.asarray(hr, dtype=np.uint8)), seed)
    arr = from_tensor(lr, np.uint8)
    rec = record.to_dict()
    # The quantisation tables are reproducible from the quality; keep the manifest readable.
    for part in (rec["stage1"], rec["final"]):
        part.pop("jpeg_qtable", None)
    return Image.fromarray(arr, "RGB"), rec


def verify_suite(folder: str | Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty list: the suite is intact)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    bad = []
    for entry in manifest["files"]:
        for part in ("hr", "lr"):
            if part in entry:
                f = folder / entry[part]["file"]
                if not f.exists() or hashlib.sha256(f.read_bytes()).hexdigest() != entry[part]["sha256"]:
                    bad.append(str(f))
    return bad
