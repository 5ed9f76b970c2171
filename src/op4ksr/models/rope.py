"""RoPE base-frequency rescaling (RFR, paper Sec. 3.2).

diffusers builds ``FluxPosEmbed(theta=10000, ...)`` inside ``FluxTransformer2DModel``; OP4KSR
uses instead a module whose base θ is a config value (100 for OP4KSR, 10000 to reproduce the
unrescaled baseline). The per-axis frequencies are θ^(−2i/d), i < d/2, so the phase step between
adjacent tokens on pair i is Δφ_i = θ^(−2i/d) radians (paper Eq. 2).

The tables are computed here, without diffusers (importing it costs seconds; see
``op4ksr.models.modeling``), by the same operations as diffusers' ``get_1d_rotary_pos_embed``
with ``use_real=True, repeat_interleave_real=True``: at θ = 10000 the tables equal
``FluxPosEmbed``'s bit for bit (tests/models/test_transformer_rope.py).

**UltraFlux's extension beyond its training window** (``rope_scaling``, :data:`ULTRAFLUX_ROPE_SCALING`):
UltraFlux's transformer (``method: "yarn"``, its default) keeps plain RoPE while a spatial axis
spans at most ``base_tokens`` = 64 tokens (2048 px); above, per spatial axis with s = span / 64:
"resonance" rounding of each pair's exponent (the pair's rotations within the window rounded to
a whole number ≥ 1), then YaRN: linear interpolation (÷s) and NTK (base θ·s^(d/(d−2))) blended
over the β band (1.25 … 0.75 rotations), the original frequencies kept over the γ band (16 … 2),
and cos and sin multiplied by mscale = 1 + 0.1·ln s. The text axis is never scaled. It applies
to whatever base θ the module has; what RFR's θ = 100 does with it is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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


# UltraFlux's values (its transformer_flux_visionyarn.py): 2048-px training window / 32 px per token,
# YaRN's β and γ bands in rotations within the window, mscale coefficient, resonance floor.
ULTRAFLUX_ROPE_SCALING = {
    "type": "ultraflux_yarn", "base_tokens": 64, "beta": [1.25, 0.75], "gamma": [16.0, 2.0],
    "mscale": 0.1, "resonance": True, "resonance_min_rotations": 1.0,
}
ROPE_SCALING_TYPES = ("ultraflux_yarn",)


def check_rope_scaling(scaling: Mapping | None) -> dict | None:
    """``None`` (plain RoPE) or a complete scaling dict (missing keys: UltraFlux's values)."""
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping) or scaling.get("type") not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope_scaling must be null or a mapping with type in {ROPE_SCALING_TYPES}, got {scaling!r}")
    unknown = set(scaling) - set(ULTRAFLUX_ROPE_SCALING)
    if unknown:
        raise ValueError(f"rope_scaling has unknown keys {sorted(unknown)}")
    merged = {**ULTRAFLUX_ROPE_SCALING, **scaling}
    if not (isinstance(merged["base_tokens"], int) and merged["base_tokens"] > 0):
        raise ValueError(f"rope_scaling base_tokens must be a positive integer, got {merged['base_tokens']!r}")
    for band in ("beta", "gamma"):
        value = merged[band]
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and v > 0 for v in value)):
            raise ValueError(f"rope_scaling {band} must be two positive numbers of rotations, got {value!r}")
    for key in ("mscale", "resonance_min_rotations"):
        if not isinstance(merged[key], (int, float)) or isinstance(merged[key], bool):
            raise ValueError(f"rope_scaling {key} must be a number, got {merged[key]!r}")
    return merged


def ultraflux_rope_scaling(transformer_config: Mapping) -> dict | None:
    """The ``rope_scaling`` an unmodified UltraFlux transformer with this (its own) config computes:
    UltraFlux's YaRN for ``method`` "yarn" (its default), plain RoPE for any other method
    (its "base"/"ntk" branches keep the plain tables: ``ntk_factor`` is never passed to them)."""
    return dict(ULTRAFLUX_ROPE_SCALING) if transformer_config.get("method", "yarn") == "yarn" else None


def _correction_range(rotations: tuple[float, float], dim: int, theta: float, base_tokens: int) -> tuple[float, float]:
    """YaRN's band, in pair indices, between the pairs turning ``rotations[0]`` and ``rotations[1]``
    times within the window (the inverse of rotations = base_tokens / (2π θ^(2i/d)))."""
    def pair(rot: float) -> float:
        return dim * math.log(base_tokens / (rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = math.floor(pair(rotations[0])), math.ceil(pair(rotations[1]))
    return max(low, 0), min(high, dim - 1, dim // 2)


def _ramp(low: float, high: float, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    if low == high:
        high += 0.001  # YaRN's guard against a zero-width band
    ramp = (torch.arange(n, dtype=torch.float32, device=device) - low) / (high - low)
    return ramp.clamp(0, 1).to(dtype)


def yarn_frequencies(dim: int, theta: float, scale: float, scaling: Mapping, *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """UltraFlux's per-pair frequencies for an axis spanning ``scale`` × its training window."""
    log_theta = torch.log(torch.tensor(theta, dtype=dtype, device=device))
    exponent = torch.arange(0, dim, 2, dtype=dtype, device=device) / dim  # 2i/d
    base_tokens = scaling["base_tokens"]
    if scaling["resonance"]:
        window = torch.tensor(float(base_tokens), dtype=dtype, device=device)
        rotations = window * torch.exp(exponent * log_theta) / (2.0 * math.pi)
        rotations = torch.clamp(torch.round(rotations), min=scaling["resonance_min_rotations"])
        exponent = torch.log(2.0 * math.pi * rotations / window) / log_theta
    base = 1.0 / torch.exp(exponent * log_theta)
    linear = base / scale
    ntk_base = torch.tensor(float(theta * scale ** (dim / (dim - 2))), dtype=dtype, device=device)
    ntk = 1.0 / torch.exp(exponent * torch.log(ntk_base))
    mask = 1 - _ramp(*_correction_range(tuple(scaling["beta"]), dim, theta, base_tokens), dim // 2, dtype, device)
    freqs = linear * (1 - mask) + ntk * mask
    mask = 1 - _ramp(*_correction_range(tuple(scaling["gamma"]), dim, theta, base_tokens), dim // 2, dtype, device)
    return freqs * (1 - mask) + base * mask


def scaled_rotary_cos_sin(dim: int, pos: torch.Tensor, theta: float, scaling: Mapping | None,
                          freqs_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rotary_cos_sin` for a spatial axis: plain within the training window (or without
    ``scaling``), UltraFlux's YaRN tables × mscale beyond it (the span is max − min + 1 of ``pos``)."""
    if scaling is None or pos.numel() == 0:
        return rotary_cos_sin(dim, pos, theta, freqs_dtype)
    span = int(pos.max().item() - pos.min().item() + 1)
    if span <= scaling["base_tokens"]:
        return rotary_cos_sin(dim, pos, theta, freqs_dtype)
    scale = span / scaling["base_tokens"]
    freqs = torch.outer(pos.to(freqs_dtype), yarn_frequencies(dim, theta, scale, scaling, dtype=freqs_dtype,
                                                              device=pos.device))
    mscale = 1.0 + scaling["mscale"] * math.log(scale)
    cos = freqs.cos().repeat_interleave(2, dim=1, output_size=freqs.shape[1] * 2).float() * mscale
    sin = freqs.sin().repeat_interleave(2, dim=1, output_size=freqs.shape[1] * 2).float() * mscale
    return cos, sin


class RescaledRoPE(nn.Module):
    """Drop-in replacement for diffusers' ``FluxPosEmbed`` with a configurable base θ.

    Returns the ``(cos, sin)`` pair the Flux attention applies to queries and keys.
    The table for the last ids seen is cached: in one-step inference the same grid is embedded
    once per call, and training batches usually share a grid.
    """

    def __init__(self, theta: float, axes_dim: list[int] | tuple[int, ...], scaling: Mapping | None = None):
        super().__init__()
        self.theta = float(theta)
        self.axes_dim = list(axes_dim)
        self.scaling = check_rope_scaling(scaling)  # None: plain RoPE at every size
        self._cache_key: tuple | None = None
        self._cache_value: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calls = 0  # number of tables computed: lets tests prove the module is live

    def extra_repr(self) -> str:
        scaling = f", scaling={self.scaling['type']}" if self.scaling else ""
        return f"theta={self.theta:g}, axes_dim={self.axes_dim}{scaling}"

    def _key(self, ids: torch.Tensor) -> tuple | None:
        # Only CPU ids are fingerprinted (hashing their bytes is cheap there); on accelerators
        # reading the ids back would force a host-device sync, and the table is cheap to rebuild.
        if ids.device.type != "cpu":
            return None
        return (tuple(ids.shape), ids.dtype, self.theta, repr(self.scaling),
                hash(ids.detach().contiguous().numpy().tobytes()))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key(ids)
        if key is not None and key == self._cache_key and self._cache_value is not None:
            return self._cache_value
        pos = ids.float()
        # float64 tables where the device supports them
        freqs_dtype = torch.float32 if ids.device.type in _NO_FLOAT64_DEVICES else torch.float64
        cos_out, sin_out = [], []
        for axis, dim in enumerate(self.axes_dim):
            # axis 0 is the text/time axis: UltraFlux never scales it
            scaling = self.scaling if axis > 0 else None
            cos, sin = scaled_rotary_cos_sin(dim, pos[:, axis], self.theta, scaling, freqs_dtype)
            cos_out.append(cos)
            sin_out.append(sin)
        value = (torch.cat(cos_out, dim=-1).to(ids.device), torch.cat(sin_out, dim=-1).to(ids.device))
        self.calls += 1
        if key is not None:
            self._cache_key, self._cache_value = key, value
        return value


KEEP_SCALING = object()  # set_rope_theta without a scaling argument keeps the module's


def set_rope_theta(transformer: nn.Module, theta: float, scaling: Mapping | None = KEEP_SCALING) -> RescaledRoPE:  # type: ignore[assignment]
    """Replace ``transformer.pos_embed`` (ours or diffusers' ``FluxPosEmbed``) by a
    :class:`RescaledRoPE` with base ``theta`` and ``scaling`` (default: the old module's, plain
    for diffusers')."""
    old = transformer.pos_embed
    if scaling is KEEP_SCALING:
        scaling = getattr(old, "scaling", None)
    module = RescaledRoPE(theta, list(old.axes_dim), scaling)
    transformer.pos_embed = module
    return module
