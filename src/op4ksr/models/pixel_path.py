"""The pixel path of the compact model (v2): SPAN at the LR size, guided by OP4KSR's latent.

The compact F16 decoder has a hard ceiling (docs/MODEL_CARD.md, "the decoder's best"), and
efficient SR networks that work at the LR resolution took GPU-weeks to train; so the compact
model draws its pixels with one of them and keeps the paper's path as a *global view*::

    LR ─► bicubic ×4 ─► F16 encoder ─► z_σ ─► ONE DiT step (whole image, RFR θ = 100) ─► ẑ₀ (at LR/4)
    │                                                                                    │
    │                                                       LatentFusion (zero-initialised)
    ▼                                                                                    ▼
    SPAN: conv_1 ──────────────────────────────────────────────────────────────(+)──► 6 blocks … ─► ×4 output

- :class:`LatentFusion` turns the DiT's output latent (16 channels at LR/4, each token having
  attended to the whole image) into a map at the LR size with SPAN's width, added to SPAN's stem.
  Its last convolution starts at zero, so an untrained fusion leaves SPAN exactly as it was:
  initialised from the official SPAN x4, the pipeline's output *is* SPAN's.
- Two weight sets, one knob: ``faithful`` (trained L1-led) and ``perceptual`` (LPIPS + GAN);
  ``fidelity`` f ∈ [0, 1] runs the network whose every weight is ``f·faithful + (1−f)·perceptual``
  (ESRGAN's network interpolation, as realesr-general-x4v3 ships its denoise strength): the same
  cost at every setting. The blended weights are made once per fidelity value and cached.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.models.modeling import ConfigModel, register_to_config
from op4ksr.models.span import SPAN, SPAN_IMG_RANGE, SPAN_RGB_MEAN

FIDELITY_ENDS = ("perceptual", "faithful")  # fidelity 0 and 1


class LatentFusion(nn.Module):
    """Normalised latent [B, C, h, w] → features [B, F, h·factor, w·factor] (zero at initialisation).

    Two 3×3 convs at the latent size, then a zero-initialised 1×1 conv to ``F·factor²`` channels
    and a pixel shuffle: nothing of the fusion runs at the LR size but the shuffle.
    """

    def __init__(self, latent_channels: int, feature_channels: int, hidden_channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.body = nn.Sequential(
            nn.Conv2d(latent_channels, hidden_channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.SiLU(),
        )
        self.out = nn.Conv2d(hidden_channels, feature_channels * factor * factor, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.out(self.body(latent)), self.factor)


class LatentGuidedSPANBranch(nn.Module):
    """One weight set: a SPAN and (optionally) the fusion of the latent into its stem."""

    def __init__(self, span_config: dict, latent_channels: int, fusion_channels: int, latent_factor: int,
                 use_latent: bool):
        super().__init__()
        self.span = SPAN(**span_config)
        self.fusion = (LatentFusion(latent_channels, span_config["feature_channels"], fusion_channels, latent_factor)
                       if use_latent else None)

    def forward(self, lr: torch.Tensor, latent: torch.Tensor | None) -> torch.Tensor:
        stem = None
        if self.fusion is not None:
            if latent is None:
                raise ValueError("this pixel path fuses the DiT's latent: pass it")
            stem = self.fusion(latent.to(lr.dtype))
        return self.span(lr, stem)


class LatentGuidedSPAN(ConfigModel):
    """The compact model's pixel path (module doc). ``forward(lr, latent, fidelity)`` → ×``upscale`` image.

    Args:
        feature_channels / num_blocks / upscale / rgb_mean / img_range: SPAN's (official x4: 48, 6, 4).
        latent_channels: channels of the DiT's latent (the VAE's, 16).
        latent_factor: LR pixels per latent pixel (the VAE's 16 / ``upscale`` = 4).
        fusion_channels: width of the fusion's convs at the latent size.
        use_latent: False builds SPAN alone (the ablation without OP4KSR's path).
    """

    @register_to_config
    def __init__(self, feature_channels: int = 48, num_blocks: int = 6, upscale: int = 4,
                 rgb_mean: tuple[float, ...] = SPAN_RGB_MEAN, img_range: float = SPAN_IMG_RANGE,
                 latent_channels: int = 16, latent_factor: int = 4, fusion_channels: int = 64,
                 use_latent: bool = True):
        super().__init__()
        span_config = {"feature_channels": feature_channels, "num_blocks": num_blocks, "upscale": upscale,
                       "rgb_mean": tuple(rgb_mean), "img_range": img_range}
        args = (span_config, latent_channels, fusion_channels, latent_factor, use_latent)
        self.faithful = LatentGuidedSPANBranch(*args)
        self.perceptual = LatentGuidedSPANBranch(*args)
        # (fidelity, versions of the ends' weights, blended copy); not a submodule: no state
        self._blend: tuple[float, tuple[int, ...], LatentGuidedSPANBranch] | None = None

    @property
    def upscale(self) -> int:
        return int(self.config.upscale)

    @property
    def uses_latent(self) -> bool:
        return bool(self.config.use_latent)

    @property
    def latent_factor(self) -> int:
        return int(self.config.latent_factor)

    def load_span(self, span_state: dict[str, torch.Tensor]) -> None:
        """Both ends start from the same SPAN weights (e.g. the converted official SPAN x4)."""
        for branch in (self.faithful, self.perceptual):
            branch.span.load_state_dict(span_state)
        self._blend = None

    def branch(self, fidelity: float) -> nn.Module:
        """The network for ``fidelity``: an end itself at 0 or 1, else the cached weight blend."""
        if fidelity >= 1.0:
            return self.faithful
        if fidelity <= 0.0:
            return self.perceptual
        # Any in-place change of an end's weights (training, load_state_dict) bumps its version.
        versions = tuple(p._version for p in self.parameters())
        if self._blend is None or self._blend[:2] != (fidelity, versions):
            blend = copy.deepcopy(self.faithful).requires_grad_(False)
            with torch.no_grad():
                for mixed, faithful, perceptual in zip(blend.parameters(), self.faithful.parameters(),
                                                       self.perceptual.parameters()):
                    mixed.copy_(torch.lerp(perceptual, faithful, fidelity))
            self._blend = (fidelity, versions, blend)
        return self._blend[2]

    def forward(self, lr: torch.Tensor, latent: torch.Tensor | None = None, fidelity: float = 1.0) -> torch.Tensor:
        if self.faithful.span.conv_1.weight.is_contiguous(memory_format=torch.channels_last):
            lr = lr.contiguous(memory_format=torch.channels_last)  # the layout of the weights (CPU)
        return self.branch(float(fidelity))(lr, latent)

    def _apply(self, fn, recurse=True):  # .to()/.half() invalidate the cached blend
        self._blend = None
        return super()._apply(fn, recurse)
