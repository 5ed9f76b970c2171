"""The Flux DiT with a configurable RoPE base θ (RFR).

``OP4KSRTransformer`` *is* diffusers' ``FluxTransformer2DModel`` (same parameters, same forward),
with one extra config value ``rope_theta`` that replaces the hard-coded
``FluxPosEmbed(theta=10000)`` by :class:`~op4ksr.models.rope.RescaledRoPE`. A real
``transformer/`` folder of Flux or UltraFlux loads unchanged; it gets θ = 100 (OP4KSR) unless the
caller or the folder's config says otherwise. UltraFlux's YaRN keys (``method``, ``ntk_factor``)
configure its own RoPE extension, which RFR replaces: they are accepted and ignored.
"""

from __future__ import annotations

from diffusers import FluxTransformer2DModel
from diffusers.configuration_utils import register_to_config

from op4ksr.models.rope import OP4KSR_ROPE_THETA, set_rope_theta


class OP4KSRTransformer(FluxTransformer2DModel):
    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, ...] = (16, 56, 56),
        rope_theta: float = OP4KSR_ROPE_THETA,
    ):
        super().__init__(
            patch_size=patch_size,
            in_channels=in_channels,
            out_channels=out_channels,
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim,
            pooled_projection_dim=pooled_projection_dim,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=tuple(axes_dims_rope),
        )
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to attention_head_dim {attention_head_dim}")
        set_rope_theta(self, rope_theta)

    def set_rope_theta(self, theta: float) -> None:
        """Change θ in place (module and config), e.g. for the θ = 10000 ablation."""
        set_rope_theta(self, theta)
        self.register_to_config(rope_theta=float(theta))
