"""Cut a photo corpus into fixed-size training tiles once, so that training reads small PNGs
instead of decoding a 5000-pixel JPEG for every crop.

Tiles sit on a regular grid (``stride`` apart, last row/column flush with the border) and are
named ``<source stem>-<sha8>_<top>_<left>.png``; ``tiles.jsonl`` records each tile's source,
box and sha256. Existing tiles are kept (a re-run does no work).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from op4ksr.data.imageio import read_rgb
from op4ksr.utils.atomic import atomic_path, atomic_write_text


@dataclass(frozen=True)
class TileSpec:
    size: int = 512
    stride: int = 512
    min_std: float = 2.0  # skip tiles that are (almost) one flat colour: nothing to learn there


def tile_boxes(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of a grid covering the image; the last row/column ends at the border."""
    if height < size or width < size:
        return []

    def starts(n: int) -> list[int]:
        s = list(range(0, n - size + 1, stride))
        if s[-1] != n - size:
            s.append(n - size)
        return s

    return [(top, left) for top in starts(height) for left in starts(width)]


def make_tiles(sources: list[Path], out_dir: Path, spec: TileSpec = TileSpec()) -> Iterator[dict]:
    """Write the tiles of every source image; yields one record per tile (also for existing ones)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        source = Path(source)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        array = np.asarray(read_rgb(source))
        h, w = array.shape[:2]
        for top, left in tile_boxes(h, w, spec.size, spec.stride):
            tile = array[top:top + spec.size, left:left + spec.size]
            if float(tile.std()) < spec.min_std:
                continue
            name = f"{source.stem}-{digest[:8]}_{top}_{left}.png"
            path = out_dir / name
            if not path.exists():
                with atomic_path(path) as tmp:
                    Image.fromarray(tile).save(tmp, format="PNG", compress_level=1)
            yield {"path": str(path), "source": str(source), "source_sha256": digest,
                   "box": [top, left, spec.size, spec.size]}


def write_tile_index(records: list[dict], out_dir: Path) -> Path:
    index = out_dir / "tiles.jsonl"
    atomic_write_text(index, "".join(json.dumps(r) + "\n" for r in records), overwrite=True)
    return index
