"""2×2 latent packing into DiT tokens, and the image position ids — the one place they live.

Flux packs each 2×2 neighbourhood of a C-channel latent into one token of 4·C channels, in the
channel order (c, dy, dx); image token ids are ``[0, row, col]``.
"""

from __future__ import annotations

import torch

from op4ksr.models.constants import PATCH  # 2×2 packing; with the F16 VAE one token covers 32×32 pixels


def window_starts(length: int, side: int, stride: int) -> list[int]:
    """Starts of windows of ``side`` every ``stride`` covering [0, length); the last one ends at
    ``length`` (the tiled baseline's latent tiles and the notch's pixel windows)."""
    if length <= side:
        return [0]
    starts = list(range(0, length - side + 1, stride))
    if starts[-1] + side < length:
        starts.append(length - side)
    return starts


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, (H/2)·(W/2), 4C] (row-major tokens)."""
    b, c, h, w = latents.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"latent size {h}×{w} is not a multiple of {PATCH}")
    x = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: [B, (H/2)·(W/2), 4C] → [B, C, H, W] (H, W latent size)."""
    b, n, d = tokens.shape
    hh, ww = height // PATCH, width // PATCH
    if hh * ww != n or d % (PATCH * PATCH):
        raise ValueError(f"{n} tokens of {d} channels do not unpack to a {height}×{width} latent")
    c = d // (PATCH * PATCH)
    x = tokens.view(b, hh, ww, c, PATCH, PATCH)
    x = x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(token_rows: int, token_cols: int, *, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids ``[0, row, col]`` for a token_rows × token_cols grid, shape [rows·cols, 3]."""
    ids = torch.zeros(token_rows, token_cols, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(token_rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(token_cols, device=device, dtype=dtype)[None, :]
    return ids.reshape(token_rows * token_cols, 3)


def text_ids(length: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Flux gives every text token the id ``[0, 0, 0]``."""
    return torch.zeros(length, 3, device=device, dtype=dtype)
