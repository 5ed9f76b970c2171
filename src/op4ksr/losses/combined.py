"""The weighted sum of a stage's registered losses of one kind (see :mod:`op4ksr.losses.base`).

``ImageLosses`` holds the image-space terms every training stage shares (MSE, L1, LPIPS, DISTS,
Haar wavelet, the periodicity loss L_AP, the token-grid loss, and any loss registered later),
each switched off by a zero weight (its backbone is then never built). It returns the weighted
sum and the unweighted terms for logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from op4ksr.losses.registry import build_losses, split_table


class WeightedLosses(nn.Module):
    """The losses of ``kind`` with weight > 0, as children named by their loss name."""

    def __init__(self, weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None, *,
                 kind: str) -> None:
        super().__init__()
        built = build_losses(weights, options, kind=kind)
        self.kind = kind
        self.weights = {name: float(weights[name]) for name in built}  # summation order
        for name, module in built.items():
            self.add_module(name, module)

    def __len__(self) -> int:
        return len(self.weights)

    def terms(self, *inputs: Any) -> dict[str, torch.Tensor]:
        """Each built loss on ``inputs``, unweighted, in summation order."""
        return {name: self._modules[name](*inputs) for name in self.weights}

    def add_terms(self, loss: torch.Tensor, logs: dict[str, float], terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``loss`` plus each weighted term, one after the other; the unweighted values go to ``logs``."""
        for name, value in terms.items():
            logs[name] = float(value.detach())
            loss = loss + self.weights[name] * value
        return loss


class ImageLosses(WeightedLosses):
    """The image terms. ``ImageLosses(weights, options)`` or the flat ``[loss]`` form
    ``ImageLosses(mse=0.0, token_grid=10.0, token_grid_window=2)``; a loss not named weighs 0."""

    def __init__(self, weights: Mapping[str, float] | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None, **table: Any) -> None:
        flat_weights, flat_options = split_table(table)
        weights = {**(weights or {}), **flat_weights}
        options = {name: {**(options or {}).get(name, {}), **flat_options.get(name, {})}
                   for name in {*(options or {}), *flat_options}}
        super().__init__(weights, options, kind="image")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.terms(pred, target)
        total = sum((self.weights[k] * v for k, v in terms.items()), pred.new_zeros(()))
        return total, {k: float(v.detach()) for k, v in terms.items()}
