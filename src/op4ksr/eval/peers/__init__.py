"""Benchmark peers: a method registry (bicubic, lanczos, op4ksr, op4ksr-tiled, realesrgan, span,
clearreality, and the last two on the ncnn runtime: span-ncnn, clearreality-ncnn).

See :mod:`op4ksr.eval.peers.registry` for the contract and how to add a method.
"""

from __future__ import annotations

from op4ksr.eval.peers.registry import (
    SRMethod,
    create_method,
    list_methods,
    parse_method_spec,
    register_method,
)

from op4ksr.utils.plugins import import_package_modules

# Every module of this package registers its methods (and asset recipes, e.g. `realesrgan-x4plus`
# in realesrgan_ncnn) on import: a new peer is one new file. Wherever a method is loaded, all are known.
import_package_modules(__name__)

__all__ = ["SRMethod", "create_method", "list_methods", "parse_method_spec", "register_method"]
