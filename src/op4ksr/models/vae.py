"""F16 VAE: diffusers' AutoencoderKL with UltraFlux's two changes (reference.md), in plain PyTorch.

1. The encoder's ``conv_in`` runs at stride 2 (so 4 down blocks give 16×, not 8×).
2. The decoder, after its up blocks, does GroupNorm → SiLU → nearest ×2 → ``conv_out``.

Both changes add no parameters, so parameter names and shapes are exactly those of a stock
AutoencoderKL with the same config: UltraFlux's ``vae/`` folder loads unchanged. The config
key is UltraFlux's own: ``stride`` (2 for F16, 1 for a stock F8 VAE, whose decoder keeps the
stock tail).

Why we own it: ``import diffusers`` costs about 5 s (see ``op4ksr.models.modeling``), more than
the compact model takes to upscale a photo. Everything else reproduces diffusers 0.42.1
(``AutoencoderKL``, ``Encoder``/``Decoder``, ``DownEncoderBlock2D``, ``UpDecoderBlock2D``,
``UNetMidBlock2D``, ``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``, ``Attention`` with
``AttnProcessor2_0``) for the configurations a VAE uses: the same module tree and state-dict
keys (``encoder.down_blocks.0.resnets.0.conv1``, ``decoder.mid_block.attentions.0.to_q``, …,
which peft LoRA targets too: ``op4ksr.models.lora.VAE_ENCODER_TARGETS``), modules created in the
same order (a seeded fresh model gets the stock model's random weights) and the same operations
in the same order. tests/models/test_vae_equivalence.py checks keys, shapes, outputs and
gradients against diffusers. Left out: time embeddings, spatial norm, dropout (always 0 in a
VAE), tiling and slicing, attention-processor switching.

The nearest ×2 + 3×3 ``conv_out`` is computed as one 3×3 convolution at the *low* resolution
with 4 output phases followed by a pixel shuffle. That is exactly equal in exact arithmetic
(same taps, same zero padding; in floating point it differs by rounding only) but never
materialises the C×(2H)×(2W) upsampled tensor, the largest activation of the whole model at 4K.

UltraFlux decodes with a *partitioned* tail by default (``partitioned=True`` in its decoder, and
its F16 VAE was trained that way): the map after norm → SiLU is cut into 2×2 partitions with a
one-pixel overlap, each zero-padded by one on its outer sides, upsampled, convolved and cropped.
Its net effect is the plain tail's output shifted one output pixel down and right, the new first
row/column computed over zeros (reference.md). Config key ``partitioned_decode``: the same phase
convolution with the taps moved by one output pixel (:func:`nearest2x_conv` ``shift=1``), one pass,
no partitions, no extra tensor. A ``config.json`` that is not op4ksr's (UltraFlux's own
``AutoencoderKL``) with ``stride`` 2 and no such key means UltraFlux's default, true
(:meth:`F16AutoencoderKL.from_config`); op4ksr writes the key, and its own VAEs (the bundled
compact model, the presets but ``ultraflux``) keep the plain tail they were trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.models.modeling import ConfigModel, maybe_checkpoint, register_to_config

LevelHook = Callable[[int, torch.Tensor], torch.Tensor]

RESNET_EPS = 1e-6  # every norm of diffusers' VAE encoder/decoder
ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"


def get_activation(name: str) -> nn.Module:
    """diffusers' ``get_activation`` (case-insensitive)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"activation function {name!r} is not one of {sorted(ACTIVATIONS)}") from None


def nearest2x_conv(x: torch.Tensor, conv: nn.Conv2d, shift: int = 0) -> torch.Tensor:
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` without the upsampled tensor.

    For output phase (a, b) ∈ {0,1}², output pixel (2y+a, 2x+b) reads upsampled rows 2y+a+dy,
    dy ∈ {−1,0,1}, i.e. source rows y + ⌊(a+dy)/2⌋: a 2-tap kernel at the low resolution. All four
    phases are packed into one 3×3 conv (unused taps zero) and interleaved by pixel_shuffle.

    ``shift=1`` gives UltraFlux's partitioned tail: output pixel (r, c) is the plain output at
    (r−1, c−1), row/column −1 computed over the zero-extended map. Source rows are then
    y + ⌊(a+dy−1)/2⌋ ∈ {y−1, y}: the same 3×3 footprint, the same zero padding.
    """
    if shift not in (0, 1):
        raise ValueError(f"shift must be 0 (plain tail) or 1 (UltraFlux's partitioned tail), got {shift}")
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
        raise ValueError("nearest2x_conv expects a 3×3, stride 1, padding 1 convolution")
    w = conv.weight  # [O, I, 3, 3]
    o, i = w.shape[:2]
    phases = w.new_zeros(o, 2, 2, i, 3, 3)
    for a in range(2):
        for b in range(2):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    sy, sx = (a + dy - shift) // 2 + 1, (b + dx - shift) // 2 + 1
                    phases[:, a, b, :, sy, sx] += w[:, :, dy + 1, dx + 1]
    weight = phases.reshape(o * 4, i, 3, 3)
    bias = conv.bias.repeat_interleave(4) if conv.bias is not None else None
    return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), 2)


# --------------------------------------------------------------------------- layers


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D without a time embedding: norm → act → conv, twice, plus the
    input (through a 1×1 ``conv_shortcut`` when the width changes). Output scale factor 1."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, act_fn: str = "silu",
                 eps: float = RESNET_EPS):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(num_groups=groups, num_channels=out_channels, eps=eps, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(act_fn)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
                              if in_channels != out_channels else None)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        hidden_states = self.conv2(self.nonlinearity(self.norm2(hidden_states)))
        if self.conv_shortcut is not None:
            if self.training:  # diffusers: avoids DDP's gradient-stride warning; same values
                input_tensor = input_tensor.contiguous()
            input_tensor = self.conv_shortcut(input_tensor)
        return input_tensor + hidden_states


class Downsample2D(nn.Module):
    """diffusers' Downsample2D(use_conv=True, padding=0): pad right/bottom by one, 3×3 stride-2 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0))


class Upsample2D(nn.Module):
    """diffusers' Upsample2D(use_conv=True): nearest ×2, then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # diffusers' work-arounds for upsample_nearest_nhwc (large batches, > 2³¹ elements; the
        # threshold is theirs). Its bf16 → fp32 cast applies to torch < 2.1 only, below our floor.
        if hidden_states.shape[0] >= 64 or hidden_states.numel() * 2 > 2**31:
            hidden_states = hidden_states.contiguous()
        hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        return self.conv(hidden_states)


class Attention(nn.Module):
    """diffusers' VAE self-attention (``Attention`` with ``group_norm``, one head of width
    ``channels``, residual connection, ``AttnProcessor2_0``) on a [B, C, H, W] input."""

    def __init__(self, channels: int, groups: int, eps: float = RESNET_EPS):
        super().__init__()
        self.heads = 1  # heads = channels // attention_head_dim, and attention_head_dim = channels
        self.group_norm = nn.GroupNorm(num_channels=channels, num_groups=groups, eps=eps, affine=True)
        self.to_q = nn.Linear(channels, channels, bias=True)
        self.to_k = nn.Linear(channels, channels, bias=True)
        self.to_v = nn.Linear(channels, channels, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels, bias=True), nn.Dropout(0.0)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = self.to_q(hidden_states)
        key = self.to_k(hidden_states)
        value = self.to_v(hidden_states)
        head_dim = key.shape[-1] // self.heads
        query = query.view(batch_size, -1, self.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, self.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, self.heads, head_dim).transpose(1, 2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, self.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = self.to_out[1](self.to_out[0](hidden_states))
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        return hidden_states + residual  # rescale_output_factor is 1


# --------------------------------------------------------------------------- blocks


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, act_fn: str,
                 add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act_fn)
            for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, act_fn: str,
                 add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act_fn)
            for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states)
        return hidden_states


class UNetMidBlock2D(nn.Module):
    """Resnet, then (attention, resnet); ``attentions`` holds ``None`` when attention is off,
    as in diffusers (so the resnets keep their indices)."""

    def __init__(self, channels: int, groups: int, act_fn: str, add_attention: bool = True):
        super().__init__()
        self.add_attention = add_attention
        # num_layers = 1 in a VAE; created in diffusers' order: resnet, attention, resnet
        first = ResnetBlock2D(channels, channels, groups, act_fn)
        attention = Attention(channels, groups) if add_attention else None
        self.attentions = nn.ModuleList([attention])
        self.resnets = nn.ModuleList([first, ResnetBlock2D(channels, channels, groups, act_fn)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states)
            hidden_states = maybe_checkpoint(self.gradient_checkpointing, resnet, hidden_states)
        return hidden_states


# --------------------------------------------------------------------------- encoder / decoder


def _check_block_types(kind: str, types: Sequence[str], allowed: str, n: int) -> None:
    bad = [t for t in types if t != allowed]
    if bad:
        raise ValueError(f"{kind} {bad[0]!r} is not supported: the F16 VAE has only {allowed!r} blocks")
    if len(types) != n:
        raise ValueError(f"{len(types)} {kind} for {n} block_out_channels; they must match")


class Encoder(nn.Module):
    """diffusers' VAE Encoder (``double_z``: mean and log-variance), ``conv_in`` at ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: Sequence[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool,
                 stride: int = 2):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=stride, padding=1)
        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            input_channel, output_channel = output_channel, channels
            self.down_blocks.append(DownEncoderBlock2D(
                input_channel, output_channel, layers_per_block, norm_num_groups, act_fn,
                add_downsample=i != len(block_out_channels) - 1,
            ))
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, act_fn, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for down_block in self.down_blocks:
            sample = maybe_checkpoint(self.gradient_checkpointing, down_block, sample)
        sample = maybe_checkpoint(self.gradient_checkpointing, self.mid_block, sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    """diffusers' VAE Decoder; with ``upsample_output`` (F16) its tail is GroupNorm → SiLU →
    nearest ×2 → ``conv_out`` (computed by :func:`nearest2x_conv`), with ``partitioned`` the
    output shifted by one pixel as UltraFlux's partitioned tail.

    ``level_hook(i, features)``, when given, replaces the output of up block ``i`` (the entry
    point of :class:`~op4ksr.models.compensation.HighFrequencyCompensation`).
    """

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: Sequence[int],
                 layers_per_block: int, norm_num_groups: int, act_fn: str, mid_block_add_attention: bool,
                 upsample_output: bool = True, partitioned: bool = False):
        super().__init__()
        if partitioned and not upsample_output:
            raise ValueError("the partitioned tail exists only with the F16 upsampling tail (stride 2)")
        self.upsample_output = upsample_output
        self.partitioned = partitioned
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before, filled after the mid block (diffusers' order)
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, act_fn, mid_block_add_attention)
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, channels in enumerate(reversed_channels):
            prev_output_channel, output_channel = output_channel, channels
            self.up_blocks.append(UpDecoderBlock2D(
                prev_output_channel, output_channel, layers_per_block + 1, norm_num_groups, act_fn,
                add_upsample=i != len(block_out_channels) - 1,
            ))
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, level_hook: LevelHook | None = None) -> torch.Tensor:
        sample = self.conv_in(sample)
        sample = maybe_checkpoint(self.gradient_checkpointing, self.mid_block, sample)
        for i, up_block in enumerate(self.up_blocks):
            sample = maybe_checkpoint(self.gradient_checkpointing, up_block, sample)
            if level_hook is not None:
                sample = level_hook(i, sample)
        sample = self.conv_act(self.conv_norm_out(sample))
        if self.upsample_output:
            return nearest2x_conv(sample, self.conv_out, shift=int(self.partitioned))
        return self.conv_out(sample)


# --------------------------------------------------------------------------- the autoencoder


class DiagonalGaussianDistribution:
    """diffusers' posterior over the latent: ``parameters`` = [mean, log-variance] along dim 1."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std·ε; with a CPU generator, ε is drawn on the CPU and moved (diffusers' randn_tensor)."""
        device = self.parameters.device
        rand_device = "cpu" if generator is not None and generator.device.type == "cpu" else device
        noise = torch.randn(self.mean.shape, generator=generator, device=rand_device,
                            dtype=self.parameters.dtype).to(device)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL divergence to the standard normal, per sample."""
        return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


class AutoencoderKLOutput(NamedTuple):
    latent_dist: DiagonalGaussianDistribution


class DecoderOutput(NamedTuple):
    sample: torch.Tensor


class F16AutoencoderKL(ConfigModel):
    """AutoencoderKL with a stride-2 input conv and a final nearest ×2 before ``conv_out``.

    Defaults are UltraFlux's F16 VAE (FLUX.1 VAE widths, 16 latent channels, no quant convs,
    ``scaling_factor`` 0.3611, ``shift_factor`` 0.1159; reference.md marks these *inferred*, so
    they are plain config values read from ``config.json`` when a real checkpoint is loaded).
    ``stride=1`` is a stock (F8) AutoencoderKL. ``partitioned_decode`` selects UltraFlux's
    partitioned decoder tail (F16 only; see the module docstring and :meth:`from_config`).
    ``sample_size``, ``latents_mean``/``latents_std``
    and ``force_upcast`` are carried in the config only (diffusers' meaning; nothing here reads them).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = (DOWN_BLOCK,) * 4,
        up_block_types: tuple[str, ...] = (UP_BLOCK,) * 4,
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
        partitioned_decode: bool = False,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 (F8) or 2 (F16), got {stride}")
        if partitioned_decode and stride != 2:
            raise ValueError("partitioned_decode needs the F16 decoder tail (stride 2)")
        blocks = tuple(block_out_channels)
        _check_block_types("down_block_types", down_block_types, DOWN_BLOCK, len(blocks))
        _check_block_types("up_block_types", up_block_types, UP_BLOCK, len(blocks))
        get_activation(act_fn)  # a clear error before anything is built
        common = {"block_out_channels": blocks, "layers_per_block": layers_per_block,
                  "norm_num_groups": norm_num_groups, "act_fn": act_fn,
                  "mid_block_add_attention": mid_block_add_attention}
        self.encoder = Encoder(in_channels, latent_channels, stride=stride, **common)
        self.decoder = Decoder(latent_channels, out_channels, upsample_output=stride == 2,
                               partitioned=bool(partitioned_decode), **common)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    @classmethod
    def from_config(cls, config, **overrides):
        """As :meth:`ConfigModel.from_config`; a foreign F16 config (not written by op4ksr, i.e.
        UltraFlux's own ``AutoencoderKL``) without ``partitioned_decode`` means UltraFlux's default,
        the partitioned tail. op4ksr's configs always carry the key (older ones without it were
        trained with the plain tail, which stays their default)."""
        values = {**config, **overrides}
        if ("partitioned_decode" not in values and values.get("stride") == 2
                and values.get("_class_name", cls.__name__) != cls.__name__):
            values["partitioned_decode"] = True
        return super().from_config(values)

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

    # -- diffusers' interface (images in [-1, 1])
    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder (+ ``quant_conv``) output: posterior mean and log-variance along dim 1."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments

    def encode(self, x: torch.Tensor) -> AutoencoderKLOutput:
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(self.moments(x)))

    def decode(self, z: torch.Tensor, level_hook: LevelHook | None = None) -> DecoderOutput:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return DecoderOutput(sample=self.decoder(z, level_hook=level_hook))

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> DecoderOutput:
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z)

    # -- op4ksr's interface (images in [0, 1])
    def encode_mode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → posterior mode (un-normalised VAE latent)."""
        return torch.chunk(self.moments(images * 2.0 - 1.0), 2, dim=1)[0]

    def decode_images(self, latents: torch.Tensor, level_hook: LevelHook | None = None) -> torch.Tensor:
        """Un-normalised VAE latent → images in [0, 1] (not clamped); ``level_hook`` as in
        :class:`Decoder`."""
        return (self.decode(latents, level_hook=level_hook).sample + 1.0) * 0.5
