"""Metrics computed by other code: the inspector's periodicity score and pyiqa models (extra ``[iqa]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch

from op4ksr.eval.metrics.base import Metric, MetricUnavailable, iter_patches, register_metric
from op4ksr.eval.metrics.deep import _PatchedFR


@register_metric
class Periodicity(Metric):
    """The inspector's periodic-artifact (grid) score, per image; lower = fewer grid artifacts."""

    name = "periodicity"
    lower_better = True
    full_reference = False

    def __init__(self, **grid_kwargs) -> None:
        try:
            from op4ksr.eval.diagnostics.inspector import grid_score
        except ImportError as exc:
            raise MetricUnavailable(self.name, f"inspector not available ({exc})") from None
        self._grid_score = grid_score
        self._kwargs = grid_kwargs

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        return torch.tensor([float(self._grid_score(img[None], **self._kwargs)) for img in images], dtype=torch.float64)


@register_metric
class Periodicity16(Periodicity):
    """The same score at the latent-pixel period (16 px = F16 VAE stride): a DiT SR model's
    second periodic artifact, invisible to the 32-px score (its exclusive harmonics are the odd
    multiples of 1/16 cycle per pixel, which are even multiples of 1/32)."""

    name = "periodicity16"

    def __init__(self, **grid_kwargs) -> None:
        super().__init__(**{"period": 16, **grid_kwargs})


PYIQA_WEIGHTS_SUBDIR = "pyiqa"


class _PyIQAMetric(_PatchedFR):
    """A pyiqa metric built with ``pretrained=False`` and loaded from a local weight file.

    Weights: ``weights=PATH`` or the first ``*.safetensors``/``*.pth`` under
    ``cache_dir()/pyiqa/<name>/``. ``.pth`` files are read with ``torch.load(weights_only=True)``.
    pyiqa is never allowed to download anything.
    """

    pyiqa_name: ClassVar[str]
    lower_better = False
    channels_last = False

    def __init__(self, weights: str | os.PathLike | None = None, **kwargs) -> None:
        try:
            import pyiqa  # noqa: F401
        except ImportError:
            raise MetricUnavailable(self.name, "pyiqa not installed (pip install 'op4ksr[iqa]')") from None
        self.weights = Path(weights) if weights is not None else self._find_weights()
        if self.weights is None or not self.weights.is_file():
            from op4ksr.assets import cache_dir

            where = weights or cache_dir() / PYIQA_WEIGHTS_SUBDIR / self.name
            raise MetricUnavailable(self.name, f"no local weights ({where}); pass weights=PATH")
        super().__init__(**kwargs)

    def _find_weights(self) -> Path | None:
        from op4ksr.assets import cache_dir

        folder = cache_dir() / PYIQA_WEIGHTS_SUBDIR / self.name
        found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pth")) if folder.is_dir() else []
        return found[0] if found else None

    def _build(self) -> torch.nn.Module:
        import pyiqa

        metric = pyiqa.create_metric(self.pyiqa_name, as_loss=False, pretrained=False, device="cpu")
        if self.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(self.weights))
        else:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            state = state.get("params", state) if isinstance(state, dict) else state
        metric.net.load_state_dict(state)
        metric.eval()
        return _PyIQAAdapter(metric, self.full_reference)


class _PyIQAAdapter(torch.nn.Module):
    def __init__(self, metric: torch.nn.Module, full_reference: bool) -> None:
        super().__init__()
        self.metric, self.full_reference = metric, full_reference

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.metric(x, y) if self.full_reference else self.metric(x)
        return out.reshape(-1)


class _PyIQANoRef(_PyIQAMetric):
    full_reference = False

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        scores = [self.net(self._prepare(p), None).to(torch.float64) for p in iter_patches(images, self.patch)]
        return torch.stack(scores).mean(dim=0)


def _pyiqa_metric(name: str, pyiqa_name: str, base: type[_PyIQAMetric]) -> None:
    cls = type(name, (base,), {"name": name, "pyiqa_name": pyiqa_name, "__doc__": f"pyiqa {pyiqa_name}"})
    register_metric(cls)


_pyiqa_metric("topiq_fr", "topiq_fr", _PyIQAMetric)
for _name in ("topiq_nr", "topiq_iaa", "maniqa", "musiq", "clipiqa", "nima"):
    _pyiqa_metric(_name, _name, _PyIQANoRef)
