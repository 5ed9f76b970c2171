"""The pipeline's optional post-steps (colour anchor, token-harmonic notch): their names, checked once.

The CLI (`upscale`, `export`) and the batch options validate a user's choice here, so the
accepted names and the error message both come from the modules' own lists.
"""

from __future__ import annotations

from op4ksr.models.color import COLOR_FIXES
from op4ksr.models.grid_fix import GRID_FIXES


def _choices(options: tuple[str, ...]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def check_post_steps(color_fix: str | None, grid_fix: str | None, fidelity: float | None = None) -> None:
    """Raise ``ValueError`` ("--color-fix 'x': choose none, wavelet or adain") for an unknown
    name or a ``fidelity`` outside [0, 1]; ``None`` means "the model's own setting" and always passes."""
    if fidelity is not None and not 0.0 <= float(fidelity) <= 1.0:
        raise ValueError(f"--fidelity {fidelity:g}: choose a value from 0 (the decoder alone) to 1 (full compensation)")
    if color_fix is not None and color_fix not in COLOR_FIXES:
        raise ValueError(f"--color-fix {color_fix!r}: choose {_choices(COLOR_FIXES)}")
    if grid_fix is not None and grid_fix not in GRID_FIXES:
        raise ValueError(f"--grid-fix {grid_fix!r}: choose {_choices(GRID_FIXES)}")
