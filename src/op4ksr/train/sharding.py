"""FSDP for the training stages (``run.fsdp = true``): shard the DiT block by block across processes.

Why our own wrapping instead of accelerate's FSDP plugin: accelerate enables FSDP only on GPU
process groups, so its path could never be tested on a CPU machine; ``torch.distributed.fsdp.
fully_shard`` (FSDP2) runs on CUDA/NCCL and on CPU/gloo alike, so the very code a multi-GPU run
uses is exercised by a two-process CPU test (tests/train/test_training_runs.py).

Plan: every double and single Flux block is its own FSDP unit (all-gathered just before it runs,
freed after), then the whole stage is the root unit (VAE, prompt, losses: small next to the DiT).
Frozen and LoRA parameters may share a unit (FSDP2 shards per parameter). Checkpoints and exports
use *full* state dicts gathered by every rank, so their files are identical to a one-process run's
and resume works with any process count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from op4ksr.train.stages import Stage


def dit_blocks(stage: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a stage's DiT, in execution order (one FSDP unit each)."""
    transformer = stage.pipe.transformer
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def shard_stage(stage: nn.Module, device: torch.device) -> None:
    """Apply FSDP2 in place: one unit per DiT block, the stage as root. Needs an initialised process group."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    # FSDP2 shards flat, contiguous storage; channels-last conv weights (a CPU speed-up) go back
    # to the default layout here (activations may still be channels-last).
    for param in stage.parameters():
        if not param.is_contiguous():
            param.data = param.data.contiguous()
    for block in dit_blocks(stage):
        fully_shard(block, mesh=mesh)
    if getattr(stage, "discriminator", None) is not None:
        fully_shard(stage.discriminator, mesh=mesh)  # called outside the stage's forward: its own unit
    fully_shard(stage, mesh=mesh)


def _options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kwargs)


def full_model_state(stage: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, unsharded, on the CPU. Collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(stage, options=_options())


def full_trainable_state(stage: Stage) -> dict[str, torch.Tensor]:
    """The stage's trainable tensors (the keys of ``Stage.trainable_state_dict``), unsharded. Collective."""
    return stage.select_trainable(full_model_state(stage))


def load_full_trainable_state(stage: Stage, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) trainable state into a sharded stage; every rank passes the same dict."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    stage.check_trainable_state(state)
    set_model_state_dict(stage, state, options=_options(strict=False))


def full_optimizer_state(stage: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(stage, optimizer, options=_options())


def load_full_optimizer_state(stage: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(stage, optimizer, optim_state_dict=state, options=_options())


class ShardedOptimizer:
    """Adapter for :func:`op4ksr.train.checkpoint.load_checkpoint`: loads a full state into a sharded optimizer."""

    def __init__(self, stage: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.stage, self.optimizer = stage, optimizer

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_full_optimizer_state(self.stage, self.optimizer, state)


def set_gradient_sync(stage: nn.Module, enabled: bool) -> None:
    """Gradient accumulation: skip the reduce-scatter on all but the last micro-batch."""
    stage.set_requires_gradient_sync(enabled)
