"""Post-step names are checked against the modules' own lists, with a message naming the choices."""

from __future__ import annotations

import pytest

from op4ksr.models.color import COLOR_FIXES
from op4ksr.models.grid_fix import GRID_FIXES
from op4ksr.models.post_steps import check_post_steps


def test_known_names_and_none_pass() -> None:
    for color in (None, *COLOR_FIXES):
        for grid in (None, *GRID_FIXES):
            check_post_steps(color, grid)


def test_unknown_names_list_every_choice() -> None:
    with pytest.raises(ValueError, match=r"^--color-fix 'sepia': choose none, wavelet or adain$"):
        check_post_steps("sepia", None)
    with pytest.raises(ValueError, match=r"^--grid-fix 'blur': choose none or notch$"):
        check_post_steps(None, "blur")
