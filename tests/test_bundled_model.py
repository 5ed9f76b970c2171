"""The compact model shipped inside the package: loads from safetensors, runs the README example."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from op4ksr.models.loading import bundled_model_dir, load_pipeline

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut_degraded_lr.png"


def test_bundled_model_is_safetensors_and_small():
    root = bundled_model_dir()
    assert (root / "model_index.json").is_file()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert all(p.suffix in {".json", ".safetensors"} for p in files), files
    assert sum(p.stat().st_size for p in files) < 25 * 2**20  # a shipped weight version is ≤ 25 MB


def test_default_model_upscales_the_readme_example(tmp_path):
    import op4ksr

    pipe = load_pipeline()
    assert pipe.scale == 4 and pipe.transformer.config.rope_theta == 100.0
    # v2.0 (docs/MODEL_CARD.md): SPAN at the LR size with the DiT's latent fused in, no post-steps
    assert (pipe.config.color_fix, pipe.config.grid_fix) == ("none", "none")
    assert pipe.compensation is None and pipe.pixel_path is not None and pipe.pixel_path.uses_latent
    assert 0.0 <= pipe.fidelity <= 1.0
    out = op4ksr.upscale(EXAMPLE, model=pipe)
    w, h = Image.open(EXAMPLE).size
    assert out.size == (4 * w, 4 * h)
    arr = np.asarray(out, dtype=np.float64)
    assert np.isfinite(arr).all() and arr.std() > 5  # an image, not a constant
    # the two ends are trained apart: the knob changes the output
    ends = [np.asarray(op4ksr.upscale(EXAMPLE, model=pipe, fidelity=f), dtype=np.float64) for f in (0.0, 1.0)]
    assert np.abs(ends[0] - ends[1]).mean() > 0.5
    # OP4KSR's path is in the output: the fused DiT latent changes it
    import torch

    lr = torch.from_numpy(np.asarray(Image.open(EXAMPLE).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        step = pipe.lr_latent(lr)
        with_latent = pipe.decode(pipe.denoise(step.latent), fidelity=pipe.fidelity, lr=step.lr)
        zero_latent = pipe.decode(torch.zeros_like(step.latent), fidelity=pipe.fidelity, lr=step.lr)
    assert (with_latent - zero_latent).abs().mean() * 255 > 0.1


@pytest.mark.slow
def test_readme_main_command(tmp_path):
    from typer.testing import CliRunner

    from op4ksr.cli import app

    result = CliRunner().invoke(app, ["upscale", str(EXAMPLE), "-o", str(tmp_path / "upscaled")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "upscaled" / "astronaut_degraded_lr_x4.png").size == (512, 512)
