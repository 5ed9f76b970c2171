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
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from op4ksr.utils.errors import one_line

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + "[0-9]+")


class CheckpointError(ValueError):
    """A checkpoint file that is damaged or does not fit the run; the message names the file."""


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types (truncated header, bad offsets)
        raise CheckpointError(f"{file}: not a readable safetensors file ({one_line(exc)})") from None


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return data


def check_model_state(file: Path, state: dict[str, torch.Tensor], stage) -> None:
    """The checkpoint's weights fit ``stage`` (every trainable tensor, each of the right shape)."""
    try:
        stage.check_trainable_state(state)
    except ValueError as exc:
        raise CheckpointError(f"{file}: {exc}") from None


def _check_optimizer_shapes(file: Path, name: str, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Per-parameter tensors (Adam's moments) must have their parameter's shape; a reshaped one
    would load silently and fail at the first step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, entry in state["state"].items():
        if not isinstance(idx, int) or not 0 <= idx < len(params):
            raise CheckpointError(f"{file}: optimizer {name!r} has state for parameter {idx!r}, which this run lacks")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != params[idx].shape:
                raise CheckpointError(f"{file}: optimizer {name!r} {key} of parameter {idx} has shape "
                                      f"{tuple(value.shape)}, the parameter's is {tuple(params[idx].shape)}")


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
    model_state = _read_tensors(directory / "model.safetensors")
    from safetensors import safe_open

    opt_file = directory / "optimizer.safetensors"
    opt_tensors = _read_tensors(opt_file)
    with safe_open(str(opt_file), "pt") as fh:
        recorded = (fh.metadata() or {}).get("optimizers")
    try:
        meta = json.loads(recorded) if recorded is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{opt_file}: the optimizers' metadata (param groups) is missing or not JSON")
    for name, opt in optimizers.items():
        if name not in meta:
            raise CheckpointError(f"{opt_file}: no state for optimizer {name!r}")
        try:
            opt_state = _unflatten_optimizer(name, opt_tensors, meta[name])
            if isinstance(opt, torch.optim.Optimizer):
                _check_optimizer_shapes(opt_file, name, opt, opt_state)
            opt.load_state_dict(opt_state)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"{opt_file}: optimizer {name!r} state does not fit this run ({one_line(exc)})") from None
    state_file = directory / "state.json"
    state = _read_json(state_file)
    rng_file = directory / "state.safetensors"
    rng = _read_tensors(rng_file)
    try:
        step = int(state["step"])
        for name, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        np_state = state["numpy_rng"]
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
        random.setstate(_tupled(state["python_rng"]))
    except KeyError as exc:
        raise CheckpointError(f"{state_file}: entry {one_line(exc)} is missing") from None
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise CheckpointError(f"{state_file}: a malformed entry ({one_line(exc)})") from None
    _restore_rng(rng_file, rng, generator, rank)
    return step, model_state, state


def _restore_rng(file: Path, rng: dict[str, torch.Tensor], generator: torch.Generator, rank: int) -> None:
    """RNG states must be exactly the size and dtype of the live ones (torch would fail or crash later)."""
    key = f"generator_rank{rank}" if f"generator_rank{rank}" in rng else "generator"
    wanted = {"torch_cpu": torch.get_rng_state(), key: generator.get_state()}
    for name, live in wanted.items():
        saved = rng.get(name)
        if saved is None:
            raise CheckpointError(f"{file}: the RNG state {name!r} is missing")
        if saved.dtype != live.dtype or saved.shape != live.shape:
            raise CheckpointError(f"{file}: the RNG state {name!r} has {saved.numel()} {saved.dtype} values, "
                                  f"expected {live.numel()} {live.dtype}")
    try:
        torch.set_rng_state(rng["torch_cpu"])
        generator.set_state(rng[key])
        if torch.cuda.is_available():
            cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: an RNG state torch refuses ({one_line(exc)})") from None


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    # only our own names (step-0000123): a stray step-best/ or step-12.tmp/ is not a checkpoint
    found = [p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()
             and (p / "state.json").is_file()]
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
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: the run's config is missing")
    try:
        cfg = _build(TrainConfig, _read_json(config_file), "")
        validate(cfg, check_paths=False)
    except CheckpointError:
        raise
    except ValueError as exc:  # ConfigError included: the same bounds as `op4ksr train`
        raise CheckpointError(f"{config_file}: {one_line(exc)}") from None
    model_file = checkpoint / "model.safetensors"
    model_state = _read_tensors(model_file)
    state = _read_json(checkpoint / "state.json")
    stage = build_stage(cfg)
    check_model_state(model_file, model_state, stage)
    stage.load_trainable_state_dict(model_state)
    try:
        stage.load_extra_state(state.get("stage", {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{checkpoint / 'state.json'}: a malformed stage entry ({one_line(exc)})") from None
    return stage.export(Path(out))
