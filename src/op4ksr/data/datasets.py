"""Training/validation datasets: HR crops from image folders or a curation manifest, with
optional on-the-fly degradation to LR.

Randomness is derived from ``(seed, epoch, index)`` only, never from global or per-worker
state, so the same sample is produced whatever the number of DataLoader workers and whichever
worker fetches it. Validation mode uses centre crops, no augmentation, and a degradation seed
that ignores the epoch: the same pairs every time.

For GPU training, leave ``preset=None`` and apply :class:`~op4ksr.data.degradations.DegradationPipeline`
to the HR batch on the device instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from op4ksr.data.degradations import DegradationPipeline
from op4ksr.data.imageio import MAX_PIXELS, find_images, read_rgb
from op4ksr.io.images import ImageError, open_checked


@dataclass(frozen=True)
class DatasetConfig:
    crop_size: int = 512
    scale: int = 4
    train: bool = True  # False: deterministic centre crops, no flips/rotations
    flips: bool = True
    rotations: bool = True  # multiples of 90° (square crops only)
    preset: str | None = "osediff"  # degradation preset, .toml or mixture "a:w,b:w"; None yields HR only
    seed: int = 0
    # Training crops first downscale the photo by a factor drawn from this range (a region of
    # crop/factor pixels, resized to the crop), so that few crops repeat on a small corpus.
    scale_range: tuple[float, float] = (1.0, 1.0)
    cache_images: bool = False  # keep decoded photos in memory (small corpora, many epochs)

    def __post_init__(self) -> None:
        if self.crop_size % self.scale:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of scale {self.scale}")
        lo, hi = self.scale_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {self.scale_range}")


def image_sources(sources: list[str | Path]) -> list[Path]:
    """Image files from folders/files, or the kept rows of ``.jsonl`` curation manifests."""
    from op4ksr.data.curation import read_manifest

    paths: list[Path] = []
    plain: list[str | Path] = []
    for src in sources:
        if str(src).endswith(".jsonl") and Path(src).is_file():
            paths.extend(Path(r["path"]) for r in read_manifest(src, kept_only=True))
        else:
            plain.append(src)
    if plain:
        paths.extend(find_images(plain))
    return paths


class PairedImageDataset(Dataset):
    """Items: ``{"hr": [3,c,c], "lr": [3,c/s,c/s] (if a preset is set), "path": str, "index": int}``.

    Images smaller than the crop are left out at construction and listed in ``self.skipped``.
    """

    def __init__(self, sources: list[str | Path], config: DatasetConfig | None = None) -> None:
        self.config = config or DatasetConfig()
        self.paths: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        for path in image_sources(sources):
            try:
                with open_checked(path, MAX_PIXELS) as img:  # header only: cheap
                    w, h = img.size
            except ImageError as exc:
                self.skipped.append((path, f"unreadable: {exc}"))
                continue
            if min(w, h) < self.config.crop_size:
                self.skipped.append((path, f"{w}x{h} is smaller than the crop {self.config.crop_size}"))
                continue
            self.paths.append(path)
        self.degrade = (
            DegradationPipeline.from_preset(self.config.preset, scale=self.config.scale)
            if self.config.preset
            else None
        )
        self.epoch = 0
        self._cache: dict[int, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of each epoch so training crops differ between epochs."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def _rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.config.train else 0
        return np.random.default_rng(np.random.SeedSequence([self.config.seed, epoch, index]))

    def _image(self, index: int) -> torch.Tensor:
        if index in self._cache:
            return self._cache[index]
        img = torch.from_numpy(np.asarray(read_rgb(self.paths[index]), dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.config.cache_images:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int) -> dict[str, object]:
        cfg = self.config
        rng = self._rng(index)
        img = self._image(index)  # uint8 [3, H, W]
        h, w = img.shape[-2:]
        c = cfg.crop_size
        region = c
        if cfg.train and cfg.scale_range != (1.0, 1.0):
            factor = float(rng.uniform(*cfg.scale_range))
            region = min(int(round(c / factor)), h, w)
        if cfg.train:
            top, left = int(rng.integers(0, h - region + 1)), int(rng.integers(0, w - region + 1))
        else:
            top, left = (h - c) // 2, (w - c) // 2
        hr = img[:, top : top + region, left : left + region].float() / 255.0
        if region != c:
            hr = torch.nn.functional.interpolate(hr[None], size=(c, c), mode="bicubic", align_corners=False,
                                                 antialias=True)[0].clamp_(0.0, 1.0)
            hr = (hr * 255.0).round_() / 255.0  # an 8-bit photo, like the unscaled crops
        if cfg.train and cfg.flips and rng.uniform() < 0.5:
            hr = hr.flip(-1)
        if cfg.train and cfg.rotations:
            hr = torch.rot90(hr, int(rng.integers(0, 4)), dims=(-2, -1))
        item: dict[str, object] = {"hr": hr.contiguous(), "path": str(self.paths[index]), "index": index}
        if self.degrade is not None:
            lr, _ = self.degrade.degrade_one(hr.unsqueeze(0), int(rng.integers(0, 2**62)))
            item["lr"] = lr[0]
        return item
