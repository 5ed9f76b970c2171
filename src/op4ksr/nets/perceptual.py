"""LPIPS and DISTS: the perceptual networks, shared by the metrics (``op4ksr.eval.metrics.deep``)
and the training losses (``op4ksr.losses.perceptual``), both of which import them from here.

Weights come from the offline assets ``vgg16`` / ``alexnet`` / ``dists``, whose recipes sit
beside this module (:mod:`op4ksr.nets.perceptual_assets`; ``op4ksr assets fetch NAME``); a
missing asset raises ``AssetMissingError`` naming that command. Inputs are RGB tensors ``[B,3,H,W]`` in ``[0,1]``; the networks are frozen
(``requires_grad=False``) but differentiable with respect to their inputs.

Definitions follow the papers' official code:
- LPIPS v0.1 (Zhang et al. 2018, ``lpips`` package): inputs mapped to ``[-1,1]``, then the
  ``ScalingLayer`` shift/scale; features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (VGG) or
  relu1..relu5 (AlexNet); unit-normalised over channels (eps 1e-10); squared difference;
  1x1 linear heads (no bias); spatial mean; sum over layers.
- DISTS (Ding et al. 2020, ``DISTS_pytorch``): ImageNet mean/std; VGG16 with every max-pool
  replaced by an L2 pooling (Hann window 3x3, stride 2); stages = input, relu1_2 .. relu5_3;
  texture (mean) and structure (covariance) terms weighted by the learned alpha/beta.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.nets import perceptual_assets as _recipes  # noqa: F401  (registers alexnet, vgg16, dists)

# VGG16 "features" configuration (torchvision): conv widths, "M" = 2x2 pooling.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Index (into the 13 convs) after whose ReLU each of the 5 LPIPS/DISTS taps is taken.
_VGG16_TAPS = (1, 3, 6, 9, 12)
VGG16_CHANNELS = (64, 128, 256, 512, 512)
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)

# LPIPS' ScalingLayer constants (inputs in [-1, 1]).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class L2Pool(nn.Module):
    """DISTS' L2 pooling: sqrt(hann3x3 * x^2), stride 2 (an anti-aliased replacement for max-pool)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # np.hanning(5)[1:-1] = [0.5, 1, 0.5]; outer product normalised to sum 1.
        a = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
        window = (a[:, None] * a[None, :]) / (a.sum() ** 2)
        self.channels = channels
        self.register_buffer("window", window.float()[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.window.to(x.dtype), stride=2, padding=1, groups=self.channels)
        return (out + 1e-12).sqrt()


class VGG16Features(nn.Module):
    """VGG16 convolutions returning the 5 ReLU taps; ``pool`` is ``"max"`` (LPIPS) or ``"l2"`` (DISTS)."""

    def __init__(self, pool: str = "max") -> None:
        super().__init__()
        if pool not in ("max", "l2"):
            raise ValueError(f"pool must be 'max' or 'l2', not {pool!r}")
        convs, pools, in_ch = [], [], 3
        for v in _VGG16_CFG:
            if v == "M":
                pools.append(nn.MaxPool2d(2, 2) if pool == "max" else L2Pool(in_ch))
            else:
                convs.append(nn.Conv2d(in_ch, int(v), 3, padding=1))
                in_ch = int(v)
        self.convs = nn.ModuleList(convs)
        self.pools = nn.ModuleList(pools)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, n_pool = [], 0
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i in _VGG16_TAPS:
                taps.append(x)
                if len(taps) < len(_VGG16_TAPS):
                    x = self.pools[n_pool](x)
                    n_pool += 1
        return taps


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet convolutions returning relu1..relu5 (LPIPS' "alex" taps)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(3, 64, 11, stride=4, padding=2),
                nn.Conv2d(64, 192, 5, padding=2),
                nn.Conv2d(192, 384, 3, padding=1),
                nn.Conv2d(384, 256, 3, padding=1),
                nn.Conv2d(256, 256, 3, padding=1),
            ]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            taps.append(x)
            if i < 2:  # max-pools follow relu1 and relu2 only
                x = F.max_pool2d(x, 3, 2)
        return taps


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _load_asset(name: str, user_path: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from op4ksr.assets import asset_path

    return load_file(str(asset_path(name, user_path)))


def _normalize_channels(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPSNet(nn.Module):
    """LPIPS v0.1 distance per image, ``[B]``; ``net`` is ``"vgg16"`` or ``"alexnet"``."""

    def __init__(self, net: str = "vgg16", weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if net == "vgg16":
            self.backbone: nn.Module = VGG16Features("max")
            channels = VGG16_CHANNELS
        elif net == "alexnet":
            self.backbone = AlexNetFeatures()
            channels = ALEXNET_CHANNELS
        else:
            raise ValueError(f"LPIPS net must be 'vgg16' or 'alexnet', not {net!r}")
        self.net = net
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in channels])
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.load_state_dict(_load_asset(net, weights))
        _freeze(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats_x = self.backbone(((x * 2 - 1) - self.shift) / self.scale)
        feats_y = self.backbone(((y * 2 - 1) - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, feats_x, feats_y):
            diff = (_normalize_channels(fx) - _normalize_channels(fy)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total

    def train(self, mode: bool = True) -> LPIPSNet:
        # Always frozen: dropout in LPIPS' heads is a training-time detail of the heads themselves.
        return super().train(False)


class DISTSNet(nn.Module):
    """DISTS distance per image, ``[B]`` (0 = identical)."""

    def __init__(
        self,
        vgg_weights: str | os.PathLike | None = None,
        dists_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.backbone = VGG16Features("l2")
        state = _load_asset("vgg16", vgg_weights)
        self.backbone.load_state_dict(
            {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        )
        ab = _load_asset("dists", dists_weights)
        self.chns = (3, *VGG16_CHANNELS)
        self.alpha = nn.Parameter(ab["alpha"].float())
        self.beta = nn.Parameter(ab["beta"].float())
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        _freeze(self)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Stage 0 is the raw [0,1] input, as in the official code (not the normalised one).
        return [x, *self.backbone((x - self.mean) / self.std)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, self.chns, dim=1)
        betas = torch.split(self.beta / w_sum, self.chns, dim=1)
        dist1 = dist2 = x.new_zeros(x.shape[0])
        for a, b, fx, fy in zip(alphas, betas, self._features(x), self._features(y)):
            mx = fx.mean(dim=(2, 3), keepdim=True)
            my = fy.mean(dim=(2, 3), keepdim=True)
            s1 = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            vx = ((fx - mx) ** 2).mean(dim=(2, 3), keepdim=True)
            vy = ((fy - my) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (fx * fy).mean(dim=(2, 3), keepdim=True) - mx * my
            s2 = (2 * cov + c2) / (vx + vy + c2)
            dist1 = dist1 + (a * s1).sum(dim=(1, 2, 3))
            dist2 = dist2 + (b * s2).sum(dim=(1, 2, 3))
        return 1 - (dist1 + dist2)

    def train(self, mode: bool = True) -> DISTSNet:
        return super().train(False)
