"""Config-carrying modules and pipelines in diffusers' on-disk layout, without diffusers.

``import diffusers`` costs about 5 s on a 2-core CPU before any model code runs (its utils
import ``torch._dynamo``, peft and transformers), more than the whole compact model takes to
upscale a photo. op4ksr's models therefore own this small base instead of ``ModelMixin`` /
``ConfigMixin`` / ``DiffusionPipeline``, keeping their folder layout exactly::

    part/config.json                          {"_class_name": ..., <constructor arguments>}
    part/diffusion_pytorch_model.safetensors  the state dict
    model_index.json                          {"_class_name": ..., "<part>": [module, class], <pipeline config>}

so a real UltraFlux/Flux ``vae/`` or ``transformer/`` folder loads into our classes and a saved
op4ksr model stays readable by diffusers' ``from_pretrained`` of the stock classes.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PIPELINE_INDEX_NAME = "model_index.json"


class FrozenConfig(dict):
    """A read-only dict whose keys are also attributes (``config.latent_channels``), like diffusers'."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"config is read-only; use register_to_config({name}=...)")

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(f"config is read-only; use register_to_config({key}=...)")

    def __reduce__(self):  # copy/deepcopy/pickle rebuild from a plain dict, not item by item
        return (type(self), (dict(self),))


def _init_parameters(init: Callable) -> list[inspect.Parameter]:
    params = list(inspect.signature(inspect.unwrap(init)).parameters.values())[1:]  # drop self
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def register_to_config(init: Callable) -> Callable:
    """Decorate ``__init__``: its arguments, defaults filled in, become the instance's config.

    When a subclass's decorated ``__init__`` calls a decorated base ``__init__``, the subclass
    (which finishes last) sets the config: the config is always the outermost constructor's.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {name: bound.arguments[name] for name in list(bound.arguments)[1:]
                  if signature.parameters[name].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                             inspect.Parameter.VAR_KEYWORD)}
        init(self, *args, **kwargs)
        self.__dict__["_internal_config"] = FrozenConfig(values)

    return wrapper


def read_config_file(file: Path) -> dict:
    """A config JSON object; ValueError (with the reason) when it is not one."""
    try:
        config = json.loads(Path(file).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"expected a JSON object, got {type(config).__name__}")
    return config


def _json_ready(config: Mapping) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def write_json(file: Path, data: Mapping) -> None:
    file.write_text(json.dumps(_json_ready(data), indent=2, sort_keys=True) + "\n")


class ConfigModel(nn.Module):
    """An ``nn.Module`` built from a config of constructor arguments (diffusers' ModelMixin layout).

    Subclasses decorate ``__init__`` with :func:`register_to_config`. Blocks that loop over
    sub-blocks read their own ``gradient_checkpointing`` flag and call :func:`maybe_checkpoint`.
    """

    config_name = CONFIG_NAME

    @property
    def config(self) -> FrozenConfig:
        return self.__dict__.get("_internal_config", FrozenConfig())

    def register_to_config(self, **values: Any) -> None:
        """Update config values in place (e.g. a trained latent scale); the module is not rebuilt."""
        self.__dict__["_internal_config"] = FrozenConfig({**self.config, **values})

    @classmethod
    def config_keys(cls) -> list[str]:
        return [p.name for p in _init_parameters(cls.__init__)]

    @classmethod
    def from_config(cls, config: Mapping, **overrides: Any):
        """Build from a config; keys the constructor does not take (``_class_name``, another
        implementation's extras such as UltraFlux's YaRN ``method``) are ignored."""
        values = {**config, **overrides}
        keys = cls.config_keys()
        return cls(**{k: values[k] for k in keys if k in values})

    @classmethod
    def load_config(cls, directory: str | Path) -> dict:
        return read_config_file(Path(directory) / cls.config_name)

    def save_config(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / self.config_name, {"_class_name": type(self).__name__, **self.config})

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` and ``diffusion_pytorch_model.safetensors`` in ``directory``."""
        from safetensors.torch import save_file

        self.save_config(directory)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(directory) / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path, **config_overrides: Any):
        """Load a part folder (safetensors only; see :func:`op4ksr.models.loading.load_part`)."""
        from op4ksr.models.loading import load_part

        return load_part(cls.__name__, Path(directory), cls, config_overrides=config_overrides)

    # -- gradient checkpointing (training)
    def enable_gradient_checkpointing(self) -> None:
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, enable: bool) -> None:
        found = False
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enable
                found = True
        if not found:
            raise ValueError(f"{type(self).__name__} has no blocks that support gradient checkpointing")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def maybe_checkpoint(enabled: bool, block: Callable, *args: Any) -> Any:
    """``block(*args)``, recomputed in the backward pass when ``enabled`` and gradients are on."""
    if enabled and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class ConfigPipeline:
    """Named :class:`ConfigModel` parts plus a config, saved as ``model_index.json`` + one folder per part."""

    config_name = PIPELINE_INDEX_NAME
    _optional_components: list[str] = []

    def __init__(self) -> None:
        self._part_names: list[str] = []
        self._internal_config = FrozenConfig()

    @property
    def config(self) -> FrozenConfig:
        return self._internal_config

    def register_to_config(self, **values: Any) -> None:
        self._internal_config = FrozenConfig({**self._internal_config, **values})

    def register_modules(self, **parts: nn.Module | None) -> None:
        for name, module in parts.items():
            if name not in self._part_names:
                self._part_names.append(name)
            setattr(self, name, module)

    @property
    def components(self) -> dict[str, nn.Module | None]:
        return {name: getattr(self, name) for name in self._part_names}

    def save_index(self, directory: str | Path) -> None:
        """``model_index.json`` alone: the config and each part's class (``[null, null]`` when absent)."""
        index: dict[str, Any] = {"_class_name": type(self).__name__, **self.config}
        for name, module in self.components.items():
            index[name] = [None, None] if module is None else [type(module).__module__, type(module).__name__]
        write_json(Path(directory) / self.config_name, index)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, module in self.components.items():
            if module is not None:
                module.save_pretrained(directory / name)
        self.save_index(directory)

    def to(self, device: str | torch.device | torch.dtype | None = None, dtype: torch.dtype | None = None):
        """Move every part (``pipe.to(torch.float32)`` and ``pipe.to("cpu", torch.float16)`` both work)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for module in self.components.values():
            if module is not None:
                nn.Module.to(module, device=device, dtype=dtype)
        return self
