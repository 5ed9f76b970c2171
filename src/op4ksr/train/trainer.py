"""The training loop on accelerate: CPU, one GPU, or many through ``accelerate launch`` (DDP, or
FSDP2 with ``run.fsdp = true``: see :mod:`op4ksr.train.sharding`).

Exact resume: the data order is a pure function of (seed, epoch, position); the noise
generator, torch/numpy/python RNG, optimizer and scheduler are checkpointed (safetensors), so a
run stopped at step k and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from op4ksr.train.checkpoint import (
    CheckpointError,
    check_model_state,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from op4ksr.train.config import TrainConfig
from op4ksr.train.stages import Stage, build_stage, psnr, warmup_lambda


@dataclass
class TrainResult:
    output_dir: Path
    steps_done: int
    final_step: int
    interrupted: bool
    wall_seconds: float
    model_dir: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


ProgressCallback = Callable[[int, int, dict[str, float]], None]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_dataset(cfg: TrainConfig, scale: int, *, train: bool):
    from op4ksr.data.datasets import DatasetConfig, PairedImageDataset

    sources = cfg.data.train if train else cfg.data.val
    dataset = PairedImageDataset(sources, DatasetConfig(
        crop_size=cfg.data.crop_size, scale=scale, train=train,
        preset=cfg.data.degradation if cfg.stage == "sr" else None, seed=cfg.run.seed,
        scale_range=tuple(cfg.data.scale_range) if train else (1.0, 1.0), cache_images=cfg.data.cache_images and train,
    ))
    if train and len(dataset) == 0:
        skipped = "; ".join(f"{p}: {why}" for p, why in dataset.skipped[:3])
        raise ValueError(f"data.train: no usable training images (crop {cfg.data.crop_size})" + (f" — {skipped}" if skipped else ""))
    return dataset


def _micro_batches(dataset, *, batch_size: int, seed: int, start: int, rank: int, world: int,
                   num_workers: int) -> Iterator[dict[str, Any]]:
    """Micro-batch ``start``, ``start+1``, … as a pure function of the index (resumable).

    Each epoch is a seeded permutation; micro-batch m takes the slice for (m, rank).
    """
    from torch.utils.data import DataLoader

    per_epoch = max(1, len(dataset) // (batch_size * world))
    m = start
    while True:
        epoch, pos = divmod(m, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(len(dataset))
        if len(perm) < batch_size * world:  # tiny datasets: repeat within the epoch
            perm = np.resize(perm, batch_size * world)
        batches = []
        for p in range(pos, per_epoch):
            lo = (p * world + rank) * batch_size
            batches.append(perm[lo:lo + batch_size].tolist())
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
        for batch in loader:
            yield batch
            m += 1


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _StopFlag:
    """SIGTERM/SIGINT → finish the current step, checkpoint, return."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# What a run writes into run.output_dir; ``overwrite=True`` removes these (and only these) first.
RUN_OUTPUTS = ("config.json", "log.jsonl", "timing.jsonl", "checkpoints", "model", "samples", "tensorboard")


def check_output_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one ``run.output_dir``: a non-empty folder needs ``resume`` (and
    then must hold the same stage and model) or ``overwrite``. Read-only, so every process of a
    multi-process run can call it before any of them writes."""
    out = Path(cfg.run.output_dir)
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
    if not out.is_dir() or not any(out.iterdir()) or overwrite:
        return
    if not resume:
        raise ValueError(f"{out}: run.output_dir is not empty (an earlier run?); use --resume to continue "
                         "that run or --overwrite to replace it")
    recorded = out / "config.json"
    if recorded.is_file():
        try:
            previous = json.loads(recorded.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{recorded}: not readable JSON ({exc}); cannot check this is the same run") from None
        current = json.loads(json.dumps(cfg.to_dict()))
        differing = [key for key in ("stage", "model") if not isinstance(previous, dict) or previous.get(key) != current[key]]
        if differing:
            raise ValueError(f"{out}: --resume continues the run recorded in {recorded}, whose "
                             f"{' and '.join(differing)} differ from this config; use another run.output_dir")


def _remove_run_outputs(out: Path) -> None:
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: ProgressCallback | None = None, stop_at_step: int | None = None) -> TrainResult:
    """Run (or resume) the stage described by ``cfg``; export the model when ``max_steps`` is reached.

    A non-empty ``run.output_dir`` needs ``resume`` (the same run) or ``overwrite`` (its run
    outputs are removed first). ``stop_at_step`` ends the run early *as if interrupted*
    (checkpoint written, no export): used to test exact resume.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.perf_counter()
    out = Path(cfg.run.output_dir)
    check_output_dir(cfg, resume=resume, overwrite=overwrite)
    _check_assets(cfg)
    accelerator = Accelerator(mixed_precision=cfg.run.mixed_precision, cpu=_use_cpu(cfg.run.device))
    _refuse_accelerate_fsdp(accelerator)
    set_seed(cfg.run.seed)
    _seed_everything(cfg.run.seed)
    stage = build_stage(cfg).to(accelerator.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    fsdp = cfg.run.fsdp and world > 1  # one process has nothing to shard across
    if fsdp:
        from op4ksr.train import sharding

        sharding.shard_stage(stage, accelerator.device)
    dataset = _make_dataset(cfg, stage.pipe.scale, train=True)
    val_dataset = _make_dataset(cfg, stage.pipe.scale, train=False) if cfg.data.val else None

    params = stage.trainable_parameters()
    if not params:
        raise ValueError(f"stage {cfg.stage}: nothing to train (check sr.train_vae_encoder / sr.train_dit)")
    oc = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=oc.lr, betas=(oc.beta1, oc.beta2), weight_decay=oc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(oc.warmup_steps))
    optimizers: dict[str, torch.optim.Optimizer] = {"model": optimizer}
    schedulers: dict[str, Any] = {"model": scheduler}
    disc_optimizer = None
    if stage.discriminator is not None:
        disc_optimizer = torch.optim.AdamW(stage.discriminator.parameters(), lr=oc.disc_lr, betas=(0.5, 0.999))
        optimizers["discriminator"] = disc_optimizer

    generator = torch.Generator(device=accelerator.device).manual_seed(cfg.run.seed * 1009 + rank)
    step = 0
    checkpoints = list_checkpoints(out) if resume else []
    if resume and not checkpoints:
        raise FileNotFoundError(f"{out}: --resume given but no checkpoint found under {out / 'checkpoints'}")
    if checkpoints:
        loaders = {k: sharding.ShardedOptimizer(stage, o) for k, o in optimizers.items()} if fsdp else optimizers
        step, model_state, state = load_checkpoint(checkpoints[-1], optimizers=loaders, schedulers=schedulers,
                                                   generator=generator, rank=rank)
        check_model_state(checkpoints[-1] / "model.safetensors", model_state, stage)
        try:
            stage.load_extra_state(state.get("stage", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{checkpoints[-1] / 'state.json'}: a malformed stage entry ({exc})") from None
        if fsdp:
            sharding.load_full_trainable_state(stage, model_state)
        else:
            stage.load_trainable_state_dict(model_state)
    elif cfg.stage == "prior":
        stats_batches = [b["hr"] for _, b in zip(range(cfg.prior.latent_stats_batches),
                                                   _micro_batches(dataset, batch_size=oc.batch_size, seed=cfg.run.seed + 7,
                                                                  start=0, rank=0, world=1, num_workers=0))]
        stage.set_latent_stats(stats_batches)

    if fsdp:  # FSDP2 already synchronises gradients; accelerate must not add DDP on top
        model, optimizer = stage, accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(stage, optimizer)
    device = accelerator.device
    accelerator.wait_for_everyone()  # every rank has checked the output dir before rank 0 writes to it
    if accelerator.is_main_process:
        if overwrite:
            _remove_run_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    log_file = out / "log.jsonl"
    writer = _tensorboard(out) if accelerator.is_main_process else None
    history: list[dict[str, Any]] = []
    batches = _micro_batches(dataset, batch_size=oc.batch_size, seed=cfg.run.seed, start=step * oc.grad_accum,
                             rank=rank, world=world, num_workers=cfg.data.num_workers)
    first_step = step
    interrupted = False
    last_ckpt = step

    def checkpoint(at: int) -> None:
        accelerator.wait_for_everyone()
        if fsdp:  # gathering is collective: every rank takes part, rank 0 writes
            model_state = sharding.full_trainable_state(stage)
            optimizer_states: dict[str, Any] = {k: sharding.full_optimizer_state(stage, o) for k, o in optimizers.items()}
        else:
            model_state = stage.trainable_state_dict() if accelerator.is_main_process else {}
            optimizer_states = optimizers
        rank_generators = _gather_generator_states(generator) if world > 1 else None
        if accelerator.is_main_process:
            save_checkpoint(checkpoint_dir(out, at), step=at, model_state=model_state,
                            optimizers=optimizer_states, schedulers=schedulers, generator=generator,
                            extra={"stage": stage.extra_state(), "stage_name": cfg.stage},
                            rank_generators=rank_generators)
            prune_checkpoints(out, cfg.run.keep_checkpoints)
        accelerator.wait_for_everyone()

    plain_copy: list[Stage] = []

    def unsharded() -> Stage | None:
        """The stage to validate/export with: itself, or (FSDP) a plain copy on rank 0. Collective under FSDP."""
        if not fsdp:
            return stage
        full = sharding.full_model_state(stage)
        if not accelerator.is_main_process:
            return None
        if not plain_copy:
            plain_copy.append(build_stage(cfg).to(device))
        plain_copy[0].load_state_dict(full)
        plain_copy[0].load_extra_state(stage.extra_state())
        return plain_copy[0]

    with _StopFlag() as flag:
        while step < cfg.run.max_steps:
            model.train()
            logs_acc: dict[str, float] = {}
            total = 0.0
            for micro in range(oc.grad_accum):
                batch = _to_device(next(batches), device)
                sync = micro == oc.grad_accum - 1
                if fsdp:
                    sharding.set_gradient_sync(stage, sync)
                    ctx = contextlib.nullcontext()
                else:
                    ctx = accelerator.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
                with ctx, accelerator.autocast():
                    loss, logs = model(batch, generator)
                    if disc_optimizer is not None and step >= cfg.loss.adversarial_start:
                        adversarial = stage.adversarial_losses  # the generator's terms (L_ADV)
                        fake_logits = stage.discriminator(stage.fake_for_discriminator())
                        loss = adversarial.add_terms(loss, logs, adversarial.terms(fake_logits))
                    accelerator.backward(loss / oc.grad_accum)
                total += float(loss.detach()) / oc.grad_accum
                for k, v in logs.items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + v / oc.grad_accum
            if not _finite_everywhere(accelerator, total, device):  # before the step: weights stay as checkpointed
                raise NonFiniteLossError(f"{out}: step {step + 1}: the loss is not finite ({total}); stopped "
                                         "before updating the weights, nothing exported (lower optim.lr, "
                                         "check the data, or resume from the last checkpoint)")
            if oc.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, oc.max_grad_norm)
            optimizer.step()
            stage.after_optimizer_step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if disc_optimizer is not None and step >= cfg.loss.adversarial_start:
                _discriminator_step(stage, batch, disc_optimizer)
            step += 1
            record = {"step": step, "loss": total, "lr": scheduler.get_last_lr()[0], **logs_acc}
            history.append(record)
            if accelerator.is_main_process and (step % cfg.run.log_every == 0 or step == cfg.run.max_steps):
                with open(log_file, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if writer is not None:
                    for k, v in record.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
            if progress is not None and accelerator.is_main_process:
                progress(step, cfg.run.max_steps, record)
            validate_now = val_dataset is not None and step % cfg.run.validate_every == 0
            to_validate = unsharded() if validate_now else None
            if validate_now and accelerator.is_main_process:
                metrics = validate(to_validate, val_dataset, out / "samples" / f"step-{step:07d}", cfg.data.val_images)
                with open(log_file, "a") as fh:
                    fh.write(json.dumps({"step": step, "validation": metrics}) + "\n")
                if writer is not None:
                    for k, v in metrics.items():
                        writer.add_scalar(f"val/{k}", v, step)
            if step % cfg.run.checkpoint_every == 0 and step < cfg.run.max_steps:
                checkpoint(step)
                last_ckpt = step
            if flag.stop or (stop_at_step is not None and step >= stop_at_step):
                interrupted = True
                break
            if cfg.run.max_minutes > 0 and _time_is_up(accelerator, started, cfg.run.max_minutes, device):
                break  # a finished run at fewer steps: checkpoint and export below
    if writer is not None:
        writer.close()
    model_dir = None
    if interrupted:
        if last_ckpt != step:
            checkpoint(step)
        if accelerator.is_main_process and step > first_step:
            _append_timing(out, cfg, first_step, step, time.perf_counter() - started, world)
    else:
        checkpoint(step)
        final = unsharded()
        if accelerator.is_main_process:
            model_dir = final.export(out / "model")
            _append_timing(out, cfg, first_step, step, time.perf_counter() - started, world)
        accelerator.wait_for_everyone()
    return TrainResult(output_dir=out, steps_done=step - first_step, final_step=step, interrupted=interrupted,
                       wall_seconds=time.perf_counter() - started, model_dir=model_dir, history=history)


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


def _finite_everywhere(accelerator, loss: float, device: torch.device) -> bool:
    """Whether every rank's loss is finite (all ranks agree, so they stop together)."""
    if accelerator.num_processes == 1:
        return math.isfinite(loss)
    flag = accelerator.reduce(torch.tensor([0.0 if math.isfinite(loss) else 1.0], device=device), reduction="max")
    return not bool(flag.item() > 0)


def _time_is_up(accelerator, started: float, minutes: float, device: torch.device) -> bool:
    """Whether the time box is spent, agreed by every rank (the slowest clock decides)."""
    over = time.perf_counter() - started > minutes * 60.0
    if accelerator.num_processes == 1:
        return over
    flag = accelerator.reduce(torch.tensor([1.0 if over else 0.0], device=device), reduction="max")
    return bool(flag.item() > 0)


def _gather_generator_states(generator: torch.Generator) -> list[torch.Tensor]:
    """Every rank's noise generator state (index = rank), so that each rank resumes its own stream."""
    import torch.distributed as dist

    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, generator.get_state().cpu())  # our own processes' tensors, not user files
    return states


def _refuse_accelerate_fsdp(accelerator) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("accelerate's FSDP plugin is not used by op4ksr: launch with plain `accelerate launch "
                         "--multi_gpu` (no --use_fsdp) and set run.fsdp=true in the config")


def _check_assets(cfg: TrainConfig) -> None:
    """Fail before any work, naming the one command that fetches every missing backbone."""
    from op4ksr.assets import require_assets
    from op4ksr.losses.registry import required_assets

    needed = required_assets(cfg.loss.weights, cfg.loss.options)  # e.g. lpips_net's backbone
    if needed:
        require_assets(needed)


def _use_cpu(device: str) -> bool:
    """CPU when asked or when no accelerator exists: accelerate then runs torchrun's processes as
    a gloo (MULTI_CPU) group instead of independent copies."""
    if device == "cpu":
        return True
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return not (torch.cuda.is_available() or has_mps)


def _discriminator_step(stage: Stage, batch: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    from op4ksr.losses.adversarial import discriminator_hinge_loss

    fake = stage.fake_for_discriminator()
    if fake is None:
        return
    disc = stage.discriminator
    loss = discriminator_hinge_loss(disc(batch["hr"]), disc(fake.detach()))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is part of the [train] extra; logs still go to log.jsonl
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _append_timing(out: Path, cfg: TrainConfig, first: int, last: int, seconds: float, processes: int) -> None:
    entry = {"stage": cfg.stage, "steps": [first, last], "wall_seconds": round(seconds, 1), "processes": processes,
             "device": str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "cpu"}
    with open(out / "timing.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")


@torch.no_grad()
def validate(stage: Stage, dataset, sample_dir: Path, max_images: int) -> dict[str, float]:
    """PSNR-Y, LPIPS (if its asset is present) and the grid score on fixed crops; writes sample PNGs."""
    from op4ksr.eval.metrics import create_metric

    was_training = stage.training
    stage.eval()
    device = next(stage.parameters()).device
    psnr_y = create_metric("psnr_y")
    try:
        lpips = create_metric("lpips")
    except Exception:  # noqa: BLE001 - asset missing: validation goes on without it
        lpips = None
    try:
        from op4ksr.eval.diagnostics.inspector import grid_score
    except ImportError:  # pragma: no cover
        grid_score = None
    sums: dict[str, float] = {}
    n = 0
    sample_dir.mkdir(parents=True, exist_ok=True)
    for i in range(min(max_images, len(dataset))):
        item = dataset[i]
        batch = {k: v.unsqueeze(0).to(device) if isinstance(v, torch.Tensor) else v for k, v in item.items()}
        out = stage.sample(batch)
        pred, target = out["pred"].float().clamp(0, 1).cpu(), out["target"].float().cpu()
        # PSNR-Y is what SR papers report; RGB PSNR also sees colour errors, which Y hides.
        values = {"psnr_y": float(psnr_y(pred, target)), "psnr_rgb": psnr(pred, target)}
        if lpips is not None:
            values["lpips"] = float(lpips(pred, target))
        if grid_score is not None:
            values["grid_score"] = float(grid_score(pred[0]))
        if "raw" in out:  # the SR stage: the network alone beside the shipped path (post-steps on)
            raw = out["raw"].float().clamp(0, 1).cpu()
            values["raw_psnr_y"] = float(psnr_y(raw, target))
            if lpips is not None:
                values["raw_lpips"] = float(lpips(raw, target))
            if grid_score is not None:
                values["raw_grid_score"] = float(grid_score(raw[0]))
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        _save_sample(sample_dir / f"{i:02d}.png", [out.get("bicubic"), pred, target])
    if was_training:
        stage.train()
    return {k: v / max(n, 1) for k, v in sums.items() if not math.isnan(v)}


def _save_sample(path: Path, images: list[torch.Tensor | None]) -> None:
    from PIL import Image

    tiles = [img[0].float().clamp(0, 1).cpu() for img in images if img is not None]
    row = torch.cat(tiles, dim=-1)
    array = (row.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(array).save(path)
