"""Adding a loss, a metric, a peer or a preset is one file (docs/CONTRIBUTING.md).

Each case drops exactly one new module next to the package (a directory appended to the
package's ``__path__``, so nothing in the source tree is touched) and shows that the registry,
and for a loss the training config, picks it up with no other edit. They run in a fresh
interpreter so the test registrations never leak into other tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from op4ksr.utils.plugins import import_package_modules

LOSS_FILE = '''
from op4ksr.losses.base import Loss, register_loss


@register_loss("mean_shift")
class MeanShiftLoss(Loss):
    """|mean(pred) − mean(target)|: a colour-cast penalty."""

    order = 90

    def forward(self, pred, target):
        return (pred.mean() - target.mean()).abs()
'''

METRIC_FILE = '''
import torch

from op4ksr.eval.metrics.base import Metric, register_metric


@register_metric
class MeanAbsError(Metric):
    name = "mae_test"
    lower_better = True
    full_reference = True

    def compute(self, images, reference):
        return (images - reference).abs().flatten(1).mean(1)
'''

PEER_FILE = '''
import torch.nn.functional as F

from op4ksr.eval.peers.registry import SRMethod, register_method


@register_method("area-test")
class AreaThenNearest(SRMethod):
    def __init__(self, arg=None, *, device="auto"):
        super().__init__(name="area-test", scale=4, device=device)

    def upscale(self, lr):
        return F.interpolate(lr, scale_factor=4, mode="nearest")
'''


def _run(tmp_path: Path, package: str, module: str, source: str, check: str) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / f"{module}.py").write_text(textwrap.dedent(source))
    script = textwrap.dedent(f"""
        import {package} as package
        package.__path__.append({str(plugin_dir)!r})   # the one new file, as if it sat in the package
        from op4ksr.utils.plugins import import_package_modules
        import_package_modules({package!r})
    """) + textwrap.dedent(check)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_new_loss_is_one_file_and_a_weight(tmp_path: Path) -> None:
    config = tmp_path / "sr.toml"
    config.write_text('stage = "vae"\n[loss]\nmean_shift = 0.5\n')
    _run(tmp_path, "op4ksr.losses", "mean_shift", LOSS_FILE, f"""
        import torch
        from op4ksr.losses.registry import loss_classes
        from op4ksr.train.config import load_config
        assert "mean_shift" in loss_classes()
        cfg = load_config({str(config)!r}, check_paths=False)
        assert cfg.loss.mean_shift == 0.5
        loss = loss_classes()["mean_shift"]()
        assert float(loss(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4))) == 1.0
    """)


def test_a_new_metric_is_one_file(tmp_path: Path) -> None:
    _run(tmp_path, "op4ksr.eval.metrics", "mae_test", METRIC_FILE, """
        import torch
        from op4ksr.eval.metrics import available_metrics, create_metric
        assert "mae_test" in available_metrics()
        value = create_metric("mae_test")(torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.25))
        assert value.tolist() == [0.25, 0.25]
    """)


def test_a_new_peer_is_one_file(tmp_path: Path) -> None:
    _run(tmp_path, "op4ksr.eval.peers", "area_test", PEER_FILE, """
        import torch
        from op4ksr.eval.peers import create_method, list_methods
        assert "area-test" in list_methods()
        out = create_method("area-test", device="cpu").upscale(torch.rand(1, 3, 5, 7))
        assert out.shape == (1, 3, 20, 28)
    """)


def test_a_new_preset_is_one_registration(tmp_path: Path) -> None:
    # presets are data: one register_preset call (in models/presets.py, or in the user's own code)
    _run(tmp_path, "op4ksr.models", "narrow_preset", '''
from op4ksr.models.presets import ModelPreset, get_preset, register_preset

tiny = get_preset("tiny")
register_preset(ModelPreset(name="tiny-narrow", description="tiny with half the DiT heads",
                            vae=tiny.vae, transformer={**tiny.transformer, "num_attention_heads": 1},
                            prompt=tiny.prompt, pipeline=tiny.pipeline, compensation=tiny.compensation))
''', """
        import torch
        from op4ksr.models.presets import build_pipeline, list_presets
        assert "tiny-narrow" in list_presets()
        pipe = build_pipeline("tiny-narrow")
        assert pipe.transformer.config.num_attention_heads == 1
        assert pipe(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)
    """)


def test_discovery_imports_every_public_module_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "plugpkg"
    package.mkdir()
    (package / "__init__.py").write_text("LOADED = []\n")
    for name in ("b_two", "a_one", "_private", "skipped"):
        (package / f"{name}.py").write_text(f"import plugpkg\nplugpkg.LOADED.append({name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_package_modules("plugpkg", exclude={"skipped"}) == ["a_one", "b_two"]
    import plugpkg

    assert plugpkg.LOADED == ["a_one", "b_two"]
    import_package_modules("plugpkg", exclude={"skipped"})  # cached: not run twice
    assert plugpkg.LOADED == ["a_one", "b_two"]
    sys.modules.pop("plugpkg", None)
    for name in ("a_one", "b_two"):
        sys.modules.pop(f"plugpkg.{name}", None)
