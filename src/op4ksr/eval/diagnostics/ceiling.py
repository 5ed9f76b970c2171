"""The VAE ceiling: how faithful the decoder alone can be, next to what the SR output reaches.

The F16 latent holds 48× fewer numbers than the image (reference.md), so the decoder's
reconstruction of the *ground truth* from its own latent bounds a pipeline that only decodes.
``vae_ceiling`` measures, per image of paired suites (``syn``, ``mild``), the same metrics for:

- ``vae``: the best the frozen decoder can draw from *any* latent: a latent fitted to the ground
  truth by gradient descent on the decoder's MSE (Adam, started from the latent the DiT
  produced from the LR), no LR guidance. A plain encode/decode is not the ceiling of a
  shipped SR model: its encoder carries the SR stage's merged LoRA, which maps inputs to the
  *noised* latent z_σ, so it under-states the decoder (19.7 dB on mild1024 for v0.3 against
  32.7 dB for its SR output);
- ``sr``: the model's output as configured (compensation at the model's fidelity, post-steps);
- ``sr_fidelity0``: the same with the compensation off (``fidelity = 0``), if the model has one;
- ``bicubic``: the bicubic-upscaled LR, the baseline every user already has.

An SR output above the ``vae`` row is no longer capped by the decoder (the compensation puts
back what the latent truncated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

CEILING_METRICS = ("psnr_y", "lpips", "delta_e")


@dataclass
class CeilingRow:
    suite: str
    image: str
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # variant → metric → value


def decoder_ceiling(pipe, hr: torch.Tensor, lr_image: torch.Tensor, steps: int = 40, lr: float = 0.05) -> torch.Tensor:
    """``hr`` [B,3,H,W] in [0,1] → the decoder's output for a latent fitted to ``hr``, started
    from the SR latent of ``lr_image`` (see module doc)."""
    h, w = hr.shape[-2:]
    with torch.no_grad():
        lr_latent = pipe.lr_latent(lr_image.to(pipe.device, pipe.dtype))
        up = lr_latent.upsampled
        z = pipe.vae.denormalize(pipe.denoise(lr_latent.latent))
    x = F.pad(hr.to(z.device, z.dtype), (0, up.shape[-1] - w, 0, up.shape[-2] - h), mode="replicate")
    z = z.detach().requires_grad_(True)
    optim = torch.optim.Adam([z], lr=lr)
    best, best_loss = None, float("inf")
    with torch.enable_grad():
        for _ in range(steps):
            out = pipe.vae.decode_images(z)
            loss = F.mse_loss(out, x)
            if loss.item() < best_loss:
                best, best_loss = out.detach(), loss.item()
            optim.zero_grad()
            loss.backward()
            optim.step()
    return best[..., :h, :w].clamp(0, 1).float().cpu()


def _centre_crop(hr: torch.Tensor, lr: torch.Tensor, crop: int | None, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same centre region of HR and LR (``crop`` HR pixels, rounded to the scale)."""
    if crop is None or min(hr.shape[-2:]) <= crop:
        return hr, lr
    c = crop // scale
    top, left = (lr.shape[-2] - c) // 2, (lr.shape[-1] - c) // 2
    return (hr[..., top * scale:(top + c) * scale, left * scale:(left + c) * scale],
            lr[..., top:top + c, left:left + c])


def vae_ceiling(pipe, suites: Sequence, metrics: dict[str, object], *, crop: int | None = 512, steps: int = 40,
                on_progress: Callable[[int, int], None] | None = None) -> list[CeilingRow]:
    """One :class:`CeilingRow` per image of the paired suites (see the module doc), on centre
    crops of ``crop`` output pixels (the latent fit costs ``steps`` decoder passes)."""
    from op4ksr.eval.bench import load_tensor

    items = [(s, it) for s in suites if s.has_ground_truth for it in s.items]
    rows: list[CeilingRow] = []
    for i, (suite, item) in enumerate(items):
        if on_progress:
            on_progress(i, len(items))
        hr, lr = _centre_crop(load_tensor(Path(item.hr)), load_tensor(Path(item.lr)), crop, pipe.scale)
        outputs = {
            "vae": decoder_ceiling(pipe, hr, lr, steps=steps),
            "sr": pipe(lr).cpu(),
            "bicubic": F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1),
        }
        if pipe.compensation is not None:
            outputs["sr_fidelity0"] = pipe(lr, fidelity=0.0).cpu()
        row = CeilingRow(suite.label, item.name)
        for variant, image in outputs.items():
            row.values[variant] = {name: float(metric(image, hr)[0]) for name, metric in metrics.items()}
        rows.append(row)
    if on_progress:
        on_progress(len(items), len(items))
    return rows


def ceiling_means(rows: Sequence[CeilingRow]) -> dict[str, dict[str, dict[str, float]]]:
    """suite → variant → metric → mean over the suite's images."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in rows:
        for variant, values in row.values.items():
            for metric, value in values.items():
                out.setdefault(row.suite, {}).setdefault(variant, {}).setdefault(metric, []).append(value)
    return {s: {v: {m: sum(x) / len(x) for m, x in ms.items()} for v, ms in vs.items()} for s, vs in out.items()}
