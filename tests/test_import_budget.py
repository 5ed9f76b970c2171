"""The upscale path imports only what it runs (issue: `op4ksr upscale` answers in seconds).

Each check runs a fresh interpreter, so what another test imported cannot hide a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# Heavy or unrelated to upscaling: training, metrics, peers, curation, and the libraries behind
# them (diffusers alone costs ~5 s to import on a 2-core CPU; torch._dynamo ~2 s).
NOT_ON_THE_UPSCALE_PATH = (
    "diffusers", "peft", "accelerate", "transformers", "ray", "pyiqa", "scipy", "skimage", "tensorboard",
    "torch._dynamo", "torch._inductor", "op4ksr.train", "op4ksr.eval", "op4ksr.losses", "op4ksr.data",
    "op4ksr.serve",
)
# `--help` must not even load the numerical stack.
# (op4ksr.models.constants is fine: it is plain numbers.)
NOT_FOR_HELP = ("torch", "numpy", "PIL", "rich.markdown", "op4ksr.models.loading", "op4ksr.models.pipeline",
                "op4ksr.io.images")

_RUN = """
import json, sys
from op4ksr.cli import app
try:
    app(sys.argv[2:], standalone_mode=False)
finally:
    with open(sys.argv[1], "w") as fh:
        json.dump(sorted(sys.modules), fh)
"""


def _modules_after(args: list[str], tmp_path: Path) -> set[str]:
    listing = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", _RUN, str(listing), *args], capture_output=True, text=True)
    assert listing.is_file(), done.stderr
    return set(json.loads(listing.read_text()))


def _loaded(modules: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(b for b in banned if any(m == b or m.startswith(b + ".") for m in modules))


def test_upscale_with_the_bundled_model_imports_nothing_heavy(tmp_path: Path) -> None:
    src = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src)
    modules = _modules_after(["upscale", str(src), "-o", str(tmp_path / "out")], tmp_path)
    assert (tmp_path / "out" / "small_x4.png").is_file()
    assert "op4ksr.models.transformer" in modules and "torch" in modules  # the real path ran
    assert _loaded(modules, NOT_ON_THE_UPSCALE_PATH) == []


def test_help_imports_no_numerical_stack(tmp_path: Path) -> None:
    for args in (["--help"], ["upscale", "--help"]):
        modules = _modules_after(args, tmp_path)
        assert "op4ksr.cli.upscale_cmd" in modules
        assert _loaded(modules, NOT_FOR_HELP) == [], args
