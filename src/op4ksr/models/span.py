"""SPAN (Wan et al., "Swift Parameter-free Attention Network", NTIRE 2024 efficient-SR winner).

Everything runs at the LR resolution; a pixel shuffle makes the output at the end::

    x ─► (x − mean)·255 ─► conv_1 ─► f ─► block_1 … block_6 ─► conv_2 ─┐
                                     │       │          │(c1 act)      │
                                     └───────┴──────────┴──────────────┴► concat ─► conv_cat (1×1)
                                                                            ─► conv 3×3 (3·s² ch) ─► pixel shuffle ×s

A block (SPAB) is three 3×3 convs with SiLU between them and the *parameter-free attention*
``(c3 + x) · (sigmoid(c3) − 0.5)``. The official training form uses re-parameterisable
convolutions (Conv3XC); what ships (and what the ncnn files hold) is their collapsed, plain 3×3
form, which is what this module is: fine-tuning it trains the same function. The output is not
de-normalised: SPAN is trained to emit [0, 1] RGB directly from the mean-subtracted, ×255 input
(exactly the graph of the official ncnn export).

The parameter names are this module's own (``conv_1``, ``blocks.{i}.c1_r`` …, ``conv_cat``,
``upsampler``); :mod:`op4ksr.models.span_ncnn` converts the official weights into them.
``stem_residual`` is an optional map added to ``conv_1``'s output (the features every block and
the final concat see): op4ksr's latent fusion enters there (:mod:`op4ksr.models.pixel_path`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.models.modeling import ConfigModel, register_to_config

# DIV2K's RGB mean, the normalisation SPAN (like EDSR/RCAN) was trained with.
SPAN_RGB_MEAN = (0.4488, 0.4371, 0.4040)
SPAN_IMG_RANGE = 255.0


class SPANBlock(nn.Module):
    """SPAB in its deployed form: three plain 3×3 convs and the parameter-free attention."""

    def __init__(self, channels: int):
        super().__init__()
        self.c1_r = nn.Conv2d(channels, channels, 3, padding=1)
        self.c2_r = nn.Conv2d(channels, channels, 3, padding=1)
        self.c3_r = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, the first conv's activation — the last block's goes to the concat)."""
        out1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(out1)))
        attention = torch.sigmoid(out3) - 0.5
        return (out3 + x) * attention, out1


class SPAN(ConfigModel):
    """SPAN super-resolution network (deployed form), image in [0, 1] → image (≈ [0, 1]) × ``upscale``.

    Args:
        in_channels / out_channels: 3 (RGB).
        feature_channels: width of every conv (48 for the official ``spanx4_ch48``).
        upscale: the pixel-shuffle factor.
        num_blocks: SPAB blocks (6 in every published SPAN).
        rgb_mean / img_range: the input normalisation ``(x − mean)·img_range``.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3, feature_channels: int = 48, upscale: int = 4,
                 num_blocks: int = 6, rgb_mean: tuple[float, ...] = SPAN_RGB_MEAN,
                 img_range: float = SPAN_IMG_RANGE):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"SPAN needs at least one block, got {num_blocks}")
        if len(rgb_mean) != in_channels:
            raise ValueError(f"rgb_mean has {len(rgb_mean)} values for {in_channels} input channels")
        c = feature_channels
        self.conv_1 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.blocks = nn.ModuleList(SPANBlock(c) for _ in range(num_blocks))
        self.conv_2 = nn.Conv2d(c, c, 3, padding=1)
        self.conv_cat = nn.Conv2d(4 * c, c, 1)
        self.upsampler = nn.Conv2d(c, out_channels * upscale * upscale, 3, padding=1)

    @property
    def upscale(self) -> int:
        return int(self.config.upscale)

    def forward(self, x: torch.Tensor, stem_residual: torch.Tensor | None = None) -> torch.Tensor:
        # From the config, not a buffer: a part built on the meta device and loaded from its
        # state dict (models/loading.py) would otherwise keep a meta-device mean.
        mean = torch.tensor(self.config.rgb_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) * float(self.config.img_range)
        feature = self.conv_1(x)
        if stem_residual is not None:
            feature = feature + stem_residual
        out = feature
        out_b1 = first_activation = None
        for i, block in enumerate(self.blocks):
            out, first_activation = block(out)
            if i == 0:
                out_b1 = out
        cat = torch.cat([feature, self.conv_2(out), out_b1, first_activation], dim=1)
        return F.pixel_shuffle(self.upsampler(self.conv_cat(cat)), self.upscale)

