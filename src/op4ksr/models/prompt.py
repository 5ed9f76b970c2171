"""Fixed prompt embeddings: computed once and stored, so inference needs no text encoder.

For a real Flux/UltraFlux prior they come from the T5 and CLIP encoders (S3Diff's positive
prompt, reference.md); for the compact model, which has no text encoder, they are learned
constants of the prior stage. Either way they are a small model part saved as safetensors.
"""

from __future__ import annotations

import torch
from torch import nn

from op4ksr.models.modeling import ConfigModel, register_to_config

S3DIFF_PROMPT = (
    "A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, and natural lighting."
)


class FixedPromptEmbeddings(ConfigModel):
    """``prompt_embeds`` [1, L, joint_attention_dim] and ``pooled_prompt_embeds`` [1, pooled_dim].

    ``prompt`` records the text they encode (``op4ksr convert ultraflux`` writes the one it
    encoded; OMGSR-F uses "", op4ksr S3Diff's prompt), None when it is not known."""

    @register_to_config
    def __init__(self, sequence_length: int = 512, joint_attention_dim: int = 4096,
                 pooled_projection_dim: int = 768, prompt: str | None = S3DIFF_PROMPT):
        super().__init__()
        self.prompt_embeds = nn.Parameter(torch.zeros(1, sequence_length, joint_attention_dim), requires_grad=False)
        self.pooled_prompt_embeds = nn.Parameter(torch.zeros(1, pooled_projection_dim), requires_grad=False)

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.prompt_embeds.expand(batch_size, -1, -1),
                self.pooled_prompt_embeds.expand(batch_size, -1))
