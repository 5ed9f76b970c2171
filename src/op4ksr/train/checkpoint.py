"""Checkpoints as safetensors only: trainable weights, optimizer, scheduler, RNG state, step.

Layout of ``<output_dir>/checkpoints/step-000123/``::

    model.safetensors       # the stage module's trainable state (incl. LoRA)
    optimizer.safetensors   # tensors of every optimizer's state; param groups in the metadata
    state.safetensors       # torch RNG states + the stage's noise generator
    state.json              # step, scheduler state, numpy/python RNG, config

A checkpoint folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PREFIX = "step-"


def _flatten_optimizer(name: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            flat = f"{name}.state.{idx}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[flat] = value.detach().cpu().contiguous()
            else:
                scalars[flat] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}.state."
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        if not flat.startswith(prefix):
            continue
        # keys are parameter indices (plain optimizers) or dotted parameter names (FSDP full state)
        idx, key = flat[len(prefix):].rsplit(".", 1)
        state.setdefault(int(idx) if idx.isdigit() else idx, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, *, step: int, model_state: dict[str, torch.Tensor],
                    optimizers: dict[str, torch.optim.Optimizer | dict[str, Any]], schedulers: dict[str, Any],
                    generator: torch.Generator, extra: dict[str, Any] | None = None,
                    rank_generators: list[torch.Tensor] | None = None) -> Path:
    """Write a checkpoint atomically (a temp folder renamed into place).

    ``rank_generators``: the noise generator state of every process (index = rank) in a
    multi-process run, so that each rank resumes its own noise stream; ``generator`` is rank 0's.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        # an optimizer, or its state dict already gathered (FSDP: every rank gathers, rank 0 saves)
        t, m = _flatten_optimizer(name, opt if isinstance(opt, dict) else opt.state_dict())
        opt_tensors.update(t)
        opt_meta[name] = m
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"optimizers": json.dumps(opt_meta)})
    rng = {"torch_cpu": torch.get_rng_state(), "generator": generator.get_state()}
    for rank, state in enumerate(rank_generators or []):
        rng[f"generator_rank{rank}"] = state.cpu()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, str(tmp / "state.safetensors"))
    np_state = np.random.get_state()
    state = {
        "step": step,
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python_rng": _jsonable(random.getstate()),
        **(extra or {}),
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_jsonable(o) for o in obj]
    return obj


def _tupled(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tupled(o) for o in obj)
    return obj


def load_checkpoint(directory: Path, *, optimizers: dict[str, torch.optim.Optimizer],
                    schedulers: dict[str, Any], generator: torch.Generator,
                    rank: int = 0) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Restore optimizer/scheduler/RNG state in place; return (step, model state, state.json).

    ``rank``: this process's rank; its own noise generator state is restored when the
    checkpoint holds one per rank.
    """
    directory = Path(directory)
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors", "state.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: incomplete checkpoint, {name} is missing")
    model_state = load_file(str(directory / "model.safetensors"))
    from safetensors import safe_open

    with safe_open(str(directory / "optimizer.safetensors"), "pt") as fh:
        meta = json.loads(fh.metadata()["optimizers"])
    opt_tensors = load_file(str(directory / "optimizer.safetensors"))
    for name, opt in optimizers.items():
        if name not in meta:
            raise KeyError(f"{directory}: checkpoint has no state for optimizer {name!r}")
        opt.load_state_dict(_unflatten_optimizer(name, opt_tensors, meta[name]))
    state = json.loads((directory / "state.json").read_text())
    for name, sched in schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    rng = load_file(str(directory / "state.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    generator.set_state(rng.get(f"generator_rank{rank}", rng["generator"]))
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    np_state = state["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    random.setstate(_tupled(state["python_rng"]))
    return int(state["step"]), model_state, state


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and not p.name.endswith(".tmp") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """A model folder from a checkpoint of a run (``RUN/checkpoints/step-N``), without resuming:
    the run's ``config.json`` rebuilds the stage, the checkpoint's trainable tensors and extra
    state are loaded, and the stage exports as at the end of training (LoRA merged)."""
    from op4ksr.train.config import TrainConfig, _build, validate
    from op4ksr.train.stages import build_stage

    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent
    if not (checkpoint / "model.safetensors").is_file() or not (checkpoint / "state.json").is_file():
        raise FileNotFoundError(f"{checkpoint}: not a checkpoint folder (model.safetensors, state.json)")
    data = json.loads((run_dir / "config.json").read_text())
    cfg = _build(TrainConfig, data, "")
    validate(cfg, check_paths=False)
    stage = build_stage(cfg)
    stage.load_trainable_state_dict(load_file(str(checkpoint / "model.safetensors")))
    stage.load_extra_state(json.loads((checkpoint / "state.json").read_text()).get("stage", {}))
    return stage.export(Path(out))
