"""High-frequency compensation: the F16 decoder sees the bicubic-upscaled LR image.

The paper (Sec. 6) names the limit of its own method: a 16-channel latent at F16 holds 48×
fewer numbers than the 4K image, so the decoder cannot draw what the latent truncated, and no
training of the DiT puts it back. Its remedy, left as future work, is a *high-frequency
compensation mechanism*. This module is one, after StableSR's controllable feature wrapping
(CFW) in ControlNet form (reference.md):

    bicubic ×4 LR ──► guide pyramid (÷2, ÷4, ÷8, … of the output size)
                         │            │
    latent ─► decoder up block 0 ─(+w·Δ₀)─► up block 1 ─(+w·Δ₁)─► … ─► RGB ─(+w·Δ_rgb)─► output

- ``guide(image)``: a light convolutional pyramid of the bicubic-upscaled LR, computed once. Its
  first level works on the 2×2 pixel-unshuffled image, so nothing runs at the full 4K size
  except the unshuffle and the final shuffle (memory: the decoder's own full-size tensor is
  never materialised either, :func:`op4ksr.models.vae.nearest2x_conv`).
- ``fuse(level, features, guide, weight)``: after decoder up block ``level``, a 3×3 conv of the
  decoder features and the guide at that scale, then a **zero-initialised** 1×1 conv back to the
  decoder width, added with weight ``w``.
- ``refine(rgb, guide, weight)``: a small head on the unshuffled decoder output, the unshuffled
  LR and the finest guide level; its last conv is **zero-initialised** too, and its output is
  added to the decoder's RGB with weight ``w``, together with a per-channel gate ``skip``
  (zero-initialised) times (bicubic − decoder RGB). The gate lets training move the base of
  the output from the decoder's colours towards the LR's in a few steps, which a small head
  learns only slowly as a convolution (measured in docs/MODEL_CARD.md); the head then adds
  the detail that neither has.

Because every output conv starts at zero, an untrained module leaves the decoder exactly as it
was (bit for bit: ``x + 0 == x``), so a frozen UltraFlux decoder stays itself until the ``sr``
stage trains the module. ``w`` is the user's ``--fidelity`` knob: 0 = the decoder alone (the
paper's pipeline), 1 = full compensation; values between interpolate the added corrections.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.models.modeling import ConfigModel, register_to_config

UNSHUFFLE = 2  # the guide's first level and the RGB head run at half the output size


def decoder_level_factors(block_out_channels: Sequence[int], stride: int = 2) -> tuple[int, ...]:
    """Output-size divisor of each decoder up block's output, e.g. (8, 4, 2, 2) for the F16 VAE.

    diffusers' decoder starts at the latent (÷ 2^(n−1)·stride) and every up block but the last
    upsamples ×2; the F16 tail adds one more ×2 (``stride`` 2) after the last block.
    """
    n = len(block_out_channels)
    latent_factor = 2 ** (n - 1) * stride
    return tuple(max(latent_factor // 2 ** min(i + 1, n - 1), 1) for i in range(n))


def decoder_level_channels(block_out_channels: Sequence[int]) -> tuple[int, ...]:
    """Output width of each decoder up block (the encoder's widths, reversed)."""
    return tuple(reversed(tuple(block_out_channels)))


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class HighFrequencyCompensation(ConfigModel):
    """LR-guided corrections for each decoder level and for the decoded RGB (see module doc).

    Args:
        level_channels: width of each decoder up block's output, in decoder order.
        level_factors: output-size divisor of each of those outputs (``decoder_level_factors``).
        guide_channels: width of the LR guide pyramid.
        head_channels: width of the RGB head.
        head_layers: 3×3 conv layers in the RGB head between its input and output convs.
        image_channels: 3 (RGB).
    """

    @register_to_config
    def __init__(self, level_channels: tuple[int, ...] = (512, 512, 256, 128),
                 level_factors: tuple[int, ...] = (8, 4, 2, 2), guide_channels: int = 64,
                 head_channels: int = 64, head_layers: int = 2, image_channels: int = 3):
        super().__init__()
        if len(level_channels) != len(level_factors):
            raise ValueError(f"level_channels {level_channels} and level_factors {level_factors} differ in length")
        if any(f < UNSHUFFLE or f & (f - 1) for f in level_factors):
            raise ValueError(f"level_factors must be powers of two ≥ {UNSHUFFLE}, got {level_factors}")
        g, h = guide_channels, head_channels
        unshuffled = image_channels * UNSHUFFLE * UNSHUFFLE
        self.guide_stem = nn.Sequential(nn.Conv2d(unshuffled, g, 3, padding=1), nn.SiLU(),
                                        nn.Conv2d(g, g, 3, padding=1))
        # One stride-2 step per extra halving: guide level k is at ÷(2·2^k).
        depth = max(level_factors).bit_length() - UNSHUFFLE.bit_length()
        self.guide_down = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Conv2d(g, g, 3, stride=2, padding=1)) for _ in range(depth)
        )
        self.fusions = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c + g, g, 3, padding=1), nn.SiLU(), _zero(nn.Conv2d(g, c, 1)))
            for c in level_channels
        )
        layers: list[nn.Module] = [nn.Conv2d(2 * unshuffled + g, h, 3, padding=1), nn.SiLU()]
        for _ in range(head_layers):
            layers += [nn.Conv2d(h, h, 3, padding=1), nn.SiLU()]
        layers.append(_zero(nn.Conv2d(h, unshuffled, 3, padding=1)))
        self.head = nn.Sequential(*layers)
        self.skip = nn.Parameter(torch.zeros(1, image_channels, 1, 1))

    @classmethod
    def for_vae(cls, vae_config, **widths) -> HighFrequencyCompensation:
        """A module matched to a VAE's decoder (``vae.config``); ``widths``: guide/head sizes."""
        blocks = tuple(vae_config.block_out_channels)
        return cls(level_channels=decoder_level_channels(blocks),
                   level_factors=decoder_level_factors(blocks, int(getattr(vae_config, "stride", 2))), **widths)

    def _level_index(self, factor: int) -> int:
        return factor.bit_length() - UNSHUFFLE.bit_length()

    def guide(self, image01: torch.Tensor) -> list[torch.Tensor]:
        """The LR guide pyramid of the bicubic-upscaled image ``[B,3,H,W]`` in [0,1] (H, W
        multiples of the largest level factor): level k at ÷(2·2^k)."""
        x = F.pixel_unshuffle(image01 * 2.0 - 1.0, UNSHUFFLE)
        levels = [self.guide_stem(x)]
        for down in self.guide_down:
            levels.append(down(levels[-1]))
        return levels

    def fuse(self, level: int, features: torch.Tensor, guide: list[torch.Tensor], weight: float = 1.0) -> torch.Tensor:
        """Decoder features after up block ``level`` plus ``weight`` × the correction."""
        g = guide[self._level_index(self.config.level_factors[level])]
        if g.shape[-2:] != features.shape[-2:]:
            raise ValueError(f"guide level {tuple(g.shape[-2:])} does not match decoder level {level} "
                             f"{tuple(features.shape[-2:])}")
        delta = self.fusions[level](torch.cat([features, g.to(features.dtype)], dim=1))
        return features + weight * delta

    def refine(self, rgb01: torch.Tensor, image01: torch.Tensor, guide: list[torch.Tensor],
               weight: float = 1.0) -> torch.Tensor:
        """The decoded RGB (in [0,1]) plus ``weight`` × the head's correction."""
        inputs = torch.cat([F.pixel_unshuffle(rgb01 * 2.0 - 1.0, UNSHUFFLE),
                            F.pixel_unshuffle(image01 * 2.0 - 1.0, UNSHUFFLE), guide[0].to(rgb01.dtype)], dim=1)
        delta = F.pixel_shuffle(self.head(inputs), UNSHUFFLE) * 0.5  # [-1,1] units → [0,1] units
        delta = delta + self.skip.to(rgb01.dtype) * (image01 - rgb01)
        return rgb01 + weight * delta


def conv_flops_per_pixel(module: nn.Module) -> float:
    """2·(multiply-adds) per output pixel of every Conv2d in ``module`` (for the FLOP model)."""
    total = 0.0
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            kh, kw = conv.kernel_size
            total += 2.0 * conv.in_channels * conv.out_channels * kh * kw / conv.groups
    return total


def compensation_flops(module: HighFrequencyCompensation, height: int, width: int) -> float:
    """FLOPs of the module's convolutions for one ``height × width`` output."""
    cfg = module.config
    half = height * width / UNSHUFFLE**2
    flops = (conv_flops_per_pixel(module.guide_stem) + conv_flops_per_pixel(module.head)) * half
    for k, down in enumerate(module.guide_down, start=1):
        flops += conv_flops_per_pixel(down) * half / 4**k
    for fusion, factor in zip(module.fusions, cfg.level_factors):
        flops += conv_flops_per_pixel(fusion) * height * width / factor**2
    return flops
