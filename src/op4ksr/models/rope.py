"""RoPE base-frequency rescaling (RFR, paper Sec. 3.2).

diffusers builds ``FluxPosEmbed(theta=10000, ...)`` inside ``FluxTransformer2DModel``; OP4KSR
replaces that module with one whose base θ is a config value (100 for OP4KSR, 10000 to
reproduce the unrescaled baseline). The per-axis frequencies are θ^(−2i/d), i < d/2, so the
phase step between adjacent tokens on pair i is Δφ_i = θ^(−2i/d) radians (paper Eq. 2).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import nn

OP4KSR_ROPE_THETA = 100.0
FLUX_ROPE_THETA = 10000.0


def rope_frequencies(dim: int, theta: float, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Δφ_i = θ^(−2i/d) for i = 0 … d/2−1 (radians per unit of position)."""
    if dim % 2:
        raise ValueError(f"RoPE axis dim must be even, got {dim}")
    i = torch.arange(0, dim, 2, dtype=dtype)
    return 1.0 / (theta ** (i / dim))


class RescaledRoPE(nn.Module):
    """Drop-in replacement for diffusers' ``FluxPosEmbed`` with a configurable base θ.

    Returns the ``(cos, sin)`` pair the Flux attention processor applies to queries and keys.
    The table for the last ids seen is cached: in one-step inference the same grid is embedded
    once per call, and training batches usually share a grid.
    """

    def __init__(self, theta: float, axes_dim: list[int] | tuple[int, ...]):
        super().__init__()
        self.theta = float(theta)
        self.axes_dim = list(axes_dim)
        self._cache_key: tuple | None = None
        self._cache_value: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calls = 0  # number of tables computed: lets tests prove the module is live

    def extra_repr(self) -> str:
        return f"theta={self.theta:g}, axes_dim={self.axes_dim}"

    def _key(self, ids: torch.Tensor) -> tuple | None:
        # Only CPU ids are fingerprinted (hashing their bytes is cheap there); on accelerators
        # reading the ids back would force a host-device sync, and the table is cheap to rebuild.
        if ids.device.type != "cpu":
            return None
        return (tuple(ids.shape), ids.dtype, self.theta, hash(ids.detach().contiguous().numpy().tobytes()))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key(ids)
        if key is not None and key == self._cache_key and self._cache_value is not None:
            return self._cache_value
        pos = ids.float()
        # float64 tables where the device supports them (MPS does not)
        freqs_dtype = torch.float32 if ids.device.type == "mps" else torch.float64
        cos_out, sin_out = [], []
        for axis, dim in enumerate(self.axes_dim):
            cos, sin = get_1d_rotary_pos_embed(
                dim, pos[:, axis], theta=self.theta, repeat_interleave_real=True, use_real=True,
                freqs_dtype=freqs_dtype,
            )
            cos_out.append(cos)
            sin_out.append(sin)
        value = (torch.cat(cos_out, dim=-1).to(ids.device), torch.cat(sin_out, dim=-1).to(ids.device))
        self.calls += 1
        if key is not None:
            self._cache_key, self._cache_value = key, value
        return value


def set_rope_theta(transformer: nn.Module, theta: float) -> RescaledRoPE:
    """Replace ``transformer.pos_embed`` by a :class:`RescaledRoPE` with base ``theta``."""
    old = transformer.pos_embed
    module = RescaledRoPE(theta, list(old.axes_dim))
    transformer.pos_embed = module
    return module
