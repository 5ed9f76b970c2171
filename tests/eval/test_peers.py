"""Benchmark method registry: specs, built-in interpolators, op4ksr wiring, adding a method."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from op4ksr.eval.peers import (
    SRMethod,
    create_method,
    list_methods,
    parse_method_spec,
    register_method,
)
from op4ksr.eval.peers import registry as registry_module


def test_builtin_methods_are_registered():
    assert {"bicubic", "lanczos", "op4ksr", "op4ksr-tiled", "realesrgan"} <= set(list_methods())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bicubic", ("bicubic", None)),
        ("op4ksr:/models/ultra", ("op4ksr", "/models/ultra")),
        ("op4ksr-tiled:C:\\models\\x", ("op4ksr-tiled", "C:\\models\\x")),  # only the first ':' splits
    ],
)
def test_parse_method_spec(spec, expected):
    assert parse_method_spec(spec) == expected


def test_bad_specs_and_options_give_clear_errors():
    with pytest.raises(ValueError, match="unknown method 'nope'; known: .*bicubic"):
        create_method("nope")
    with pytest.raises(ValueError, match="empty argument"):
        parse_method_spec("op4ksr:")
    with pytest.raises(ValueError, match="does not take option"):
        create_method("bicubic", tile=64)
    with pytest.raises(ValueError, match="integer scale"):
        create_method("lanczos:big")


def _keys_cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel, written out from its definition."""
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def test_bicubic_equals_the_hand_written_keys_kernel_and_keeps_constants():
    h, w, s = 6, 10, 4
    rng = np.random.default_rng(1)
    row = rng.uniform(0.2, 0.8, w)
    image = torch.from_numpy(np.tile(row, (1, 3, h, 1))).float()
    method = create_method("bicubic", device="cpu")
    out = method(image)
    assert out.shape == (1, 3, h * s, w * s) and method.scale == 4
    # Output pixel j sits at input coordinate u = (j + 0.5)/s − 0.5 (align_corners=False);
    # away from the border it is Σ_k row[k]·W(u − k) over the 4 nearest k.
    for j in range(2 * s, (w - 2) * s):
        u = (j + 0.5) / s - 0.5
        k = np.arange(int(np.floor(u)) - 1, int(np.floor(u)) + 3)
        expected = float(np.sum(row[k] * _keys_cubic(u - k)))
        assert abs(float(out[0, 1, 3, j]) - min(max(expected, 0), 1)) < 1e-5
    flat = create_method("bicubic:3", device="cpu")(torch.full((1, 3, 5, 5), 0.3))
    assert flat.shape == (1, 3, 15, 15)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))


def test_interpolators_clamp_their_overshoot():
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    raw = F.interpolate(step, scale_factor=4, mode="bicubic", align_corners=False)
    assert raw.max() > 1 and raw.min() < 0  # the kernel really overshoots …
    for name in ("bicubic", "lanczos"):
        out = create_method(name, device="cpu")(step)
        assert out.min() == 0 and out.max() == 1  # … and the methods clamp it


def test_lanczos_is_float_precise_and_matches_pillow_8bit():
    # 0.3001 is not an 8-bit level: an 8-bit path would return 77/255 ≈ 0.30196.
    method = create_method("lanczos", device="cpu")
    flat = method(torch.full((1, 3, 6, 7), 0.3001))
    assert flat.shape == (1, 3, 24, 28)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3001), atol=1e-6, rtol=0)
    # On a smooth mid-grey 8-bit image (no overshoot past 0/255, which Pillow's 8-bit path
    # clips between its two passes) it agrees with Pillow's RGB LANCZOS to within rounding.
    yy, xx = np.mgrid[0:9, 0:11]
    rgb = np.stack([128 + 50 * np.sin(xx / 3 + c) * np.cos(yy / 4) for c in range(3)], -1).round().astype(np.uint8)
    pil = np.asarray(Image.fromarray(rgb).resize((44, 36), Image.Resampling.LANCZOS), dtype=np.float64)
    ours = method(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0).numpy() * 255
    # Pillow rounds after each pass: ≤ 0.5·Σ|w| (Σ|w| ≈ 1.1 for Lanczos-3) + 0.5 final ≈ 1.05.
    diff = np.abs(ours - pil)
    assert diff.max() < 1.1 and diff.mean() < 0.5


def test_input_is_validated_and_output_returns_to_the_input_device():
    method = create_method("bicubic", device="cpu")
    with pytest.raises(ValueError, match=r"bicubic: expected an RGB batch \[B,3,h,w\]"):
        method(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="float tensor"):
        method(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    out = method(torch.rand(2, 3, 4, 5, dtype=torch.float64))
    assert out.dtype == torch.float32 and out.device == torch.device("cpu") and out.shape == (2, 3, 16, 20)


def test_adding_a_method_takes_a_few_lines(monkeypatch):
    monkeypatch.setattr(registry_module, "_METHODS", dict(registry_module._METHODS))
    closed = []

    @register_method("nearest")
    class Nearest(SRMethod):
        def __init__(self, arg=None, *, device="auto", scale=4):
            super().__init__(name="nearest", scale=int(arg or scale), device=device)

        def upscale(self, lr):
            return F.interpolate(lr, scale_factor=self.scale, mode="nearest")

        def close(self):
            closed.append(self.name)

    lr = torch.rand(1, 3, 3, 4)
    with create_method("nearest:2", device="cpu") as method:
        assert torch.equal(method(lr), lr.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert closed == ["nearest"]
    with pytest.raises(ValueError, match="already registered"):
        register_method("nearest")(lambda arg, **kw: None)
    with pytest.raises(ValueError, match="contain no ':'"):
        register_method("a:b")


class _FakePipe:
    scale = 2
    device = torch.device("cpu")

    def __init__(self):
        self.calls: list[bool] = []
        self.grid_fixes: list[str | None] = []

    def __call__(self, images, tiled=False, grid_fix=None):
        self.calls.append(tiled)
        self.grid_fixes.append(grid_fix)
        return F.interpolate(images, scale_factor=self.scale, mode="nearest")


def test_op4ksr_methods_call_the_pipeline(monkeypatch):
    loaded: list[tuple] = []
    pipe = _FakePipe()

    def fake_load_pipeline(model=None, device="auto", dtype=None):
        loaded.append((model, device, dtype))
        return pipe

    try:
        loading = importlib.import_module("op4ksr.models.loading")
        monkeypatch.setattr(loading, "load_pipeline", fake_load_pipeline)
    except ModuleNotFoundError:  # the pipeline loader may not exist yet: stand in for it
        fake = types.ModuleType("op4ksr.models.loading")
        fake.load_pipeline = fake_load_pipeline
        monkeypatch.setitem(sys.modules, "op4ksr.models.loading", fake)

    lr = torch.rand(1, 3, 4, 6)
    patch_free = create_method("op4ksr:/models/m", device="cpu")
    tiled = create_method("op4ksr-tiled", device="cpu")
    assert (patch_free.name, patch_free.scale, tiled.name) == ("op4ksr", 2, "op4ksr-tiled")
    assert patch_free(lr).shape == tiled(lr).shape == (1, 3, 8, 12)
    assert pipe.calls == [False, True]
    assert loaded == [("/models/m", "cpu", None), (None, "cpu", None)]
    raw = create_method("op4ksr-nogridfix", device="cpu")  # the network's output, notch off
    assert raw.name == "op4ksr-nogridfix" and raw(lr).shape == (1, 3, 8, 12)
    assert pipe.grid_fixes == [None, None, "none"]

    tiled.close()
    with pytest.raises(RuntimeError, match="closed"):
        tiled(lr)


def test_raw_and_fidelity0_methods_pass_their_overrides(monkeypatch):
    calls: list[dict] = []

    class _Pipe(_FakePipe):
        def __call__(self, images, tiled=False, grid_fix=None, **overrides):
            calls.append({"grid_fix": grid_fix, **overrides})
            return super().__call__(images, tiled, grid_fix)

    loading = importlib.import_module("op4ksr.models.loading")
    monkeypatch.setattr(loading, "load_pipeline", lambda model=None, device="auto", dtype=None: _Pipe())
    lr = torch.rand(1, 3, 4, 6)
    create_method("op4ksr-raw", device="cpu")(lr)
    create_method("op4ksr-fidelity0", device="cpu")(lr)
    assert calls == [{"grid_fix": "none", "color_fix": "none"}, {"grid_fix": None, "fidelity": 0.0}]
