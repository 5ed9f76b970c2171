"""Safe loading of op4ksr model directories and of real UltraFlux parts.

A model directory is diffusers-like::

    model_index.json            # part classes + the op4ksr config: sigma, scale, guidance
    vae/config.json + diffusion_pytorch_model.safetensors
    transformer/config.json + diffusion_pytorch_model.safetensors (or sharded + index)
    prompt/config.json + diffusion_pytorch_model.safetensors
    compensation/config.json + diffusion_pytorch_model.safetensors   # optional (models/compensation.py)
    pixel_path/config.json + diffusion_pytorch_model.safetensors     # optional (models/pixel_path.py)

Only safetensors are read. A directory holding any pickle-format weight file is refused (it
could run code when loaded), and every error names the part and what is missing or mismatched.
Nothing outside the model folder is opened: every file a name in the folder leads to (a shard
in an index, a symlinked weights file) must resolve inside it (:func:`contained_file`), and a
config's structural sizes are bounded (:data:`CONFIG_LIMITS`) before any module is built.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from op4ksr.models.compensation import HighFrequencyCompensation
from op4ksr.models.constants import DEFAULT_SIGMA, OP4KSR_ROPE_THETA
from op4ksr.models.modeling import read_config_file
from op4ksr.models.pipeline import OP4KSRPipeline
from op4ksr.models.pixel_path import LatentGuidedSPAN
from op4ksr.models.prompt import FixedPromptEmbeddings
from op4ksr.models.transformer import OP4KSRTransformer
from op4ksr.models.vae import F16AutoencoderKL
from op4ksr.utils.device import resolve_device, resolve_dtype
from op4ksr.utils.errors import ModelLoadError, one_line

PIPELINE_OPTIONS = ("sigma", "scale", "guidance", "color_fix", "grid_fix", "fidelity")
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
PART_CLASSES = {"vae": F16AutoencoderKL, "transformer": OP4KSRTransformer, "prompt": FixedPromptEmbeddings}
# Parts a model directory may have; ``model_index.json`` lists them as [null, null] when absent.
OPTIONAL_PART_CLASSES = {"compensation": HighFrequencyCompensation, "pixel_path": LatentGuidedSPAN}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
DEFAULT_MODEL = "compact"


# Upper bounds on the config values that decide how much a part allocates (and how long
# building it on the meta device takes), far above any real model (UltraFlux: 19 + 38 blocks,
# 24 heads × 128, widths ≤ 512): a crafted config.json is refused before anything is built.
CONFIG_LIMITS = {
    "num_layers": 512, "num_single_layers": 512, "num_attention_heads": 512, "attention_head_dim": 4096,
    "joint_attention_dim": 65536, "pooled_projection_dim": 65536, "in_channels": 65536, "latent_channels": 4096,
    "layers_per_block": 64, "sequence_length": 65536, "guide_channels": 8192, "head_channels": 8192,
    "head_layers": 64, "feature_channels": 4096, "num_blocks": 256, "fusion_channels": 4096, "latent_factor": 64,
    "upscale": 16,
}
MAX_LIST_LENGTH, MAX_LIST_VALUE = 16, 65536  # block_out_channels, level_channels, axes_dims_rope, …


def contained_file(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved (symlinks followed), or ModelLoadError if it lies outside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ModelLoadError(f"{path}: {what} resolves outside the model folder {root} ({resolved}); refused")
    return resolved


def check_config_limits(part: str, config_file: Path, config: dict) -> None:
    """Refuse configs whose sizes no real model has (see :data:`CONFIG_LIMITS`)."""
    for key, value in config.items():
        if key in CONFIG_LIMITS and isinstance(value, (int, float)) and not 0 <= value <= CONFIG_LIMITS[key]:
            raise ModelLoadError(f"{config_file}: the {part} config has {key} = {value}, outside 0–{CONFIG_LIMITS[key]}")
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            if len(value) > MAX_LIST_LENGTH or any(not 0 <= v <= MAX_LIST_VALUE for v in value):
                raise ModelLoadError(f"{config_file}: the {part} config has {key} = {list(value)[:8]}…, "
                                     "more entries or larger values than any model")


def _load_safetensors(file: Path, part: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelLoadError(f"{file}: the {part} weights are not a readable safetensors file ({one_line(exc)})") from None


def bundled_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of a model shipped inside the package (``op4ksr/weights/<name>``)."""
    return Path(str(resources.files("op4ksr") / "weights" / name))


def resolve_model_dir(model: str | Path | None) -> Path:
    """``None``/``"compact"`` → the bundled model; anything else must be an existing directory."""
    if model is None or (isinstance(model, str) and model == DEFAULT_MODEL):
        path = bundled_model_dir()
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path}: the bundled compact model is not installed in this build of op4ksr; "
                "pass --model DIR with a trained model directory"
            )
        return path
    path = Path(model)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a model directory (expected model_index.json, vae/, transformer/, prompt/)")
    return path


def refuse_pickles(directory: Path) -> None:
    for file in sorted(directory.rglob("*")):
        if file.is_file() and file.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"{file}: pickle-format weights are refused (loading them can run code); "
                "convert them to safetensors"
            )


def read_state_dict(part_dir: Path, root: Path | None = None, part: str = "model") -> dict[str, torch.Tensor]:
    """The safetensors state dict of one part, single-file or sharded; every file must lie in
    ``root`` (default: ``part_dir``)."""
    root = part_dir if root is None else root
    single, index = part_dir / WEIGHTS_NAME, part_dir / INDEX_NAME
    if single.is_file():
        return _load_safetensors(contained_file(root, single, f"the {part} weights file"), part)
    if index.is_file():
        index_file = contained_file(root, index, f"the {part} shard index")
        try:
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{index}: not a valid {INDEX_NAME} ({type(exc).__name__}: {exc})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).is_absolute() or "\0" in shard:
                raise ModelLoadError(f"{index}: shard name {shard!r} is not a file name inside the folder; refused")
            path = part_dir / shard
            contained_file(root, path, f"shard {shard!r} listed in {INDEX_NAME}")
            if not path.is_file():
                raise ModelLoadError(f"{path}: shard listed in {INDEX_NAME} is missing")
            state.update(_load_safetensors(path, part))
        return state
    raise ModelLoadError(f"{part_dir}: no {WEIGHTS_NAME} (or sharded index) found")


def pipeline_parts(pipe: OP4KSRPipeline) -> dict[str, torch.nn.Module]:
    """The parts a pipeline holds, required and optional, by name."""
    parts = {name: getattr(pipe, name) for name in PART_CLASSES}
    parts.update({name: getattr(pipe, name) for name in OPTIONAL_PART_CLASSES if getattr(pipe, name, None) is not None})
    return parts


def _optional_parts_in(directory: Path, index: dict) -> list[str]:
    """Optional parts that ``model_index.json`` names with a class (not [null, null])."""
    present = []
    for part in OPTIONAL_PART_CLASSES:
        entry = index.get(part)
        if isinstance(entry, list) and entry and entry[0] is not None:
            if not (directory / part).is_dir():
                raise ModelLoadError(f"{directory}: model_index.json names the {part!r} part but {part}/ is missing")
            present.append(part)
    return present


def _read_config(part: str, part_dir: Path, cls, root: Path) -> dict:
    config_file = part_dir / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{part_dir}: the {part!r} part has no config.json")
    contained_file(root, config_file, f"the {part} config")
    try:
        config = cls.load_config(str(part_dir))
    except Exception as exc:  # noqa: BLE001 - diffusers wraps JSON errors in EnvironmentError
        raise ModelLoadError(f"{config_file}: not a valid {part} config.json ({one_line(exc)})") from None
    check_config_limits(part, config_file, config)
    return config


def load_part(part: str, part_dir: Path, cls=None, config_overrides: dict | None = None,
              root: Path | None = None, *, device: torch.device | None = None, dtype: torch.dtype | None = None,
              channels_last: bool = False) -> torch.nn.Module:
    """Build ``cls`` from ``part_dir/config.json`` on the meta device and assign its safetensors weights
    (files must lie inside ``root``, default: ``part_dir``).

    With ``device``/``dtype``/``channels_last`` each tensor is converted once, straight from the
    file's tensor into the module (no second full copy from a later ``.to``)."""
    cls = cls or PART_CLASSES.get(part) or OPTIONAL_PART_CLASSES[part]
    root = part_dir if root is None else root
    config = _read_config(part, part_dir, cls, root)
    config.update(config_overrides or {})
    with torch.device("meta"):
        module = cls.from_config(config)
    state = read_state_dict(part_dir, root, part)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            details.append(f"{len(mismatched)} with wrong shape (e.g. {k}: file {tuple(state[k].shape)} "
                           f"vs config {tuple(expected[k].shape)})")
        raise ModelLoadError(f"{part_dir}: {part} weights do not match its config.json: " + "; ".join(details))
    if device is not None or dtype is not None or channels_last:
        state = {k: _converted(v, device, dtype, channels_last) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _converted(tensor: torch.Tensor, device: torch.device | None, dtype: torch.dtype | None,
               channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and tensor.ndim == 4 else torch.preserve_format
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None, memory_format=fmt)


# channels-last 3×3 convolutions are markedly faster on CPU (docs/PERFORMANCE.md)
CHANNELS_LAST_PARTS = frozenset({"vae", "compensation", "pixel_path"})


def _read_index(directory: Path) -> dict:
    """``model_index.json`` of a model directory, or a one-line error naming the directory."""
    index_file = directory / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{directory}: no model_index.json; not an op4ksr model directory")
    contained_file(directory, index_file, "model_index.json")
    try:
        return read_config_file(index_file)
    except ValueError as exc:  # "not valid JSON (…)" / "expected a JSON object, got …"
        raise ModelLoadError(f"{index_file}: {exc}") from None


def _pipeline_options(index: dict) -> dict:
    """The pipeline's own config values (σ, scale, guidance, colour fix) stored in the index."""
    return {k: index[k] for k in PIPELINE_OPTIONS if k in index}


def from_pretrained(directory: str | Path, *, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype | None = None) -> OP4KSRPipeline:
    """Load an :class:`OP4KSRPipeline` saved with ``save_pretrained`` (safetensors only)."""
    directory = Path(directory)
    index = _read_index(directory)
    refuse_pickles(directory)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    parts = {}
    for part in PART_CLASSES:
        if part not in index or not (directory / part).is_dir():
            raise ModelLoadError(f"{directory}: the {part!r} part is missing")
    for part in [*PART_CLASSES, *_optional_parts_in(directory, index)]:
        parts[part] = load_part(part, directory / part, root=directory, device=device, dtype=dtype,
                                channels_last=device.type == "cpu" and part in CHANNELS_LAST_PARTS)
    options = _pipeline_options(index)
    try:
        pipe = OP4KSRPipeline(**parts, **options)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{directory / 'model_index.json'}: {exc}") from None
    return move_pipeline(pipe, device, dtype)


def move_pipeline(pipe: OP4KSRPipeline, device: str | torch.device = "auto",
                  dtype: str | torch.dtype | None = None) -> OP4KSRPipeline:
    """Put every part on ``device`` in ``dtype`` (``None``: fp32 on CPU, bf16/fp16 on accelerators)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    for module in pipeline_parts(pipe).values():
        module.to(device=device, dtype=dtype)  # a no-op for parts from_pretrained already placed
    if device.type == "cpu":
        for name in CHANNELS_LAST_PARTS:
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    return pipe


def export_pipeline(pipe: OP4KSRPipeline, directory: str | Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Save a copy of ``pipe`` with weights stored in ``dtype`` (fp16 halves a shipped model's
    size; loading casts back to the run dtype, fp32 on CPU)."""
    import copy

    directory = Path(directory)
    clone = copy.deepcopy(pipe)
    for module in pipeline_parts(clone).values():
        torch.nn.Module.to(module, dtype=dtype)
        module.to(memory_format=torch.contiguous_format)
    clone.save_pretrained(directory)
    return directory


def meta_pipeline_from_dir(directory: str | Path) -> OP4KSRPipeline:
    """The pipeline described by a model directory's configs, on the meta device (no weights read)."""
    directory = Path(directory)
    index = _read_index(directory)
    parts = {}
    classes = {**PART_CLASSES, **{p: OPTIONAL_PART_CLASSES[p] for p in _optional_parts_in(directory, index)}}
    for part, cls in classes.items():
        config = _read_config(part, directory / part, cls, directory)
        with torch.device("meta"):
            parts[part] = cls.from_config(config)
    options = _pipeline_options(index)
    return OP4KSRPipeline(**parts, **options)


def load_pipeline(model: str | Path | None = None, *, device: str | torch.device = "auto",
                  dtype: str | torch.dtype | None = None) -> OP4KSRPipeline:
    """The bundled compact model (``None``/``"compact"``) or a model directory, ready for inference."""
    return from_pretrained(resolve_model_dir(model), device=device, dtype=dtype)


def load_ultraflux_parts(vae_dir: str | Path, transformer_dir: str | Path, prompt_file: str | Path, *,
                         sigma: float = DEFAULT_SIGMA, rope_theta: float = OP4KSR_ROPE_THETA) -> OP4KSRPipeline:
    """Assemble a pipeline from a real UltraFlux ``vae/`` and ``transformer/`` folder (unchanged
    diffusers layout) plus a safetensors file with ``prompt_embeds`` and ``pooled_prompt_embeds``.
    The transformer gets RFR's θ (default 100) regardless of its YaRN settings."""
    vae_dir, transformer_dir = Path(vae_dir), Path(transformer_dir)
    for d in (vae_dir, transformer_dir):
        refuse_pickles(d)
    vae = load_part("vae", vae_dir)
    transformer = load_part("transformer", transformer_dir, config_overrides={"rope_theta": rope_theta})
    embeds = _load_safetensors(Path(prompt_file), "prompt embeddings")
    for key in ("prompt_embeds", "pooled_prompt_embeds"):
        if key not in embeds:
            raise ModelLoadError(f"{prompt_file}: missing tensor {key!r}")
    pe, pooled = embeds["prompt_embeds"], embeds["pooled_prompt_embeds"]
    prompt = FixedPromptEmbeddings(sequence_length=pe.shape[1], joint_attention_dim=pe.shape[2],
                                   pooled_projection_dim=pooled.shape[-1])
    prompt.load_state_dict({"prompt_embeds": pe.reshape(1, *pe.shape[-2:]),
                            "pooled_prompt_embeds": pooled.reshape(1, -1)})
    return OP4KSRPipeline(vae=vae, transformer=transformer, prompt=prompt, sigma=sigma)
