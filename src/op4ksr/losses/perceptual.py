"""LPIPS and DISTS as frozen training losses (the networks: :mod:`op4ksr.nets.perceptual`).

``lpips`` is on by default (weight 1, VGG16 as in the paper; ``lpips_net = "alexnet"`` is ~10×
cheaper on a CPU); ``dists`` is available and off. Both are frozen (``requires_grad=False``, always
in eval mode) but differentiable with respect to their inputs; their weights are offline assets
(``op4ksr assets fetch vgg16|alexnet|dists``), checked before training starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from op4ksr.losses.base import Loss, register_loss
from op4ksr.nets.perceptual import DISTSNet, LPIPSNet

LPIPS_NETS = ("vgg16", "alexnet")


@register_loss("lpips")
class LPIPSLoss(Loss):
    """Frozen LPIPS training loss: mean LPIPS over the batch (VGG16 backbone by default)."""

    default_weight = 1.0
    options: ClassVar[Mapping[str, Any]] = {"net": "vgg16"}
    order = 20

    def __init__(self, net: str = "vgg16", weights: str | os.PathLike | None = None, weight: float = 1.0) -> None:
        super().__init__()
        self.lpips = LPIPSNet(net, weights)
        self.weight = weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight * self.lpips(pred, target).mean()

    @classmethod
    def check(cls, options: Mapping[str, Any], *, weight: float, crop_size: int) -> None:
        if options["net"] not in LPIPS_NETS:
            raise ValueError(f"loss.lpips_net: {options['net']!r} is not vgg16 or alexnet")

    @classmethod
    def required_assets(cls, options: Mapping[str, Any]) -> list[str]:
        return [options["net"]]


@register_loss("dists")
class DISTSLoss(Loss):
    """Frozen DISTS training loss: mean DISTS over the batch."""

    order = 25

    def __init__(
        self,
        vgg_weights: str | os.PathLike | None = None,
        dists_weights: str | os.PathLike | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.dists = DISTSNet(vgg_weights, dists_weights)
        self.weight = weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight * self.dists(pred, target).mean()

    @classmethod
    def required_assets(cls, options: Mapping[str, Any]) -> list[str]:
        return ["vgg16", "dists"]
