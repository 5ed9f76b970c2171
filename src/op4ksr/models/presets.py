"""Named model presets (timm-style registry): ``ultraflux``, ``compact``, ``tiny``.

A preset is plain constructor arguments for the three parts plus the pipeline's σ/scale. A new
variant is a few lines with :func:`register_preset`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from op4ksr.models.constants import DEFAULT_SIGMA, OP4KSR_ROPE_THETA

if TYPE_CHECKING:  # pragma: no cover
    from op4ksr.models.compensation import HighFrequencyCompensation

_DOWN = ("DownEncoderBlock2D",) * 4
_UP = ("UpDecoderBlock2D",) * 4


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    vae: dict[str, Any]
    transformer: dict[str, Any]
    prompt: dict[str, Any]
    pipeline: dict[str, Any] = field(default_factory=dict)
    # Widths of the high-frequency compensation (models/compensation.py); its level sizes come
    # from the VAE. Zero-initialised, so a fresh one leaves the decoder's output unchanged.
    compensation: dict[str, Any] = field(default_factory=lambda: dict(guide_channels=64, head_channels=64,
                                                                       head_layers=2))
    # The pixel path (models/pixel_path.py: SPAN at the LR size with the DiT's latent fused in),
    # constructor arguments; None: the output comes from the F16 decoder (the paper's path).
    pixel_path: dict[str, Any] | None = None


_PRESETS: dict[str, ModelPreset] = {}
# the parts ``build_pipeline(overrides=…)`` (and a training config's model.overrides) may change
OVERRIDE_PARTS = ("vae", "transformer", "prompt", "compensation", "pixel_path", "pipeline")


def register_preset(preset: ModelPreset) -> ModelPreset:
    if preset.name in _PRESETS:
        raise ValueError(f"preset {preset.name!r} already registered")
    _PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> ModelPreset:
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(list_presets())}") from None


def list_presets() -> list[str]:
    return sorted(_PRESETS)


# The exact full-size configuration (reference.md): FLUX.1 VAE widths at F16, and the FLUX.1
# DiT (19 double + 38 single blocks, 24 × 128 heads, T5 4096 / CLIP 768, guidance-distilled).
register_preset(ModelPreset(
    name="ultraflux",
    description="UltraFlux-size OP4KSR: F16 VAE (FLUX.1 widths) + 11.9 B-parameter Flux DiT, θ=100",
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
             norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159, down_block_types=_DOWN,
             up_block_types=_UP, use_quant_conv=False, use_post_quant_conv=False, stride=2,
             mid_block_add_attention=True, partitioned_decode=True),
    transformer=dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                     guidance_embeds=True, axes_dims_rope=(16, 56, 56), rope_theta=OP4KSR_ROPE_THETA),
    prompt=dict(sequence_length=512, joint_attention_dim=4096, pooled_projection_dim=768),
    # σ: OMGSR-F's SNR-matched mid timestep (models/constants.py; `op4ksr analyze mid-timestep`).
    pipeline=dict(sigma=DEFAULT_SIGMA, scale=4, guidance=1.0),
))

# Same structure, sized for a 2-core CPU (docs/PERFORMANCE.md). No mid-block attention in the
# VAE: at 4K its 65,536-pixel self-attention alone would cost ~2 TFLOP. Head dim 64 split
# (8, 28, 28) keeps RoPE's 28-dim row/col axes of the full model halved; θ = 100 as in OP4KSR.
# v2 (docs/MODEL_CARD.md): the pixels come from SPAN x4 at the LR size (48 channels, 6 blocks,
# the official weights' shape) with the DiT's latent fused into its stem; the decoder and the
# compensation are not on its path (the equal-budget ablation in the model card decided it).
register_preset(ModelPreset(
    name="compact",
    description="Compact OP4KSR for CPUs: small F16 encoder + 4-block Flux DiT (θ=100) guiding SPAN x4 at the LR size",
    vae=dict(block_out_channels=(16, 32, 64, 128), layers_per_block=1, latent_channels=16,
             norm_num_groups=8, scaling_factor=1.0, shift_factor=0.0, down_block_types=_DOWN,
             up_block_types=_UP, use_quant_conv=False, use_post_quant_conv=False, stride=2,
             mid_block_add_attention=False),
    transformer=dict(in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=64,
                     num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64,
                     guidance_embeds=False, axes_dims_rope=(8, 28, 28), rope_theta=OP4KSR_ROPE_THETA),
    prompt=dict(sequence_length=8, joint_attention_dim=64, pooled_projection_dim=64),
    pipeline=dict(sigma=0.5, scale=4, guidance=1.0),
    compensation=dict(enabled=False, guide_channels=16, head_channels=32, head_layers=3),
    pixel_path=dict(feature_channels=48, num_blocks=6, upscale=4, latent_channels=16, latent_factor=4,
                    fusion_channels=64),
))

# For tests: every code path, seconds on a CPU.
register_preset(ModelPreset(
    name="tiny",
    description="Test-size OP4KSR (random weights unless trained)",
    vae=dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
             scaling_factor=1.0, shift_factor=0.0, down_block_types=_DOWN, up_block_types=_UP,
             use_quant_conv=False, use_post_quant_conv=False, stride=2, mid_block_add_attention=True),
    transformer=dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
                     guidance_embeds=False, axes_dims_rope=(4, 6, 6), rope_theta=OP4KSR_ROPE_THETA),
    prompt=dict(sequence_length=4, joint_attention_dim=16, pooled_projection_dim=16),
    pipeline=dict(sigma=0.5, scale=4, guidance=1.0),
    compensation=dict(guide_channels=8, head_channels=8, head_layers=1),
))


def build_pipeline(name: str, *, seed: int | None = 0, device: str | torch.device = "cpu",
                   overrides: dict[str, dict[str, Any]] | None = None):
    """A pipeline of preset ``name`` with freshly initialised weights.

    ``device="meta"`` allocates nothing (for planning the full-size model). ``overrides`` maps a
    part (``vae``, ``transformer``, ``prompt``, ``compensation``, ``pixel_path``, ``pipeline``) to
    config values that replace the preset's, e.g. ``{"transformer": {"rope_theta": 10000}}``. A
    (zero-initialised) compensation part is built unless its ``enabled`` is False
    (``{"compensation": {"enabled": False}}``); a pixel path is built where the preset has one
    (``{"pixel_path": {"enabled": False}}`` leaves it out, ``{"pixel_path": {"enabled": True}}``
    adds the default one to a preset without). A fresh pixel path's SPAN is random: load the
    official weights with ``pipe.pixel_path.load_span`` (``op4ksr.models.span_ncnn``).
    """
    from op4ksr.models.compensation import HighFrequencyCompensation
    from op4ksr.models.pipeline import OP4KSRPipeline
    from op4ksr.models.pixel_path import LatentGuidedSPAN
    from op4ksr.models.prompt import FixedPromptEmbeddings
    from op4ksr.models.transformer import OP4KSRTransformer
    from op4ksr.models.vae import F16AutoencoderKL

    preset = get_preset(name)
    overrides = overrides or {}
    unknown = set(overrides) - set(OVERRIDE_PARTS)
    if unknown:
        raise KeyError(f"unknown override part(s) {sorted(unknown)}")
    cfg = {part: {**(getattr(preset, part) or {}), **overrides.get(part, {})} for part in OVERRIDE_PARTS}
    from op4ksr.models.loading import check_config_limits

    for part, values in overrides.items():  # the bounds a model folder's configs get, before any allocation
        check_config_limits(part, f"overrides[{part!r}]", values)
    with_compensation = cfg["compensation"].pop("enabled", True)
    with_pixel_path = cfg["pixel_path"].pop("enabled", preset.pixel_path is not None)
    if with_pixel_path:
        cfg["pixel_path"].setdefault("latent_channels", cfg["vae"].get("latent_channels", 16))
    device = torch.device(device)
    rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with rng, torch.device(device):
        if seed is not None:
            torch.manual_seed(seed)
        vae = F16AutoencoderKL(**cfg["vae"])
        transformer = OP4KSRTransformer(**cfg["transformer"])
        prompt = FixedPromptEmbeddings(**cfg["prompt"])
        if device.type != "meta":
            # A fixed prompt of small random values, like real text embeddings are never all-zero.
            prompt.prompt_embeds.data.normal_(0.0, 0.02)
            prompt.pooled_prompt_embeds.data.normal_(0.0, 0.02)
        # Last, so that the other parts' weights are those of a preset without compensation.
        compensation = HighFrequencyCompensation.for_vae(vae.config, **cfg["compensation"]) if with_compensation else None
        pixel_path = LatentGuidedSPAN(**cfg["pixel_path"]) if with_pixel_path else None
    for part in (vae, transformer, prompt, compensation, pixel_path):
        if part is not None:
            part.eval()  # inference behaviour by default; the trainer switches what it trains
    if device.type == "cpu":
        vae.to(memory_format=torch.channels_last)  # same layout as a loaded model (loading.move_pipeline)
        for part in (compensation, pixel_path):
            if part is not None:
                part.to(memory_format=torch.channels_last)
    return OP4KSRPipeline(vae=vae, transformer=transformer, prompt=prompt, compensation=compensation,
                          pixel_path=pixel_path, **cfg["pipeline"])


def build_compensation(preset: str, vae_config) -> HighFrequencyCompensation:
    """A fresh (zero-initialised) compensation part with ``preset``'s widths, matched to a VAE."""
    from op4ksr.models.compensation import HighFrequencyCompensation

    widths = {k: v for k, v in get_preset(preset).compensation.items() if k != "enabled"}
    return HighFrequencyCompensation.for_vae(vae_config, **widths)


def build_pixel_path(preset: str, vae_config, *, use_latent: bool = True):
    """A fresh pixel path (random SPAN, zero fusion) with ``preset``'s widths, matched to a VAE's
    latent; the compact preset's widths when ``preset`` has none."""
    from op4ksr.models.pixel_path import LatentGuidedSPAN

    widths = dict(get_preset(preset).pixel_path or get_preset("compact").pixel_path)
    scale = int(widths.get("upscale", 4))
    factor = 2 ** (len(vae_config.block_out_channels) - 1) * int(getattr(vae_config, "stride", 2)) // scale
    widths.update(latent_channels=int(vae_config.latent_channels), latent_factor=max(factor, 1),
                  use_latent=use_latent)
    return LatentGuidedSPAN(**widths)
