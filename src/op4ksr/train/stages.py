"""The three training stages, each an ``nn.Module`` whose ``forward(batch, generator)`` returns
``(loss, logs)`` so that accelerate/DDP can wrap it like any model.

- ``vae``: train the F16 VAE (reconstruction + perceptual + KL, optional GAN). Needed only where
  no pretrained VAE exists (the compact model).
- ``prior``: train the DiT as a rectified-flow prior on the frozen VAE's latents (and learn the
  fixed prompt embeddings); sets the VAE's latent scaling/shift from data first.
- ``sr``: OP4KSR itself (paper Sec. 3, Fig. 4): LoRA on the VAE encoder and the DiT, frozen
  decoder, frozen encoder copy for z_HR; L_vae + image losses + L_AP; RFR by ``sr.rope_theta``.

Every stage exports a complete op4ksr model directory, so each stage's output feeds the next by
path (``model.init``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.losses.combined import ImageLosses, WeightedLosses
from op4ksr.models.constants import check_sigma
from op4ksr.models.flow import noisy_latent, velocity_target
from op4ksr.models.packing import PATCH, pack_latents
from op4ksr.models.pipeline import OP4KSRPipeline
from op4ksr.train.config import TrainConfig


def _image_losses(cfg: TrainConfig) -> ImageLosses:
    """The registered image losses with weight > 0 in ``[loss]`` (the others are not built)."""
    return ImageLosses(cfg.loss.weights, cfg.loss.options)


def _losses(cfg: TrainConfig, kind: str) -> WeightedLosses:
    return WeightedLosses(cfg.loss.weights, cfg.loss.options, kind=kind)


def _adversarial(cfg: TrainConfig) -> tuple[nn.Module | None, WeightedLosses]:
    """The adversarial losses and the PatchGAN they need, if any (the trainer adds their terms and
    steps the discriminator)."""
    losses = _losses(cfg, "adversarial")
    if not len(losses):
        return None, losses
    from op4ksr.losses.adversarial import PatchDiscriminator

    return PatchDiscriminator(), losses


def sr_rope_scaling(sr) -> dict | None:
    """The ``rope_scaling`` the sr stage trains with (``sr.rope_scaling``; see docs/ARCHITECTURE.md):
    "auto" is UltraFlux's YaRN at Flux's θ = 10000 and plain RoPE at RFR's θ."""
    from op4ksr.models.constants import FLUX_ROPE_THETA
    from op4ksr.models.rope import ULTRAFLUX_ROPE_SCALING

    choice = sr.rope_scaling
    if choice == "auto":
        choice = "ultraflux" if float(sr.rope_theta) == FLUX_ROPE_THETA else "none"
    return dict(ULTRAFLUX_ROPE_SCALING) if choice == "ultraflux" else None


def frozen_dit_dtype(cfg: TrainConfig) -> torch.dtype:
    """``sr.frozen_dit_dtype``: "auto" is the init model's stored transformer dtype when that is
    bf16 (a converted UltraFlux), fp32 otherwise."""
    choice = cfg.sr.frozen_dit_dtype
    if choice == "auto":
        from op4ksr.models.loading import stored_dtype

        init = Path(cfg.model.init)
        stored = stored_dtype(init / "transformer", init, "transformer")
        return torch.bfloat16 if stored == torch.bfloat16 else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[choice]


def _load_init(cfg: TrainConfig, part_dtypes: dict[str, torch.dtype] | None = None) -> OP4KSRPipeline:
    """The init model in fp32, each part converted once straight from its file (``part_dtypes``
    keeps named parts in another dtype)."""
    from op4ksr.models.loading import from_pretrained

    return from_pretrained(cfg.model.init, device="cpu", dtype=torch.float32, part_dtypes=part_dtypes)


class Stage(nn.Module):
    """Common interface. Subclasses set ``self.pipe`` and implement ``forward``/``sample``."""

    name = "stage"
    pipe: OP4KSRPipeline

    def __init__(self) -> None:
        super().__init__()
        # An instance attribute (not a class default), so that assigning a discriminator module
        # registers it as a child and `self.discriminator` finds it.
        self.discriminator: nn.Module | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("discriminator.")]

    # Frozen modules whose state still changes during training and must be checkpointed: the
    # discriminator (its spectral-norm vectors are buffers) and an exponential moving average.
    CHECKPOINTED_PREFIXES = ("discriminator.", "pixel_ema.")

    def select_trainable(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of a (local or gathered) state dict that checkpoints keep: trainable
        parameters, plus the modules of :attr:`CHECKPOINTED_PREFIXES`."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in state.items() if k in names or k.startswith(self.CHECKPOINTED_PREFIXES)}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.select_trainable(self.state_dict())

    def check_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """ValueError if ``state`` lacks a tensor that :meth:`trainable_state_dict` holds, or holds
        one of another shape (a tampered or foreign checkpoint)."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        for key, tensor in expected.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise ValueError(f"{key} has shape {tuple(state[key].shape)}, the model's is {tuple(tensor.shape)}")

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.check_trainable_state(state)
        self.load_state_dict(state, strict=False)

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state beyond the weights (e.g. latent statistics) for checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def fake_for_discriminator(self) -> torch.Tensor | None:
        return getattr(self, "_last_fake", None)

    def after_optimizer_step(self) -> None:
        """Called by the trainer after every optimizer step (e.g. to update a moving average)."""

    @torch.no_grad()
    def sample(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Validation outputs: ``{"pred": images, "target": images}`` (stage-specific)."""
        raise NotImplementedError

    def export(self, directory: Path) -> Path:
        raise NotImplementedError


class VAEStage(Stage):
    name = "vae"

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        from op4ksr.models.presets import build_pipeline

        if cfg.model.init:
            self.pipe = _load_init(cfg)
        else:
            self.pipe = build_pipeline(cfg.model.preset, seed=cfg.run.seed, overrides=cfg.model.overrides)
        # channels-last convolutions run ~1.3–1.8× faster on CPU (reference.md; benchmarks/)
        self.vae = self.pipe.vae.train().requires_grad_(True).to(memory_format=torch.channels_last)
        self.pipe.transformer.requires_grad_(False)
        self.pipe.prompt.requires_grad_(False)
        self.losses = _image_losses(cfg)
        self.posterior_losses = _losses(cfg, "posterior")  # the KL
        self.sample_posterior = cfg.vae.sample_posterior
        if cfg.run.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        self.discriminator, self.adversarial_losses = _adversarial(cfg)

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        hr = batch["hr"].contiguous(memory_format=torch.channels_last)
        posterior = self.vae.encode(hr * 2 - 1).latent_dist
        z = posterior.sample(generator=generator) if self.sample_posterior else posterior.mode()
        rec = (self.vae.decode(z).sample + 1) / 2
        loss, logs = self.losses(rec, hr)
        terms = self.posterior_losses.terms(posterior)
        self._last_fake = rec
        return self.posterior_losses.add_terms(loss, logs, terms), logs

    @torch.no_grad()
    def sample(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        hr = batch["hr"]
        return {"pred": self.vae.decode_images(self.vae.encode_mode(hr)).clamp(0, 1), "target": hr}

    def export(self, directory: Path) -> Path:
        self.vae.eval()
        self.pipe.save_pretrained(directory)
        _write_training_note(directory, "vae", trained=["vae"])
        return directory


class PriorStage(Stage):
    name = "prior"

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.pipe = _load_init(cfg)
        self.vae = self.pipe.vae.eval().requires_grad_(False)  # a child, so .to(device) moves it
        overrides = cfg.model.overrides.get("transformer", {})
        if "rope_theta" in overrides:
            self.pipe.transformer.set_rope_theta(float(overrides["rope_theta"]))
        self.transformer = self.pipe.transformer.train().requires_grad_(True)
        self.prompt = self.pipe.prompt.requires_grad_(cfg.prior.learn_prompt)
        if cfg.run.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.sampling = cfg.prior.sigma_sampling
        self.stats_batches = cfg.prior.latent_stats_batches
        self.latent_stats: dict[str, float] | None = None

    def set_latent_stats(self, batches: list[torch.Tensor]) -> dict[str, float]:
        """Set the VAE's shift/scale so that normalised latents have zero mean and unit std."""
        with torch.no_grad():
            z = torch.cat([self.pipe.vae.encode_mode(b) for b in batches])
        mean, std = float(z.mean()), float(z.std())
        self.load_extra_state({"latent_shift": mean, "latent_scale": 1.0 / max(std, 1e-6)})
        return self.latent_stats  # type: ignore[return-value]

    def extra_state(self) -> dict[str, Any]:
        return dict(self.latent_stats or {})

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "latent_shift" in state:
            self.latent_stats = {"latent_shift": state["latent_shift"], "latent_scale": state["latent_scale"]}
            self.pipe.vae.register_to_config(shift_factor=state["latent_shift"], scaling_factor=state["latent_scale"])

    def _sigmas(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        if self.sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))  # logit-normal(0, 1)

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        hr = batch["hr"]
        with torch.no_grad():
            z0 = self.pipe.vae.normalize(self.pipe.vae.encode_mode(hr))
        b, _, h, w = z0.shape
        sigma = self._sigmas(b, generator, z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        z_sigma = noisy_latent(z0, noise, sigma)
        v = self.pipe.velocity(pack_latents(z_sigma), h // PATCH, w // PATCH, sigma=sigma)
        loss = F.mse_loss(v.float(), pack_latents(velocity_target(z0, noise)).float())
        return loss, {"flow_mse": float(loss.detach())}

    @torch.no_grad()
    def sample(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One-step reconstruction of HR latents noised to the pipeline's σ (fixed noise)."""
        hr = batch["hr"]
        z0 = self.pipe.vae.normalize(self.pipe.vae.encode_mode(hr))
        gen = torch.Generator(device=z0.device).manual_seed(0)
        noise = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
        pred = self.pipe.decode(self.pipe.denoise(noisy_latent(z0, noise, self.pipe.sigma)))
        return {"pred": pred, "target": hr}

    def export(self, directory: Path) -> Path:
        self.transformer.eval()
        self.pipe.prompt.requires_grad_(False)
        self.pipe.save_pretrained(directory)
        _write_training_note(directory, "prior", trained=["transformer", "prompt"], extra=self.extra_state())
        return directory


class SRStage(Stage):
    """OP4KSR's one-step SR fine-tuning (paper Fig. 4)."""

    name = "sr"

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        from op4ksr.models.lora import DIT_TARGETS, VAE_ENCODER_TARGETS, LoraSettings, add_lora

        self.pipe = _load_init(cfg, {"transformer": frozen_dit_dtype(cfg)})
        self.posterior = cfg.sr.posterior
        if cfg.sr.sigma > 0:
            self.pipe.register_to_config(sigma=check_sigma(cfg.sr.sigma, what="sr.sigma"))
        # RFR (or the θ=10000 baseline, with UltraFlux's extension beyond 2048 px)
        self.pipe.transformer.set_rope_theta(cfg.sr.rope_theta, rope_scaling=sr_rope_scaling(cfg.sr))
        self.pipe.vae.eval().requires_grad_(False)  # decoder frozen; only LoRA below trains
        self.pipe.transformer.eval().requires_grad_(False)
        self.pipe.prompt.requires_grad_(False)
        settings = LoraSettings(rank=cfg.sr.lora_rank, alpha=cfg.sr.lora_alpha)
        self.adapted: dict[str, list[str]] = {}
        # L_vae (the latent losses) aligns the encoder LoRA's latent with the noised z_HR, when it trains.
        self.latent_losses = _losses(cfg, "latent")
        if cfg.sr.train_vae_encoder:
            if len(self.latent_losses):
                # z_HR comes from a frozen copy of the *original* encoder (OMGSR's L_vae target).
                self.frozen_vae = copy.deepcopy(self.pipe.vae).eval().requires_grad_(False)
            self.adapted["vae"] = add_lora(self.pipe.vae, VAE_ENCODER_TARGETS, settings)
        if cfg.sr.train_dit:
            self.adapted["transformer"] = add_lora(self.pipe.transformer, DIT_TARGETS, settings)
        if cfg.sr.compensation and self.pipe.compensation is None:
            from op4ksr.models.presets import build_compensation

            comp = build_compensation(cfg.model.preset, self.pipe.vae.config)
            self.pipe.register_modules(compensation=comp.to(memory_format=torch.channels_last))
        if self.pipe.compensation is not None:
            self.pipe.compensation.train(cfg.sr.train_compensation).requires_grad_(cfg.sr.train_compensation)
        if cfg.sr.train_decoder:
            self.pipe.vae.decoder.requires_grad_(True)
        self.end_fidelity = 1.0  # the fidelity the trained output is made at (full compensation / faithful end)
        self.pixel_ema: nn.Module | None = None
        if cfg.sr.pixel_path and self.pipe.pixel_path is None:
            self._add_pixel_path(cfg)
        if self.pipe.pixel_path is not None:
            self._select_pixel_end(cfg)
        # Register the parts as children so DDP/accelerate see the trainable parameters.
        self.vae = self.pipe.vae
        self.transformer = self.pipe.transformer
        self.prompt = self.pipe.prompt
        self.compensation = self.pipe.compensation
        self.pixel_path = self.pipe.pixel_path
        if cfg.run.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
            self.transformer.enable_gradient_checkpointing()
        self.losses = _image_losses(cfg)
        self.discriminator, self.adversarial_losses = _adversarial(cfg)

    def _add_pixel_path(self, cfg: TrainConfig) -> None:
        """A pixel path of the preset's widths, both ends from the SPAN weights; no compensation,
        no post-steps (the network's own output is what ships)."""
        from op4ksr.models.presets import build_pixel_path
        from op4ksr.models.span_ncnn import load_span_weights

        pixel_path = build_pixel_path(cfg.model.preset, self.pipe.vae.config, use_latent=cfg.sr.pixel_path_latent)
        pixel_path.load_span(load_span_weights(cfg.sr.pixel_path_span).state_dict())
        self.pipe.register_modules(pixel_path=pixel_path.to(memory_format=torch.channels_last), compensation=None)
        self.pipe.register_to_config(color_fix="none", grid_fix="none")

    def _select_pixel_end(self, cfg: TrainConfig) -> None:
        """Freeze the pixel path but the end ``sr.train_end``; optionally keep its moving average."""
        pixel_path = self.pipe.pixel_path.requires_grad_(False).eval()
        if cfg.sr.perceptual_from_faithful:
            pixel_path.perceptual.load_state_dict(pixel_path.faithful.state_dict())
        self.end_fidelity = 1.0 if cfg.sr.train_end == "faithful" else 0.0
        self.train_end = cfg.sr.train_end
        branch = getattr(pixel_path, cfg.sr.train_end).train().requires_grad_(True)
        self.ema_decay = cfg.sr.ema_decay
        if self.ema_decay > 0:
            self.pixel_ema = copy.deepcopy(branch).eval().requires_grad_(False)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.pixel_ema is None:
            return
        branch = getattr(self.pipe.pixel_path, self.train_end)
        for ema, current in zip(self.pixel_ema.parameters(), branch.parameters()):
            ema.lerp_(current, 1.0 - self.ema_decay)

    def _encode(self, vae, images01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Un-normalised latent of images in [0, 1]: the posterior mode, or with
        ``sr.posterior = "sample"`` a posterior sample (OMGSR encodes LR and HR that way)."""
        if self.posterior == "sample":
            return vae.encode(images01 * 2.0 - 1.0).latent_dist.sample(generator=generator)
        return vae.encode_mode(images01)

    def _lr_latent(self, lr: torch.Tensor, generator: torch.Generator):
        """The pipeline's first step (:meth:`OP4KSRPipeline.lr_latent`), sampling the posterior if asked."""
        if self.posterior == "mode" or self.pipe.pixel_path is not None:  # the pixel path fuses ẑ₀ of the mode
            return self.pipe.lr_latent(lr)
        from op4ksr.models.pipeline import LRLatent

        upsampled, size = self.pipe.upsample_and_pad(lr)
        return LRLatent(upsampled, size, self.pipe.vae.normalize(self._encode(self.pipe.vae, upsampled, generator)))

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        hr, lr = batch["hr"], batch["lr"]
        sigma = self.pipe.sigma
        logs: dict[str, float] = {}
        # Without LoRA (compensation- or decoder-only runs) the latent path needs no graph.
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.adapted)):
            lr_latent = self._lr_latent(lr, generator)  # the pipeline's own first step
            z_lr = lr_latent.latent  # E_LoRA(LR), taken as z_σ
            latent_terms: dict[str, torch.Tensor] = {}
            if "vae" in self.adapted and len(self.latent_losses):
                with torch.no_grad():
                    z_hr = self.frozen_vae.normalize(self._encode(self.frozen_vae, hr, generator))
                noise = torch.randn(z_hr.shape, generator=generator, device=z_hr.device, dtype=z_hr.dtype)
                latent_terms = self.latent_losses.terms(z_lr, noisy_latent(z_hr, noise, sigma))
            z0 = None if z_lr is None else self.pipe.denoise(z_lr)
        # full compensation (or the trained end of the pixel path); users set --fidelity
        sr = self.pipe.decode(z0, lr_latent.upsampled, fidelity=self.end_fidelity, clamp=False,
                              lr=lr_latent.lr)[..., : hr.shape[-2], : hr.shape[-1]]
        loss, logs = self.losses(sr, hr)
        self._last_fake = sr
        return self.latent_losses.add_terms(loss, logs, latent_terms), logs

    @torch.no_grad()
    def sample(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``pred``: the shipped path (the pipeline's call, post-steps included); ``raw``: the
        network alone (the same steps, no colour anchor or notch)."""
        hr, lr = batch["hr"], batch["lr"]
        lr_latent = self.pipe.lr_latent(lr)
        (h, w), x = lr_latent.size, lr_latent.upsampled
        if x is None:  # a pixel path without the latent branch: no bicubic was made
            x = self.pipe.upsample_and_pad(lr)[0]
        z0 = None if lr_latent.latent is None else self.pipe.denoise(lr_latent.latent)
        fidelity = self.end_fidelity if self.pipe.pixel_path is not None else None  # the end being trained
        out = self.pipe.decode(z0, x, fidelity, lr=lr_latent.lr)  # padded to the token grid
        raw = out[..., :h, :w].clone()
        pred = self.pipe.post_process(out, x, (h, w))  # = self.pipe(lr), one network pass for both
        return {"pred": pred, "raw": raw, "target": hr, "bicubic": x[..., :h, :w]}

    def export(self, directory: Path) -> Path:
        from op4ksr.models.lora import merge_lora, save_lora

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        adapters = directory.parent / f"{directory.name}-lora"
        adapters.mkdir(parents=True, exist_ok=True)
        pipe = copy.deepcopy(self.pipe)
        if self.pixel_ema is not None:  # ship the moving average of the trained end
            getattr(pipe.pixel_path, self.train_end).load_state_dict(self.pixel_ema.state_dict())
        if pipe.pixel_path is not None:
            pipe.pixel_path.eval()
        for part in self.adapted:
            save_lora(getattr(pipe, part), adapters / f"{part}_lora.safetensors")
            merge_lora(getattr(pipe, part))
        pipe.save_pretrained(directory)
        trained = sorted(self.adapted)
        if self.compensation is not None and any(p.requires_grad for p in self.compensation.parameters()):
            trained.append("compensation")
        if any(p.requires_grad for p in self.pipe.vae.decoder.parameters()):
            trained.append("vae.decoder")
        if self.pipe.pixel_path is not None:
            trained.append(f"pixel_path.{self.train_end}" + (" (EMA)" if self.pixel_ema is not None else ""))
        _write_training_note(directory, "sr", trained=trained)
        return directory


def _write_training_note(directory: Path, stage: str, trained: list[str], extra: dict | None = None) -> None:
    note = {"stage": stage, "trained_parts": trained, **(extra or {})}
    (Path(directory) / "training.json").write_text(json.dumps(note, indent=1))


STAGE_CLASSES: dict[str, type[Stage]] = {"vae": VAEStage, "prior": PriorStage, "sr": SRStage}


def build_stage(cfg: TrainConfig) -> Stage:
    return STAGE_CLASSES[cfg.stage](cfg)


def warmup_lambda(warmup_steps: int):
    """Linear warm-up to the base learning rate, then constant."""
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps))

    return factor


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = float(F.mse_loss(pred.clamp(0, 1), target))
    return 10 * math.log10(1.0 / max(mse, 1e-12))
