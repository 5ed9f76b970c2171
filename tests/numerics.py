"""Comparisons whose tolerances come from the arithmetic, not from the CPU a test first ran on.

Two pipelines with bit-identical weights compute the same function, yet their float32 outputs
differ: the BLAS/oneDNN kernels choose their reduction order from the CPU's vector width, the
thread count and the weights' memory alignment, so one DiT call already differs by an ulp and
the decoder amplifies that (2.9e-6 on an AMD EPYC, 0 on the Intel Xeons). Evaluated in float64
the same reorderings change a sum by about n·2⁻⁵³ ≈ 1e-16 relative (≲1e-13 after the network's
gain); the pipeline returns float32, and that final cast can put two such results on adjacent
float32 values: one float32 ulp below 1.0 (2⁻²⁴ ≈ 6e-8) is the whole tolerance. A real difference
(another weight, config value or step) is ≥ 1e-4. So "the same model" is checked in float64.
"""

from __future__ import annotations

import torch

# outputs lie in [0, 1]: one float32 ulp of the largest value below 1.0 (the final cast's rounding)
FLOAT64_FUNCTION_ATOL = 2.0**-24


def assert_same_function(a, b, images: torch.Tensor, *, a_call: dict | None = None, b_call: dict | None = None,
                         **call) -> None:
    """``a(images, **call, **a_call)`` equals ``b(images, **call, **b_call)`` when both run in float64.

    Both pipelines are moved to float64 and back (float32 → float64 → float32 is exact)."""
    dtypes = a.dtype, b.dtype
    try:
        a.to(torch.float64)
        b.to(torch.float64)
        with torch.no_grad():
            out_a = a(images.double(), **call, **(a_call or {})).double()
            out_b = b(images.double(), **call, **(b_call or {})).double()
    finally:
        a.to(dtypes[0])
        b.to(dtypes[1])
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=FLOAT64_FUNCTION_ATOL)


def summation_bound(magnitude: torch.Tensor, n_terms: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Largest difference two evaluation orders of the same sums can have: each computed sum of
    n terms is within γₙ·Σ|terms| of the exact one, γₙ = n·u/(1 − n·u), u = eps/2 (Higham,
    *Accuracy and Stability of Numerical Algorithms*, §3.1), so two orders differ by at most
    2·γₙ·Σ|terms|. ``magnitude`` is Σ|terms| per output element."""
    u = torch.finfo(dtype).eps / 2
    gamma = n_terms * u / (1 - n_terms * u)
    return 2 * gamma * magnitude


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound) -> None:
    """|actual − expected| ≤ bound everywhere (``bound`` a tensor broadcasting to them, or a number)."""
    excess = (actual - expected).abs() - torch.as_tensor(bound, dtype=actual.dtype)
    assert excess.max().item() <= 0, f"exceeds the rounding bound by up to {excess.max().item():.3g}"
