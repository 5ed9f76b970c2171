"""LoRA adapters (peft) on the VAE encoder and the DiT, as OSEDiff/OMGSR do (reference.md).

Rank = alpha = 64 and Gaussian init by default; the decoder is never adapted. Adapters are
saved as safetensors and merged into the base weights for inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

# Only modules under `encoder.`: the decoder stays frozen and un-adapted.
VAE_ENCODER_TARGETS = (
    r"^encoder\.(.*\.)?(conv1|conv2|conv_in|conv_shortcut|conv|conv_out|to_q|to_k|to_v|to_out\.0)$"
)
DIT_TARGETS = (
    "x_embedder",
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)


@dataclass
class LoraSettings:
    rank: int = 64
    alpha: int = 64
    init: str = "gaussian"
    dropout: float = 0.0
    vae_targets: str | tuple[str, ...] = VAE_ENCODER_TARGETS
    dit_targets: tuple[str, ...] = field(default=DIT_TARGETS)


def _lora_config(settings: LoraSettings, targets: str | tuple[str, ...]):
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, init_lora_weights=settings.init,
                      lora_dropout=settings.dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets))


def add_lora(model: nn.Module, targets: str | tuple[str, ...], settings: LoraSettings = LoraSettings(),
             adapter_name: str = "default") -> list[str]:
    """Inject LoRA layers into ``model`` in place; returns the adapted module names."""
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    inject_adapter_in_model(_lora_config(settings, targets), model, adapter_name=adapter_name)
    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise KeyError(f"LoRA weights do not fit the model: unexpected keys {unexpected[:5]}")


def save_lora(model: nn.Module, path: str | Path, adapter_name: str = "default") -> None:
    save_file(lora_state_dict(model, adapter_name), str(path))


def load_lora(model: nn.Module, path: str | Path, adapter_name: str = "default") -> None:
    load_lora_state_dict(model, load_file(str(path)), adapter_name)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA layer into its base layer and remove the adapters; returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged
