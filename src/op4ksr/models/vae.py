"""F16 VAE: diffusers' AutoencoderKL with UltraFlux's two changes (reference.md).

1. The encoder's ``conv_in`` runs at stride 2 (so 4 down blocks give 16×, not 8×).
2. The decoder, after its up blocks, does GroupNorm → SiLU → nearest ×2 → ``conv_out``.

Both changes add no parameters, so parameter names and shapes are exactly those of a stock
AutoencoderKL with the same config: UltraFlux's ``vae/`` folder loads unchanged. The config
key is UltraFlux's own: ``stride`` (2 for F16, 1 for a stock F8 VAE).

The nearest ×2 + 3×3 ``conv_out`` is computed as one 3×3 convolution at the *low* resolution
with 4 output phases followed by a pixel shuffle. That is exactly equal (same taps, same zero
padding) but never materialises the C×(2H)×(2W) upsampled tensor, the largest activation of the
whole model at 4K.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder
from torch import nn


def nearest2x_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` without the upsampled tensor.

    For output phase (a, b) ∈ {0,1}², output pixel (2y+a, 2x+b) reads upsampled rows 2y+a+dy,
    dy ∈ {−1,0,1}, i.e. source rows y + ⌊(a+dy)/2⌋: a 2-tap kernel at the low resolution. All four
    phases are packed into one 3×3 conv (unused taps zero) and interleaved by pixel_shuffle.
    """
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
        raise ValueError("nearest2x_conv expects a 3×3, stride 1, padding 1 convolution")
    w = conv.weight  # [O, I, 3, 3]
    o, i = w.shape[:2]
    phases = w.new_zeros(o, 2, 2, i, 3, 3)
    for a in range(2):
        for b in range(2):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    sy, sx = (a + dy) // 2 + 1, (b + dx) // 2 + 1
                    phases[:, a, b, :, sy, sx] += w[:, :, dy + 1, dx + 1]
    weight = phases.reshape(o * 4, i, 3, 3)
    bias = conv.bias.repeat_interleave(4) if conv.bias is not None else None
    return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), 2)


class F16Decoder(Decoder):
    """diffusers' Decoder with UltraFlux's tail: GroupNorm → SiLU → nearest ×2 → conv_out.

    ``level_hook(i, features)``, when given, replaces the output of up block ``i`` (the entry
    point of :class:`~op4ksr.models.compensation.HighFrequencyCompensation`).
    """

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None,
                level_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        sample = self.conv_in(sample)
        checkpoint = torch.is_grad_enabled() and self.gradient_checkpointing

        def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return self._gradient_checkpointing_func(block, x, latent_embeds) if checkpoint else block(x, latent_embeds)

        sample = run(self.mid_block, sample)
        for i, block in enumerate(self.up_blocks):
            sample = run(block, sample)
            if level_hook is not None:
                sample = level_hook(i, sample)
        sample = self.conv_act(self.conv_norm_out(sample))
        return nearest2x_conv(sample, self.conv_out)


class F16AutoencoderKL(AutoencoderKL):
    """AutoencoderKL with a stride-2 input conv and a final nearest ×2 before ``conv_out``.

    Defaults are UltraFlux's F16 VAE (FLUX.1 VAE widths, 16 latent channels, no quant convs,
    ``scaling_factor`` 0.3611, ``shift_factor`` 0.1159; reference.md marks these *inferred*, so
    they are plain config values read from ``config.json`` when a real checkpoint is loaded).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        latent_channels: int = 16,
        norm_num_groups: int = 32,
        sample_size: int = 1024,
        scaling_factor: float = 0.3611,
        shift_factor: float | None = 0.1159,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = False,
        use_post_quant_conv: bool = False,
        mid_block_add_attention: bool = True,
        stride: int = 2,
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 (F8) or 2 (F16), got {stride}")
        if stride == 2:
            old = self.encoder.conv_in
            self.encoder.conv_in = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=2, padding=1)
            # Same constructor arguments as AutoencoderKL uses → identical parameter names.
            self.decoder = F16Decoder(
                in_channels=latent_channels,
                out_channels=out_channels,
                up_block_types=tuple(up_block_types),
                block_out_channels=tuple(block_out_channels),
                layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups,
                act_fn=act_fn,
                mid_block_add_attention=mid_block_add_attention,
            )

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along each axis (16 for the F16 VAE)."""
        return 2 ** (len(self.config.block_out_channels) - 1) * self.config.stride

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latent → DiT space: ``(z − shift)·scale``."""
        shift = self.config.shift_factor or 0.0
        return (latents - shift) * self.config.scaling_factor

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT space → VAE latent: ``z/scale + shift``."""
        shift = self.config.shift_factor or 0.0
        return latents / self.config.scaling_factor + shift

    def encode_mode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → posterior mode (un-normalised VAE latent)."""
        return self.encode(images * 2.0 - 1.0).latent_dist.mode()

    def decode_images(self, latents: torch.Tensor,
                      level_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Un-normalised VAE latent → images in [0, 1] (not clamped); ``level_hook`` as in
        :class:`F16Decoder` (it bypasses diffusers' tiled decoding, which has no such hook)."""
        if level_hook is None:
            return (self.decode(latents).sample + 1.0) * 0.5
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return (self.decoder(latents, level_hook=level_hook) + 1.0) * 0.5
