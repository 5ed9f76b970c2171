"""Benchmark peers: a method registry (bicubic, lanczos, op4ksr, op4ksr-tiled, realesrgan).

See :mod:`op4ksr.eval.peers.registry` for the contract and how to add a method.
"""

from __future__ import annotations

# Imported for their side effects: the `realesrgan` method, and the recipe of its default weights
# (the `realesrgan-x4plus` asset), so that the asset is known wherever the method is loaded.
from op4ksr.eval.peers import realesrgan as realesrgan
from op4ksr.eval.peers import realesrgan_ncnn as realesrgan_ncnn
from op4ksr.eval.peers.registry import (
    SRMethod,
    create_method,
    list_methods,
    parse_method_spec,
    register_method,
)

__all__ = ["SRMethod", "create_method", "list_methods", "parse_method_spec", "realesrgan", "realesrgan_ncnn",
           "register_method"]
