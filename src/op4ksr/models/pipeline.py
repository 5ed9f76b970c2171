"""OP4KSRPipeline: LR image → one DiT step on the whole image → SR image (paper Sec. 3.1).

    LR → bicubic ×scale → reflect-pad to a multiple of 32 → F16 encoder (posterior mode)
       → normalise → pack 2×2 → z_σ at the mid timestep σ → ONE DiT call (fixed prompt)
       → ẑ₀ = z_σ − σ·v → unpack → de-normalise → F16 decoder → crop → clamp.

The DiT never tiles. ``tiled=True`` runs the OMGSR-style *baseline* that OP4KSR removes
(latent tiles with overlap, Gaussian blending, the same position ids in every tile) so that the
two can be compared with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from op4ksr.models.color import COLOR_FIXES, apply_color_fix
from op4ksr.models.compensation import HighFrequencyCompensation
from op4ksr.models.constants import DEFAULT_SIGMA, check_sigma
from op4ksr.models.flow import x0_from_velocity
from op4ksr.models.grid_fix import GRID_FIXES, token_notch
from op4ksr.models.modeling import ConfigPipeline
from op4ksr.models.packing import PATCH, image_ids, pack_latents, text_ids, unpack_latents, window_starts
from op4ksr.models.pixel_path import LatentGuidedSPAN
from op4ksr.models.prompt import FixedPromptEmbeddings
from op4ksr.models.transformer import OP4KSRTransformer
from op4ksr.models.vae import F16AutoencoderKL


@dataclass
class LRLatent:
    """The first step's result for a batch: what the DiT step and the decoder need."""

    upsampled: torch.Tensor  # bicubic ×scale, padded to the token grid: the encoder's input and the guide
    size: tuple[int, int]  # (H, W) of the output before padding
    latent: torch.Tensor | None  # normalised E(upsampled), taken as z_σ (None: a pixel path without it)
    lr: torch.Tensor | None = None  # the LR padded to the token grid ÷ scale (models with a pixel path)


@dataclass(frozen=True)
class TileConfig:
    """OMGSR's patch-based inference: latent tiles of 128 with overlap 64 (reference.md)."""

    tile: int = 128  # latent pixels
    overlap: int = 64
    gaussian_sigma: float = 0.1  # of the tile size, for the blending weights (OMGSR's variance 0.01)


class OP4KSRPipeline(ConfigPipeline):
    """One-step, patch-free super-resolution.

    Args:
        vae: the F16 VAE (encoder LoRA merged for inference; decoder frozen).
        transformer: the Flux DiT with RFR (``rope_theta`` in its config).
        prompt: the fixed prompt embeddings.
        sigma: the mid timestep σ at which the LR latent is placed (σ = 1 − the paper's t).
        scale: the native upscaling factor (4).
        guidance: value fed to a guidance-distilled DiT (``guidance_embeds``); ignored otherwise.
        color_fix: ``none``, ``wavelet`` or ``adain`` — anchor the output's colours to the
            bicubic-upscaled LR (see :mod:`op4ksr.models.color`); a per-call override exists.
        grid_fix: ``none`` or ``notch`` — shrink the output's 32-px token harmonics that stand out
            of their local spectrum, in 256- then 128-px windows (see :mod:`op4ksr.models.grid_fix`); a
            per-call override exists.
        compensation: optional high-frequency compensation (the decoder sees the bicubic LR,
            :mod:`op4ksr.models.compensation`); ``None`` is the paper's pipeline.
        fidelity: in [0, 1], a per-call override exists. With a compensation part: its strength
            (0 = the decoder alone). With a pixel path: the blend of its two weight sets
            (0 = the perceptual end, 1 = the faithful end).
        pixel_path: optional :class:`~op4ksr.models.pixel_path.LatentGuidedSPAN` (the compact
            model v2): the output is drawn at the LR size by a SPAN network into which the DiT's
            latent is fused, instead of by the F16 decoder.
    """

    # saved as [null, null] in model_index.json when absent
    _optional_components = ["compensation", "pixel_path"]

    def __init__(self, vae: F16AutoencoderKL, transformer: OP4KSRTransformer, prompt: FixedPromptEmbeddings,
                 sigma: float = DEFAULT_SIGMA, scale: int = 4, guidance: float = 1.0, color_fix: str = "none",
                 grid_fix: str = "none", compensation: HighFrequencyCompensation | None = None,
                 fidelity: float = 1.0, pixel_path: LatentGuidedSPAN | None = None):
        super().__init__()
        check_sigma(sigma)
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {COLOR_FIXES}, got {color_fix!r}")
        if grid_fix not in GRID_FIXES:
            raise ValueError(f"grid_fix must be one of {GRID_FIXES}, got {grid_fix!r}")
        check_fidelity(fidelity)
        self.register_modules(vae=vae, transformer=transformer, prompt=prompt, compensation=compensation,
                              pixel_path=pixel_path)
        self.register_to_config(sigma=float(sigma), scale=int(scale), guidance=float(guidance), color_fix=color_fix,
                                 grid_fix=grid_fix, fidelity=float(fidelity))
        latent_tokens_channels = vae.config.latent_channels * PATCH * PATCH
        if transformer.config.in_channels != latent_tokens_channels:
            raise ValueError(
                f"transformer in_channels {transformer.config.in_channels} != 4 × VAE latent channels "
                f"{vae.config.latent_channels}"
            )
        if pixel_path is not None:
            if pixel_path.upscale != scale:
                raise ValueError(f"pixel path upscale {pixel_path.upscale} != pipeline scale {scale}")
            if pixel_path.uses_latent and pixel_path.latent_factor * scale != vae.spatial_factor:
                raise ValueError(f"pixel path latent_factor {pixel_path.latent_factor} × scale {scale} != the VAE's "
                                 f"spatial factor {vae.spatial_factor}")

    # ------------------------------------------------------------------ properties
    @property
    def sigma(self) -> float:
        return float(self.config.sigma)

    @property
    def scale(self) -> int:
        return int(self.config.scale)

    @property
    def fidelity(self) -> float:
        return float(getattr(self.config, "fidelity", 1.0))

    @property
    def has_fidelity_knob(self) -> bool:
        """Whether ``fidelity`` changes anything: a compensation part or a two-end pixel path."""
        return self.compensation is not None or self.pixel_path is not None

    @property
    def pad_multiple(self) -> int:
        """Output pixels per token side: VAE factor (16) × packing (2) = 32."""
        return self.vae.spatial_factor * PATCH

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return next(self.transformer.parameters()).dtype

    # ------------------------------------------------------------------ stages
    def upsample_and_pad(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Bicubic ×scale, then pad right/bottom to a multiple of 32; returns the padded batch and (H, W)."""
        x = F.interpolate(images, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
        return _pad_right_bottom(x, self.pad_multiple), tuple(x.shape[-2:])

    def pad_lr(self, images: torch.Tensor) -> torch.Tensor:
        """The LR padded right/bottom to a multiple of the token grid ÷ scale (8 px), so that its
        ×scale output and the latent line up with the token grid (the pixel path's input)."""
        return _pad_right_bottom(images, self.pad_multiple // self.scale)

    def lr_latent(self, images: torch.Tensor) -> LRLatent:
        """Step 1, shared by inference, training and the diagnostics: LR [B, 3, h, w] in [0, 1] →
        bicubic ×scale → pad → normalised latent z_σ.

        With a pixel path the LR is padded first (:meth:`pad_lr`) and upsampled whole, so the
        latent lines up with the pixel path's input; without the latent branch no encoder runs.
        """
        if self.pixel_path is None:
            upsampled, size = self.upsample_and_pad(images)
            return LRLatent(upsampled, size, self.encode(upsampled))
        size = (images.shape[-2] * self.scale, images.shape[-1] * self.scale)
        lr = self.pad_lr(images)
        if not self.pixel_path.uses_latent:
            return LRLatent(None, size, None, lr)  # type: ignore[arg-type]
        upsampled = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)
        return LRLatent(upsampled, size, self.encode(upsampled), lr)

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        """Images in [0,1] (already at the output size) → normalised latent (DiT space)."""
        images01 = images01.to(self.vae.encoder.conv_in.weight.dtype)  # each part in its own dtype
        if self.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            images01 = images01.contiguous(memory_format=torch.channels_last)
        return self.vae.normalize(self.vae.encode_mode(images01))

    def denoise(self, z_sigma: torch.Tensor) -> torch.Tensor:
        """The single DiT step on a normalised latent [B, C, h, w] taken as z_σ: returns ẑ₀."""
        b, _, h, w = z_sigma.shape
        tokens = pack_latents(z_sigma)
        velocity = self.velocity(tokens, h // PATCH, w // PATCH)
        return unpack_latents(x0_from_velocity(tokens, velocity, self.sigma), h, w)

    def velocity(self, tokens: torch.Tensor, rows: int, cols: int, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        """DiT velocity for packed tokens on a rows × cols grid (shared by inference and training)."""
        b = tokens.shape[0]
        # the DiT's own dtype (a bf16 DiT beside an fp32 VAE); the velocity comes back in the tokens'
        device, dtype, tokens_dtype = tokens.device, self.transformer.x_embedder.weight.dtype, tokens.dtype
        tokens = tokens.to(dtype)
        sigma = self.sigma if sigma is None else sigma
        timestep = sigma if isinstance(sigma, torch.Tensor) else torch.full((b,), float(sigma), device=device)
        prompt_embeds, pooled = self.prompt(b)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), float(self.config.guidance), device=device, dtype=dtype)
        return self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=prompt_embeds.to(dtype),
            pooled_projections=pooled.to(dtype),
            timestep=timestep.to(dtype),
            img_ids=image_ids(rows, cols, device=device),
            txt_ids=text_ids(prompt_embeds.shape[1], device=device),
            guidance=guidance,
            return_dict=False,
        )[0].to(tokens_dtype)

    def decode(self, z0: torch.Tensor | None, guide_image: torch.Tensor | None = None, fidelity: float | None = None,
               clamp: bool = True, lr: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latent → images in [0, 1] (not cropped).

        ``guide_image`` is the padded bicubic-upscaled LR (:meth:`upsample_and_pad`); with a
        compensation part and ``fidelity`` > 0 the decoder sees it (``fidelity`` defaults to the
        model's). ``clamp=False`` keeps gradients of out-of-range values (training).
        With a pixel path the output is drawn from ``lr`` (the padded LR, :attr:`LRLatent.lr`)
        with ``z0`` fused in, at the ``fidelity`` blend of its two ends; the decoder is not used.
        """
        weight = self.fidelity if fidelity is None else check_fidelity(fidelity)
        if self.pixel_path is not None:
            if lr is None:
                raise ValueError("a pixel-path model decodes from the padded LR: pass lr=LRLatent.lr")
            out = self.pixel_path(lr.to(self.pixel_path.faithful.span.conv_1.weight.dtype), z0, weight)
            return out.clamp_(0.0, 1.0) if clamp else out
        latents = self.vae.denormalize(z0.to(self.vae.decoder.conv_in.weight.dtype))
        if self.compensation is None or guide_image is None or weight == 0.0:
            out = self.vae.decode_images(latents)
        else:
            comp = self.compensation
            guide = comp.guide(guide_image.to(latents.dtype))
            out = self.vae.decode_images(latents, level_hook=lambda i, f: comp.fuse(i, f, guide, weight))
            out = comp.refine(out, guide_image.to(out.dtype), guide, weight)
            del guide
        return out.clamp_(0.0, 1.0) if clamp else out

    def denoise_tiled(self, z_sigma: torch.Tensor, tiles: TileConfig = TileConfig()) -> torch.Tensor:
        """The OMGSR-style baseline: overlapping latent tiles, each with ids starting at 0."""
        b, c, h, w = z_sigma.shape
        size = min(tiles.tile, h, w)
        size -= size % PATCH
        stride = max(size - tiles.overlap, PATCH)
        tops = window_starts(h, size, stride)
        lefts = window_starts(w, size, stride)
        weight = _gaussian_window(size, tiles.gaussian_sigma, z_sigma.device, z_sigma.dtype)
        out = torch.zeros_like(z_sigma)
        norm = torch.zeros(1, 1, h, w, device=z_sigma.device, dtype=z_sigma.dtype)
        for top in tops:
            for left in lefts:
                tile = z_sigma[:, :, top:top + size, left:left + size]
                x0 = self.denoise(tile)
                out[:, :, top:top + size, left:left + size] += x0 * weight
                norm[:, :, top:top + size, left:left + size] += weight
        return out / norm

    def post_step_names(self, color_fix: str | None = None, grid_fix: str | None = None) -> tuple[str, str]:
        """(colour fix, grid fix) for a call: the overrides or the model's, checked."""
        color = self.config.color_fix if color_fix is None else color_fix
        grid = self.config.grid_fix if grid_fix is None else grid_fix
        if color not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {COLOR_FIXES}, got {color!r}")
        if grid not in GRID_FIXES:
            raise ValueError(f"grid_fix must be one of {GRID_FIXES}, got {grid!r}")
        return color, grid

    def post_process(self, out: torch.Tensor, reference: torch.Tensor | None, size: tuple[int, int],
                     color_fix: str | None = None, grid_fix: str | None = None,
                     images: torch.Tensor | None = None) -> torch.Tensor:
        """The last step: colour anchor and notch (the model's or the given ones) on the padded
        decoder output ``out`` (in place), then the crop to ``size``.

        ``reference`` is the padded bicubic upsample (:attr:`LRLatent.upsampled`); when it was freed
        to save memory pass the LR ``images`` and it is recomputed only if a colour fix needs it.
        """
        height, width = size
        color, grid = self.post_step_names(color_fix, grid_fix)
        if color != "none":
            if reference is None:
                if images is None:
                    raise ValueError("a colour fix needs the bicubic reference or the LR images")
                reference = self.upsample_and_pad(images)[0]
            fixed = apply_color_fix(out[..., :height, :width], reference[..., :height, :width], color)
            out[..., :height, :width] = fixed.clamp_(0.0, 1.0)
            del fixed, reference
        if grid != "none":
            # on the padded output: every window starts on the token grid
            out = token_notch(out).clamp_(0.0, 1.0)
        return out[..., :height, :width]

    # ------------------------------------------------------------------ call
    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, *, tiled: bool = False, tiles: TileConfig = TileConfig(),
                 check_memory: bool = True, color_fix: str | None = None, grid_fix: str | None = None,
                 fidelity: float | None = None) -> torch.Tensor:
        """Super-resolve a batch [B, 3, h, w] in [0, 1] → [B, 3, scale·h, scale·w] in [0, 1].

        ``color_fix``, ``grid_fix`` and ``fidelity`` override the model's configured values for this call.
        The steps are :meth:`lr_latent` → :meth:`denoise` (one DiT call) → :meth:`decode` →
        :meth:`post_process`; training and the diagnostics call the same methods.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] batch, got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        if check_memory:
            self.check_fits(h * self.scale, w * self.scale, batch=b)
        weight = self.fidelity if fidelity is None else check_fidelity(fidelity)
        color_fix, grid_fix = self.post_step_names(color_fix, grid_fix)  # before any work
        images = images.to(self.device, self.dtype)
        lr = self.lr_latent(images)
        guide_image = lr.upsampled if self.compensation is not None and weight > 0 else None
        size, z, lr_padded = lr.size, lr.latent, lr.lr
        del lr  # without compensation, free the full-size input before the DiT (peak = max of stages)
        z0 = None if z is None else self.denoise_tiled(z, tiles) if tiled else self.denoise(z)
        del z
        out = self.decode(z0, guide_image, weight, lr=lr_padded)  # padded to the token grid
        del lr_padded
        del z0
        return self.post_process(out, guide_image, size, color_fix, grid_fix, images=images).float()

    # ------------------------------------------------------------------ planning
    def estimate(self, height: int, width: int, batch: int = 1, dtype: torch.dtype | None = None):
        """Resource estimate for an output of ``height × width`` (see :mod:`op4ksr.models.planner`)."""
        from op4ksr.models.planner import estimate_resources

        return estimate_resources(self, height, width, batch=batch, dtype=dtype or self.dtype)

    def check_fits(self, height: int, width: int, batch: int = 1) -> None:
        """Raise :class:`~op4ksr.models.planner.MemoryPlanError` before allocating if it cannot fit."""
        from op4ksr.models.planner import check_fits

        check_fits(self.estimate(height, width, batch=batch), self.device)


def check_fidelity(fidelity: float) -> float:
    """``fidelity`` as a float, or a ValueError if it is not a number in [0, 1]."""
    value = float(fidelity)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fidelity must be in [0, 1] (0 = the decoder alone, 1 = full compensation), got {fidelity}")
    return value


def _pad_right_bottom(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` padded right/bottom to a multiple of ``multiple``: reflect, or replicate where the pad
    is not smaller than the side (reflect's limit; tiny inputs)."""
    height, width = x.shape[-2:]
    ph, pw = (-height) % multiple, (-width) % multiple
    if not (ph or pw):
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < height and pw < width else "replicate")


def _gaussian_window(size: int, rel_sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-0.5 * (coords / (rel_sigma * size)) ** 2)
    return (g[:, None] * g[None, :]).to(dtype)[None, None]

