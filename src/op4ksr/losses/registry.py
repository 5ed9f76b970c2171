"""The registered losses: finding them, the ``[loss]`` table's keys, building the weighted ones.

Every module of the ``op4ksr.losses`` package except the machinery (``base``, ``registry``,
``combined``) is a loss module, imported on first use (as pyiqa finds its architectures), so
adding a loss is adding its file. See :mod:`op4ksr.losses.base` for the class contract.

The ``[loss]`` table (``op4ksr.train.config.LossConfig``) is flat: a loss's weight under its
name, each of its options under ``NAME_OPTION``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from op4ksr.losses.base import _REGISTRY, KINDS, Loss
from op4ksr.utils.plugins import import_package_modules


class UnknownLossKeyError(KeyError):
    """A ``[loss]`` key naming no registered loss or option; ``args[0]`` is the one-line message."""

    def __init__(self, key: str) -> None:
        super().__init__(unknown_key_message(key))
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


_MACHINERY = frozenset({"base", "registry", "combined"})


@functools.cache  # once per process: every lookup below goes through it
def _discover() -> None:
    import_package_modules("op4ksr.losses", exclude=_MACHINERY)


def loss_classes() -> dict[str, type[Loss]]:
    """Every registered loss by name, in summation order (``order``, then name)."""
    _discover()
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[1].order, item[0])))


def available_losses() -> list[str]:
    return sorted(loss_classes())


def loss_class(name: str) -> type[Loss]:
    classes = loss_classes()
    if name not in classes:
        raise KeyError(f"unknown loss {name!r}; valid names: {', '.join(sorted(classes))}")
    return classes[name]


def option_keys() -> dict[str, tuple[str, str]]:
    """``[loss]`` option key → (loss name, option name), e.g. ``lpips_net`` → (``lpips``, ``net``)."""
    keys = {f"{name}_{option}": (name, option) for name, cls in loss_classes().items() for option in cls.options}
    clash = sorted(set(keys) & set(_REGISTRY))
    if clash:
        raise ValueError(f"loss option key {clash[0]!r} is also a loss name")
    return keys


def default_weights() -> dict[str, float]:
    return {name: float(cls.default_weight) for name, cls in loss_classes().items()}


def default_options() -> dict[str, dict[str, Any]]:
    return {name: dict(cls.options) for name, cls in loss_classes().items()}


def split_table(table: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A flat ``[loss]`` table → (weights by loss name, options by loss name), values as given.

    Only the keys present are returned; an unknown key raises :class:`UnknownLossKeyError`,
    whose message is one line with the valid names.
    """
    classes, options = loss_classes(), option_keys()
    weights: dict[str, Any] = {}
    opts: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if key in classes:
            weights[key] = value
        elif key in options:
            name, option = options[key]
            opts.setdefault(name, {})[option] = value
        else:
            raise UnknownLossKeyError(key)
    return weights, opts


def unknown_key_message(key: str) -> str:
    options = ", ".join(sorted(option_keys()))
    return f"[loss] unknown loss {key!r}; valid names: {', '.join(available_losses())} (options: {options})"


def build_losses(weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None, *,
                 kind: str) -> dict[str, Loss]:
    """The losses of ``kind`` whose weight is > 0, built with their options, in summation order.

    A loss with weight 0 (or absent from ``weights``) is not built: it costs nothing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    unknown = sorted((set(weights) | set(options or {})) - set(loss_classes()))
    if unknown:
        raise UnknownLossKeyError(unknown[0])
    options = options or {}
    built: dict[str, Loss] = {}
    for name, cls in loss_classes().items():
        if cls.kind == kind and weights.get(name, 0.0) > 0:
            built[name] = cls(**{**cls.options, **options.get(name, {})})
    return built


def required_assets(weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The offline assets the losses with weight > 0 will load, each once, in order."""
    options = options or {}
    needed: list[str] = []
    for name, cls in loss_classes().items():
        if weights.get(name, 0.0) > 0:
            for asset in cls.required_assets({**cls.options, **options.get(name, {})}):
                if asset not in needed:
                    needed.append(asset)
    return needed
