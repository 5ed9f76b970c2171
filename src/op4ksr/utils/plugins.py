"""Registries fill themselves: every module of a package is imported once, so a new loss,
metric or peer is one new file whose decorator registers it (docs/CONTRIBUTING.md)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_package_modules(package: str, exclude: Iterable[str] = ()) -> list[str]:
    """Import every top-level module of ``package`` (by name order) but those in ``exclude`` and
    private ones (``_x``); returns their names. Python caches imports, so calling it again is cheap."""
    pkg = importlib.import_module(package)
    skip = set(exclude)
    names = sorted(info.name for info in pkgutil.iter_modules(pkg.__path__)
                   if not info.ispkg and not info.name.startswith("_") and info.name not in skip)
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
