"""Deep-feature full-reference metrics (LPIPS, LPIPS-VGG, DISTS), evaluated patch by patch."""

from __future__ import annotations

import os
from typing import ClassVar

import torch

from op4ksr.eval.metrics.base import Metric, PatchConfig, iter_patches, register_metric


class _PatchedFR(Metric):
    full_reference = True
    lower_better = True
    # Channels-last: 3x3 convolutions run ~1.3-1.8x faster on CPU, same values. Off for
    # third-party models that may .view() their activations.
    channels_last: ClassVar[bool] = True

    def __init__(self, patch: PatchConfig | None = None, device: str | torch.device | None = "auto") -> None:
        from op4ksr.utils.device import resolve_device

        self.patch = patch or PatchConfig()
        self.device = resolve_device(device)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net = self._build().to(self.device, memory_format=self.memory_format)

    def _build(self) -> torch.nn.Module:
        raise NotImplementedError

    def _prepare(self, patch: torch.Tensor) -> torch.Tensor:
        return patch.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)

    def compute(self, images: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        assert reference is not None
        scores = [
            self.net(self._prepare(a), self._prepare(b)).to(torch.float64)
            for a, b in zip(iter_patches(images, self.patch), iter_patches(reference, self.patch))
        ]
        return torch.stack(scores).mean(dim=0)


@register_metric
class LPIPSAlex(_PatchedFR):
    """LPIPS v0.1, AlexNet backbone (pyiqa's and the LPIPS package's default ``lpips``)."""

    name = "lpips"

    def __init__(self, weights: str | os.PathLike | None = None, **kwargs) -> None:
        self.weights = weights
        super().__init__(**kwargs)

    def _build(self) -> torch.nn.Module:
        from op4ksr.nets.perceptual import LPIPSNet

        return LPIPSNet("alexnet", self.weights)


@register_metric
class LPIPSVGG(LPIPSAlex):
    """LPIPS v0.1, VGG16 backbone."""

    name = "lpips_vgg"

    def _build(self) -> torch.nn.Module:
        from op4ksr.nets.perceptual import LPIPSNet

        return LPIPSNet("vgg16", self.weights)


@register_metric
class DISTS(_PatchedFR):
    """DISTS (Ding et al. 2020)."""

    name = "dists"

    def __init__(
        self,
        vgg_weights: str | os.PathLike | None = None,
        dists_weights: str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        self.vgg_weights, self.dists_weights = vgg_weights, dists_weights
        super().__init__(**kwargs)

    def _build(self) -> torch.nn.Module:
        from op4ksr.nets.perceptual import DISTSNet

        return DISTSNet(self.vgg_weights, self.dists_weights)
