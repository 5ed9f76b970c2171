"""The Flux DiT with a configurable RoPE base θ (RFR), in plain PyTorch.

``OP4KSRTransformer`` reproduces diffusers' ``FluxTransformer2DModel`` (0.42.1): the same
constructor arguments, the same module tree and state-dict keys, and the same operations in the
same order, so its outputs equal the stock model's for the same weights. Its one addition is the
config value ``rope_theta``, which replaces the hard-coded ``FluxPosEmbed(theta=10000)`` by
:class:`~op4ksr.models.rope.RescaledRoPE`.

Why we own it: ``import diffusers`` costs about 5 s (see ``op4ksr.models.modeling``), more than
the compact model takes to upscale a photo, and we only need this one forward pass. The module
names are diffusers' exactly (``x_embedder``, ``transformer_blocks.N.attn.to_q``,
``single_transformer_blocks.N.proj_mlp``, …) because

* a real Flux/UltraFlux ``transformer/`` folder and the bundled model must load unchanged,
* peft LoRA adapters target these names (``op4ksr.models.lora.DIT_TARGETS``), and
* saved models must stay readable by diffusers' ``FluxTransformer2DModel.from_pretrained``.

Modules are also created in diffusers' order, so a seeded fresh model gets the same random
weights as the stock one. tests/models/test_transformer_equivalence.py checks keys, shapes and
outputs against diffusers.

Only what op4ksr uses is kept: patch size 1, unfused projections, the native
``scaled_dot_product_attention`` path, no attention mask, no joint_attention_kwargs / ControlNet /
IP-adapter / caching / LoRA-scale code. UltraFlux's RoPE extension beyond its 2048-px window is
the config value ``rope_scaling`` (:data:`~op4ksr.models.rope.ULTRAFLUX_ROPE_SCALING`, or null for
plain RoPE); UltraFlux's own keys (``method``, ``ntk_factor``) are not read by ``from_config``:
``op4ksr convert ultraflux`` turns them into ``rope_scaling``.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from op4ksr.models.modeling import ConfigModel, maybe_checkpoint, register_to_config
from op4ksr.models.rope import KEEP_SCALING, OP4KSR_ROPE_THETA, RescaledRoPE, check_rope_scaling, set_rope_theta

logger = logging.getLogger(__name__)

RoPETables = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [tokens, head_dim]

TIMESTEP_CHANNELS = 256  # width of the sinusoidal timestep / guidance embedding


class Transformer2DModelOutput(NamedTuple):
    """``return_dict=True`` result: ``out.sample`` (and ``out[0]``, like diffusers' output)."""

    sample: torch.Tensor


# --------------------------------------------------------------------------- conditioning


def timestep_embedding(timesteps: torch.Tensor, dim: int = TIMESTEP_CHANNELS, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of N (fractional) timesteps, cosines first.

    diffusers' ``get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)``: it
    builds [sin, cos] and swaps the halves; concatenating [cos, sin] gives the same tensor. Its
    ``scale=1`` multiplication is an exact no-op and is left out.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal embedding (diffusers' ``TimestepEmbedding``, SiLU)."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class TextProjection(nn.Module):
    """MLP on the pooled text embedding (diffusers' ``PixArtAlphaTextProjection``, act_fn="silu")."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(caption)))


class TimeTextEmbedding(nn.Module):
    """temb = MLP(sin(t)) [+ MLP(sin(guidance))] + MLP(pooled text).

    diffusers' ``CombinedTimestepTextProjEmbeddings`` or, with ``guidance``,
    ``CombinedTimestepGuidanceTextProjEmbeddings`` (the sum is taken in the same order).
    """

    def __init__(self, embedding_dim: int, pooled_projection_dim: int, guidance: bool = False):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, embedding_dim)
        self.guidance_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, embedding_dim) if guidance else None
        self.text_embedder = TextProjection(pooled_projection_dim, embedding_dim)

    def forward(self, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled_projection: torch.Tensor) -> torch.Tensor:
        # the sinusoids are float32; the MLPs run in the model's dtype
        emb = self.timestep_embedder(timestep_embedding(timestep).to(dtype=pooled_projection.dtype))
        if self.guidance_embedder is not None:
            emb = emb + self.guidance_embedder(timestep_embedding(guidance).to(dtype=pooled_projection.dtype))
        return emb + self.text_embedder(pooled_projection)


# --------------------------------------------------------------------------- normalisation


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero: LayerNorm modulated by temb; also returns the attention gate and the MLP's
    shift, scale and gate."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor):
        emb = self.linear(self.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroSingle(nn.Module):
    """adaLN-Zero of the single-stream blocks: modulated LayerNorm and one gate."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 3 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor):
        emb = self.linear(self.silu(emb))
        shift_msa, scale_msa, gate_msa = emb.chunk(3, dim=1)
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa


class AdaLayerNormContinuous(nn.Module):
    """Final modulated LayerNorm (no affine parameters of its own), scale before shift."""

    def __init__(self, embedding_dim: int, conditioning_embedding_dim: int, eps: float = 1e-6):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_embedding_dim, embedding_dim * 2)
        self.norm = nn.LayerNorm(embedding_dim, eps, elementwise_affine=False)

    def forward(self, x: torch.Tensor, conditioning_embedding: torch.Tensor) -> torch.Tensor:
        # diffusers casts to x's dtype here, in case the conditioning was upcast to float32
        emb = self.linear(self.silu(conditioning_embedding).to(x.dtype))
        scale, shift = torch.chunk(emb, 2, dim=1)
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


# --------------------------------------------------------------------------- attention and MLP


def apply_rotary_emb(x: torch.Tensor, rope: RoPETables) -> torch.Tensor:
    """Rotate the interleaved (real, imaginary) pairs of x [B, S, H, D] by the RoPE tables [S, D].

    Computed in float32 and cast back, as diffusers' ``apply_rotary_emb(use_real_unbind_dim=-1,
    sequence_dim=1)`` does.
    """
    cos, sin = rope
    cos = cos[None, :, None, :].to(x.device)
    sin = sin[None, :, None, :].to(x.device)
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)  # [B, S, H, D/2]
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class FluxAttention(nn.Module):
    """Multi-head attention with RMS-normalised queries and keys.

    With ``added_kv_proj_dim`` (double-stream blocks) the text tokens get their own projections
    and norms, are put *before* the image tokens, attend jointly, and are split off again.
    ``pre_only`` (single-stream blocks): no output projection, the block's ``proj_out`` follows.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, added_kv_proj_dim: int | None = None,
                 pre_only: bool = False, eps: float = 1e-6):
        super().__init__()
        self.head_dim = dim_head
        self.heads = heads
        self.inner_dim = dim_head * heads
        self.added_kv_proj_dim = added_kv_proj_dim
        self.pre_only = pre_only

        self.norm_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_k = nn.RMSNorm(dim_head, eps=eps)
        self.to_q = nn.Linear(query_dim, self.inner_dim)
        self.to_k = nn.Linear(query_dim, self.inner_dim)
        self.to_v = nn.Linear(query_dim, self.inner_dim)
        if not pre_only:
            # [Linear, Dropout(0)]: the list keeps diffusers' key ``to_out.0``
            self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim), nn.Dropout(0.0)])
        if added_kv_proj_dim is not None:
            self.norm_added_q = nn.RMSNorm(dim_head, eps=eps)
            self.norm_added_k = nn.RMSNorm(dim_head, eps=eps)
            self.add_q_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim)
            self.to_add_out = nn.Linear(self.inner_dim, query_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.head_dim))  # [B, S, H·D] -> [B, S, H, D]

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                image_rotary_emb: RoPETables | None = None):
        query = self.norm_q(self._heads(self.to_q(hidden_states)))
        key = self.norm_k(self._heads(self.to_k(hidden_states)))
        value = self._heads(self.to_v(hidden_states))

        joint = encoder_hidden_states is not None and self.added_kv_proj_dim is not None
        if joint:
            encoder_query = self.norm_added_q(self._heads(self.add_q_proj(encoder_hidden_states)))
            encoder_key = self.norm_added_k(self._heads(self.add_k_proj(encoder_hidden_states)))
            encoder_value = self._heads(self.add_v_proj(encoder_hidden_states))
            # text first: the RoPE tables are built for the ids (txt_ids, img_ids) in that order
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            key = apply_rotary_emb(key, image_rotary_emb)

        # diffusers' "native" backend: SDPA on [B, H, S, D] views of the [B, S, H, D] tensors
        query, key, value = (x.permute(0, 2, 1, 3) for x in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
        out = out.permute(0, 2, 1, 3).flatten(2, 3).to(query.dtype)

        if not joint:
            return out
        text_len = encoder_hidden_states.shape[1]
        encoder_out, out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        out = self.to_out[1](self.to_out[0](out.contiguous()))
        encoder_out = self.to_add_out(encoder_out.contiguous())
        return out, encoder_out


class GELU(nn.Module):
    """Linear then tanh-approximated GELU (``FeedForward(activation_fn="gelu-approximate")``'s first layer)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate="tanh")


class FeedForward(nn.Module):
    """dim → 4·dim → dim MLP; ``net`` = [GELU(proj), Dropout(0), Linear] keeps diffusers' keys."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.ModuleList([GELU(dim, inner_dim), nn.Dropout(0.0), nn.Linear(inner_dim, dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


# --------------------------------------------------------------------------- blocks


class FluxTransformerBlock(nn.Module):
    """Double-stream (MMDiT) block: image and text tokens keep their own weights and attend jointly."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = FluxAttention(dim, num_attention_heads, attention_head_dim, added_kv_proj_dim=dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                image_rotary_emb: RoPETables | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        norm_encoder_hidden_states, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
            encoder_hidden_states, emb=temb
        )
        attn_output, context_attn_output = self.attn(norm_hidden_states, norm_encoder_hidden_states, image_rotary_emb)

        # image stream
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_output
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden_states = hidden_states + gate_mlp.unsqueeze(1) * self.ff(norm_hidden_states)

        # text stream
        encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * context_attn_output
        norm_encoder_hidden_states = (self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None])
                                      + c_shift_mlp[:, None])
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_encoder_hidden_states)
        if encoder_hidden_states.dtype == torch.float16:  # keep fp16 text activations finite
            encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
        return encoder_hidden_states, hidden_states


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block: text and image tokens concatenated, attention and MLP in parallel."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.act_mlp = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = FluxAttention(dim, num_attention_heads, attention_head_dim, pre_only=True, eps=1e-6)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                image_rotary_emb: RoPETables | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        residual = hidden_states
        norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
        mlp_hidden_states = self.act_mlp(self.proj_mlp(norm_hidden_states))
        attn_output = self.attn(norm_hidden_states, image_rotary_emb=image_rotary_emb)
        hidden_states = torch.cat([attn_output, mlp_hidden_states], dim=2)
        hidden_states = residual + gate.unsqueeze(1) * self.proj_out(hidden_states)
        if hidden_states.dtype == torch.float16:  # keep fp16 activations finite
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


# --------------------------------------------------------------------------- the model


class OP4KSRTransformer(ConfigModel):
    """Flux DiT: ``num_layers`` double-stream then ``num_single_layers`` single-stream blocks.

    ``forward`` takes the packed image tokens [B, N, in_channels], the text embeddings
    [B, T, joint_attention_dim], the pooled text embedding [B, pooled_projection_dim], the
    timestep σ ∈ [0, 1] [B] (×1000 inside, as Flux does), the position ids [N, 3] / [T, 3] and,
    for guidance-distilled models, the guidance scale [B]. It returns ``(velocity,)`` or, with
    ``return_dict=True``, an object whose ``.sample`` is the velocity [B, N, out_channels].
    """

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
        rope_scaling: dict | None = None,
    ):
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to attention_head_dim {attention_head_dim}")
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim

        # Submodules in diffusers' order: a seeded model gets the stock model's random weights.
        self.pos_embed = RescaledRoPE(rope_theta, axes_dims_rope, check_rope_scaling(rope_scaling))
        self.time_text_embed = TimeTextEmbedding(self.inner_dim, pooled_projection_dim, guidance=guidance_embeds)
        self.context_embedder = nn.Linear(joint_attention_dim, self.inner_dim)
        self.x_embedder = nn.Linear(in_channels, self.inner_dim)
        self.transformer_blocks = nn.ModuleList([
            FluxTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)
        ])
        self.single_transformer_blocks = nn.ModuleList([
            FluxSingleTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
            for _ in range(num_single_layers)
        ])
        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, eps=1e-6)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * self.out_channels)

        self.gradient_checkpointing = False  # per-block recomputation (enable_gradient_checkpointing)

    def set_rope_theta(self, theta: float, rope_scaling: dict | None = KEEP_SCALING) -> None:  # type: ignore[assignment]
        """Change θ (and, when given, ``rope_scaling``; None = plain) in place, module and config,
        e.g. for RFR or the θ = 10000 ablation."""
        module = set_rope_theta(self, theta, rope_scaling)
        self.register_to_config(rope_theta=float(theta), rope_scaling=module.scaling)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        hidden_states = self.x_embedder(hidden_states)

        # σ ∈ [0, 1] → Flux's timestep scale, in the activations' dtype first (as diffusers does)
        timestep = timestep.to(hidden_states.dtype) * 1000
        has_guidance = self.time_text_embed.guidance_embedder is not None
        if (guidance is not None) != has_guidance:
            # diffusers fails here too (with a TypeError from the embedding's signature)
            raise ValueError(f"this transformer has guidance_embeds={has_guidance}: "
                             f"guidance must {'' if has_guidance else 'not '}be given")
        if guidance is not None:
            guidance = guidance.to(hidden_states.dtype) * 1000
        temb = self.time_text_embed(timestep, guidance, pooled_projections)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)

        # Batched ids were accepted by older diffusers; it uses the first sample's (all samples
        # share the grid) and warns.
        if txt_ids.ndim == 3:
            logger.warning("Passing `txt_ids` as a 3-D tensor is deprecated; pass it without the batch dimension")
            txt_ids = txt_ids[0]
        if img_ids.ndim == 3:
            logger.warning("Passing `img_ids` as a 3-D tensor is deprecated; pass it without the batch dimension")
            img_ids = img_ids[0]
        image_rotary_emb = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = maybe_checkpoint(
                self.gradient_checkpointing, block, hidden_states, encoder_hidden_states, temb, image_rotary_emb
            )
        for block in self.single_transformer_blocks:
            encoder_hidden_states, hidden_states = maybe_checkpoint(
                self.gradient_checkpointing, block, hidden_states, encoder_hidden_states, temb, image_rotary_emb
            )

        output = self.proj_out(self.norm_out(hidden_states, temb))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
