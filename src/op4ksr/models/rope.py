"""RoPE base-frequency rescaling (RFR, paper Sec. 3.2).

diffusers builds ``FluxPosEmbed(theta=10000, ...)`` inside ``FluxTransformer2DModel``; OP4KSR
uses instead a module whose base θ is a config value (100 for OP4KSR, 10000 to reproduce the
unrescaled baseline). The per-axis frequencies are θ^(−2i/d), i < d/2, so the phase step between
adjacent tokens on pair i is Δφ_i = θ^(−2i/d) radians (paper Eq. 2).

The tables are computed here, without diffusers (importing it costs seconds; see
``op4ksr.models.modeling``), by the same operations as diffusers' ``get_1d_rotary_pos_embed``
with ``use_real=True, repeat_interleave_real=True``: at θ = 10000 the tables equal
``FluxPosEmbed``'s bit for bit (tests/models/test_transformer_rope.py).
"""

from __future__ import annotations

import torch
from torch import nn

from op4ksr.models.constants import FLUX_ROPE_THETA, OP4KSR_ROPE_THETA  # noqa: F401 - re-exported

# Devices without float64 kernels: the tables are built in float32 there (as diffusers does).
_NO_FLOAT64_DEVICES = frozenset({"mps", "npu", "neuron"})


def rope_frequencies(dim: int, theta: float, *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Δφ_i = θ^(−2i/d) for i = 0 … d/2−1 (radians per unit of position)."""
    if dim % 2:
        raise ValueError(f"RoPE axis dim must be even, got {dim}")
    i = torch.arange(0, dim, 2, dtype=dtype, device=device)
    return 1.0 / (theta ** (i / dim))


def rotary_cos_sin(dim: int, pos: torch.Tensor, theta: float,
                   freqs_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of pos · Δφ_i, each pair's value repeated twice ([S, dim], float32).

    The repetition (c0, c0, c1, c1, …) matches the interleaved (real, imaginary) pairs the
    Flux attention rotates. Same operations in the same order as diffusers'
    ``get_1d_rotary_pos_embed(..., use_real=True, repeat_interleave_real=True)``, minus its
    ×1.0 NTK and ÷1.0 linear factors, which are exact no-ops.
    """
    freqs = torch.outer(pos, rope_frequencies(dim, theta, dtype=freqs_dtype, device=pos.device))  # [S, dim/2]
    if freqs.device.type == "npu":  # no float64 trigonometry there (diffusers does the same)
        freqs = freqs.float()
    cos = freqs.cos().repeat_interleave(2, dim=1, output_size=freqs.shape[1] * 2).float()
    sin = freqs.sin().repeat_interleave(2, dim=1, output_size=freqs.shape[1] * 2).float()
    return cos, sin


class RescaledRoPE(nn.Module):
    """Drop-in replacement for diffusers' ``FluxPosEmbed`` with a configurable base θ.

    Returns the ``(cos, sin)`` pair the Flux attention applies to queries and keys.
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
        # float64 tables where the device supports them
        freqs_dtype = torch.float32 if ids.device.type in _NO_FLOAT64_DEVICES else torch.float64
        cos_out, sin_out = [], []
        for axis, dim in enumerate(self.axes_dim):
            cos, sin = rotary_cos_sin(dim, pos[:, axis], self.theta, freqs_dtype)
            cos_out.append(cos)
            sin_out.append(sin)
        value = (torch.cat(cos_out, dim=-1).to(ids.device), torch.cat(sin_out, dim=-1).to(ids.device))
        self.calls += 1
        if key is not None:
            self._cache_key, self._cache_value = key, value
        return value


def set_rope_theta(transformer: nn.Module, theta: float) -> RescaledRoPE:
    """Replace ``transformer.pos_embed`` (ours or diffusers' ``FluxPosEmbed``) by a
    :class:`RescaledRoPE` with base ``theta``."""
    old = transformer.pos_embed
    module = RescaledRoPE(theta, list(old.axes_dim))
    transformer.pos_embed = module
    return module
