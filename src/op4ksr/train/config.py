"""Training configuration: dataclasses read from TOML, checked strictly before any work.

Unknown keys, wrong types and missing data paths are reported as one clear error naming the
key (``ConfigError``). Command-line overrides use dotted keys: ``optim.lr=1e-4``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from op4ksr.models.constants import OP4KSR_ROPE_THETA, TOKEN_PERIOD, check_sigma

STAGES = ("vae", "prior", "sr")


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


@dataclass
class RunConfig:
    output_dir: str = "runs/unnamed"
    seed: int = 0
    max_steps: int = 1000
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    validate_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 2
    device: str = "auto"  # auto | cpu (accelerate picks the GPU of each process)
    fsdp: bool = False  # shard the DiT across processes (FSDP2) instead of replicating it (DDP)
    # Time box: > 0 ends the run after this many minutes of this segment as if max_steps were
    # reached (checkpoint + export), for recipes that must fit a device budget (train/recipe.py).
    max_minutes: float = 0.0


@dataclass
class ModelConfig:
    preset: str = "compact"
    init: str = ""  # a previous stage's exported model directory (prior: the VAE; sr: the prior)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # part → config values


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # folders, files, globs or curation manifests (.jsonl)
    val: list[str] = field(default_factory=list)
    crop_size: int = 256
    degradation: str = "osediff"  # preset name, .toml path or mixture "osediff:0.5,light:0.5" (sr stage)
    num_workers: int = 0
    val_images: int = 4
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])  # downscale before cropping
    cache_images: bool = False  # keep decoded training photos in memory


@dataclass
class OptimConfig:
    lr: float = 2.5e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    disc_lr: float = 1e-4


class UnknownLossError(ConfigError):
    """A ``[loss]`` key that names no registered loss or option (``key``: that key)."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class LossConfig:
    """The ``[loss]`` table: a weight per registered loss, keyed by its registry name (0 switches
    it off: it is not built), and each loss's options as ``NAME_OPTION`` keys.

    The names, default weights and options come from the loss classes (``op4ksr.losses``; see
    :mod:`op4ksr.losses.base`), so a new loss needs no change here. Today: ``mse`` (1), ``l1``,
    ``lpips`` (1) with ``lpips_net`` (vgg16, the paper's | alexnet, cheaper on CPU), ``dists``,
    ``wavelet``, ``periodicity`` (L_AP), ``token_grid`` with ``token_grid_window`` (in tokens; 0 =
    the whole crop), ``adversarial`` with ``adversarial_start`` (the step it switches on at),
    ``vae_align`` (5, L_vae, sr stage) and ``kl`` (1e-6, vae stage). Values read as attributes
    too: ``cfg.loss.lpips``, ``cfg.loss.lpips_net``.
    """

    def __init__(self, weights: dict[str, float] | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> None:
        from op4ksr.losses.registry import UnknownLossKeyError, default_options, default_weights

        self.weights: dict[str, float] = default_weights()
        defaults = default_options()
        for name in sorted({*(weights or {}), *(options or {})} - set(self.weights)):
            raise UnknownLossError(str(UnknownLossKeyError(name)), key=name)
        self.weights.update(weights or {})
        self.options: dict[str, dict[str, Any]] = {
            name: {**defaults.get(name, {}), **(options or {}).get(name, {})} for name in defaults
        }

    @classmethod
    def from_table(cls, table: dict[str, Any], prefix: str = "loss") -> LossConfig:
        """Read a flat ``[loss]`` table, each value checked against its default's type."""
        from op4ksr.losses.registry import UnknownLossKeyError, default_options, option_keys, split_table

        try:
            weights, options = split_table(table)
        except UnknownLossKeyError as exc:
            raise UnknownLossError(str(exc), key=exc.key) from None
        weights = {name: _coerce(value, float, f"{prefix}.{name}") for name, value in weights.items()}
        defaults = default_options()
        by_option = {v: k for k, v in option_keys().items()}
        options = {
            name: {opt: _coerce(value, type(defaults[name][opt]), f"{prefix}.{by_option[(name, opt)]}")
                   for opt, value in opts.items()}
            for name, opts in options.items()
        }
        return cls(weights, options)

    def to_table(self) -> dict[str, Any]:
        """The flat ``[loss]`` table (every loss, in summation order; each weight before its options)."""
        table: dict[str, Any] = {}
        for name, weight in self.weights.items():
            table[name] = weight
            table.update({f"{name}_{opt}": value for opt, value in self.options.get(name, {}).items()})
        return table

    def weight(self, name: str) -> float:
        return self.weights[name]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key in ("weights", "options"):
            raise AttributeError(key)
        table = self.to_table()
        if key not in table:
            raise AttributeError(f"LossConfig has no loss or option {key!r}")
        return table[key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LossConfig) and self.to_table() == other.to_table()

    def __repr__(self) -> str:
        return f"LossConfig({', '.join(f'{k}={v!r}' for k, v in self.to_table().items())})"


SR_ROPE_SCALINGS = ("auto", "ultraflux", "none")
SR_POSTERIORS = ("mode", "sample")
SR_FROZEN_DIT_DTYPES = ("auto", "fp32", "bf16")


@dataclass
class SRConfig:
    sigma: float = 0.0  # 0 = keep the pipeline's σ
    rope_theta: float = OP4KSR_ROPE_THETA  # FLUX_ROPE_THETA (10000) reproduces the unrescaled baseline (Table 6)
    # RoPE beyond the 2048-px window: "auto" = UltraFlux's YaRN at θ = 10000 (what UltraFlux computes),
    # plain RoPE at RFR's θ (the paper's Fig. 5 reasoning); "ultraflux" or "none" force one.
    rope_scaling: str = "auto"
    # Encode LR/HR with the posterior mode (deterministic) or a posterior sample (OMGSR's choice).
    posterior: str = "mode"
    # dtype of the frozen DiT (its LoRA trains in fp32): "auto" keeps a bf16-stored DiT (a converted
    # UltraFlux: 23.8 GB instead of 47.6 GB in fp32) in bf16, anything else in fp32.
    frozen_dit_dtype: str = "auto"
    lora_rank: int = 64
    lora_alpha: int = 64
    train_vae_encoder: bool = True
    train_dit: bool = True
    # High-frequency compensation (models/compensation.py): added from the preset's widths when
    # the init model has none; trained here (the decoder itself stays frozen, as in the paper).
    compensation: bool = True
    train_compensation: bool = True
    train_decoder: bool = False  # the ablation's alternative: fine-tune the decoder without the LR
    # The pixel path (models/pixel_path.py, the compact model v2): SPAN at the LR size with the
    # DiT's latent fused in. `pixel_path = true` adds one (the preset's widths) when the init model
    # has none, both ends starting from the SPAN weights `pixel_path_span` (an asset name or a
    # .safetensors file converted by op4ksr.models.span_ncnn), and drops the compensation part.
    pixel_path: bool = False
    pixel_path_span: str = "span-x4"
    pixel_path_latent: bool = True  # False: SPAN alone, the ablation without OP4KSR's path
    train_end: str = "faithful"  # which end of the --fidelity knob trains: faithful | perceptual
    perceptual_from_faithful: bool = False  # start the perceptual end from the faithful end's weights
    ema_decay: float = 0.0  # > 0: export the trained end's exponential moving average (e.g. 0.999)


@dataclass
class VAEStageConfig:
    # Decode the posterior *mode* (as inference does) rather than a sample: with the tiny KL weight
    # a sampled latent starts with noise as large as its signal, and a small VAE trained on it
    # learns blurred, colour-averaged reconstructions (measured: docs/MODEL_CARD.md).
    sample_posterior: bool = False


@dataclass
class PriorConfig:
    sigma_sampling: str = "logit_normal"  # logit_normal | uniform
    learn_prompt: bool = True
    latent_stats_batches: int = 8  # batches used to set the VAE's scaling/shift factors


@dataclass
class TrainConfig:
    stage: str = "sr"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sr: SRConfig = field(default_factory=SRConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    vae: VAEStageConfig = field(default_factory=VAEStageConfig)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (value.to_table() if isinstance(value, LossConfig)
                         else dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
                for f in dataclasses.fields(self) for value in [getattr(self, f.name)]}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(annotation)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"{where}unknown key {unknown[0]!r}; known keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if hint is LossConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a [{key}] table")
            kwargs[name] = LossConfig.from_table(value, key)
        elif dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a [{key}] table")
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings: run.output_dir=runs/x
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                check_paths: bool = True) -> TrainConfig:
    """Read a TOML file (or defaults), apply ``KEY=VALUE`` overrides, validate everything."""
    data: dict[str, Any] = {}
    file_loss_keys: set[str] = set()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        if isinstance(data.get("loss"), dict):
            file_loss_keys = set(data["loss"])
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a table")
        node[keys[-1]] = value
    try:
        config = _build(TrainConfig, data, "")
    except UnknownLossError as exc:
        origin = str(path) if exc.key in file_loss_keys else f"override loss.{exc.key}"
        raise UnknownLossError(f"{origin}: {exc}", key=exc.key) from None
    validate(config, check_paths=check_paths)
    return config


def _check_losses(config: TrainConfig) -> None:
    """Each loss's own check of its weight and options (e.g. the crop size L_AP needs)."""
    from op4ksr.losses.registry import loss_classes

    for name, cls in loss_classes().items():
        try:
            cls.check(config.loss.options.get(name, {}), weight=config.loss.weights[name],
                      crop_size=config.data.crop_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


# run.device: what accelerate can be told (it picks each process's GPU itself)
RUN_DEVICES = ("auto", "cpu", "cuda", "mps")


def _check_numbers(config: TrainConfig) -> None:
    """Every float setting finite (``optim.lr=inf`` would train to NaN and export NaN weights),
    counts that cannot be negative not negative, sizes positive."""
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                number = getattr(value, f.name)
                if isinstance(number, float) and not math.isfinite(number):
                    raise ConfigError(f"{section.name}.{f.name}: {number} is not a finite number")
    for name, weight in config.loss.weights.items():
        if not math.isfinite(weight):
            raise ConfigError(f"loss.{name}: {weight} is not a finite number")
    if config.run.device not in RUN_DEVICES:
        raise ConfigError(f"run.device: {config.run.device!r} is not one of {', '.join(RUN_DEVICES)}")
    for key in ("run.keep_checkpoints", "data.val_images", "optim.warmup_steps", "data.num_workers",
                "prior.latent_stats_batches"):
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < 0:
            raise ConfigError(f"{key}: must be 0 or positive")
    if config.data.crop_size <= 0:
        raise ConfigError(f"data.crop_size: {config.data.crop_size} must be positive")
    for key in ("optim.lr", "optim.disc_lr"):
        section, name = key.split(".")
        if getattr(getattr(config, section), name) <= 0:
            raise ConfigError(f"{key}: must be positive")
    if config.optim.max_grad_norm < 0:
        raise ConfigError("optim.max_grad_norm: must be 0 (no clipping) or positive")
    if config.optim.weight_decay < 0 or not (0 <= config.optim.beta1 < 1 and 0 <= config.optim.beta2 < 1):
        raise ConfigError("optim.weight_decay must be ≥ 0 and optim.beta1/beta2 in [0, 1)")


def _check_model_overrides(config: TrainConfig) -> None:
    """``model.overrides`` get the same size bounds as a model folder's config files, so a crafted
    width fails here instead of allocating hundreds of GB (models/loading.CONFIG_LIMITS)."""
    from op4ksr.models.loading import check_config_limits
    from op4ksr.models.presets import OVERRIDE_PARTS
    from op4ksr.utils.errors import ModelLoadError

    for part, values in config.model.overrides.items():
        if part not in OVERRIDE_PARTS:
            raise ConfigError(f"model.overrides.{part}: not a part; known: {', '.join(OVERRIDE_PARTS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"model.overrides.{part}: expected a table of config values")
        try:
            check_config_limits(part, f"model.overrides.{part}", values)
        except ModelLoadError as exc:
            raise ConfigError(str(exc)) from None


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"run.output_dir: {output_dir} exists and is not a folder")


def validate(config: TrainConfig, check_paths: bool = True) -> None:
    from op4ksr.models.presets import list_presets

    if config.stage not in STAGES:
        raise ConfigError(f"stage: {config.stage!r} is not one of {', '.join(STAGES)}")
    if config.model.preset not in list_presets():
        raise ConfigError(f"model.preset: unknown preset {config.model.preset!r}; known: {', '.join(list_presets())}")
    if config.run.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"run.mixed_precision: {config.run.mixed_precision!r} is not no, fp16 or bf16")
    if config.prior.sigma_sampling not in ("logit_normal", "uniform"):
        raise ConfigError(f"prior.sigma_sampling: {config.prior.sigma_sampling!r} is not logit_normal or uniform")
    for name in ("max_steps", "checkpoint_every", "validate_every", "log_every"):
        if getattr(config.run, name) <= 0:
            raise ConfigError(f"run.{name}: must be positive")
    if config.run.max_minutes < 0:
        raise ConfigError("run.max_minutes: must be 0 (no limit) or positive")
    if len(config.data.scale_range) != 2 or not 0.0 < config.data.scale_range[0] <= config.data.scale_range[1] <= 1.0:
        raise ConfigError(f"data.scale_range: {config.data.scale_range} must be [low, high] with 0 < low <= high <= 1")
    if config.optim.batch_size <= 0 or config.optim.grad_accum <= 0:
        raise ConfigError("optim.batch_size and optim.grad_accum must be positive")
    _check_numbers(config)
    if config.data.crop_size % TOKEN_PERIOD:
        raise ConfigError(f"data.crop_size: {config.data.crop_size} must be a multiple of {TOKEN_PERIOD} (one DiT token)")
    _check_losses(config)
    if config.sr.sigma != 0.0:  # 0 = the pipeline's own σ
        try:
            check_sigma(config.sr.sigma, what="sr.sigma")
        except ValueError as exc:
            raise ConfigError(f"{exc} (or 0 for the pipeline's own)") from None
    if config.sr.train_end not in ("faithful", "perceptual"):
        raise ConfigError(f"sr.train_end: {config.sr.train_end!r} is not faithful or perceptual")
    if not 0.0 <= config.sr.ema_decay < 1.0:
        raise ConfigError(f"sr.ema_decay: {config.sr.ema_decay} must be in [0, 1)")
    if config.sr.rope_scaling not in SR_ROPE_SCALINGS:
        raise ConfigError(f"sr.rope_scaling: {config.sr.rope_scaling!r} is not one of {', '.join(SR_ROPE_SCALINGS)}")
    if config.sr.frozen_dit_dtype not in SR_FROZEN_DIT_DTYPES:
        raise ConfigError(f"sr.frozen_dit_dtype: {config.sr.frozen_dit_dtype!r} is not one of "
                          f"{', '.join(SR_FROZEN_DIT_DTYPES)}")
    if config.sr.posterior not in SR_POSTERIORS:
        raise ConfigError(f"sr.posterior: {config.sr.posterior!r} is not one of {', '.join(SR_POSTERIORS)}")
    if config.stage in ("prior", "sr") and not config.model.init:
        raise ConfigError(f"model.init: the {config.stage} stage needs the previous stage's model directory")
    _check_model_overrides(config)
    if not check_paths:
        return
    _check_output_dir(Path(config.run.output_dir))
    if not config.data.train:
        raise ConfigError("data.train: no training data given")
    for key in ("train", "val"):
        for src in getattr(config.data, key):
            if any(ch in src for ch in "*?["):
                continue
            if not Path(src).exists():
                raise ConfigError(f"data.{key}: {src}: no such file or folder")
    if config.model.init and not Path(config.model.init).is_dir():
        raise ConfigError(f"model.init: {config.model.init}: no such model directory")
