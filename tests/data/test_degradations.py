from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from op4ksr.data.degradations import (
    DegradationConfig,
    DegradationPipeline,
    FinalConfig,
    StageConfig,
    available_presets,
    filter2d,
    gaussian_kernel,
    generalized_gaussian_kernel,
    load_preset,
    plateau_kernel,
    sinc_kernel,
)


def photo_batch(size: int = 128) -> torch.Tensor:
    crops = [getattr(data, n)()[:size, :size] for n in ("astronaut", "coffee", "chelsea")]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def qtable_to_quality() -> dict[tuple[int, ...], set[int]]:
    """Independent oracle: the luma table Pillow writes at each quality."""
    table: dict[tuple[int, ...], set[int]] = {}
    img = Image.new("RGB", (8, 8))
    for q in range(1, 101):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        table.setdefault(tuple(Image.open(buf).quantization[0]), set()).add(q)
    return table


def test_presets_match_reference_table() -> None:
    assert available_presets() == ["clean", "jpeg", "light", "mild", "osediff", "s3diff"]
    clean, jpeg = load_preset("clean"), load_preset("jpeg")
    assert clean.resize_modes == jpeg.resize_modes == ("bicubic",) and clean.noise_prob == jpeg.noise_prob == 0.0
    assert clean.jpeg_prob == 0.0 and jpeg.jpeg_prob == 1.0 and jpeg.jpeg_range == (60, 60)
    o, s = load_preset("osediff"), load_preset("s3diff")
    assert o.stage1.resize_range == (0.15, 1.5) and s.stage1.resize_range == (0.3, 1.5)
    assert o.stage1.noise_range == (1.0, 30.0) and s.stage1.noise_range == (1.0, 15.0)
    assert o.stage1.poisson_scale_range == (0.05, 3.0) and s.stage1.poisson_scale_range == (0.05, 2.0)
    assert o.stage1.jpeg_range == (30, 95) and s.stage1.jpeg_range == (60, 95)
    assert o.stage2.blur_prob == 0.8 and s.stage2.blur_prob == 0.5
    assert o.stage2.resize_prob == s.stage2.resize_prob == (0.3, 0.4, 0.3)
    assert o.stage2.noise_range == (1.0, 25.0) and s.stage2.noise_range == (1.0, 12.0)
    assert s.stage2.jpeg_range == (60, 100) and o.stage2.jpeg_range == (30, 95)
    assert s.stage1.kernel_sizes == (21,) and s.stage2.kernel_sizes == (11,)
    assert o.stage1.blur_sigma == (0.2, 3.0) and o.stage2.blur_sigma == (0.2, 1.5)
    assert math.isclose(sum(o.stage1.kernel_prob), 1.0)
    with pytest.raises(ValueError, match="unknown degradation preset"):
        load_preset("nope")


def test_preset_toml_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[stage1]\nnot_a_key = 1\n")
    with pytest.raises(ValueError, match="bad.toml.*not_a_key"):
        load_preset(bad)


def test_kernels_by_hand() -> None:
    k = gaussian_kernel(3, 1.0, 1.0)
    # exp(-r²/2) at r² = 0, 1, 2, normalised.
    w = np.array([[math.exp(-1), math.exp(-0.5), math.exp(-1)], [math.exp(-0.5), 1, math.exp(-0.5)],
                  [math.exp(-1), math.exp(-0.5), math.exp(-1)]])
    np.testing.assert_allclose(k, w / w.sum(), rtol=1e-12)
    # β = 1 makes the generalised Gaussian a Gaussian.
    np.testing.assert_allclose(generalized_gaussian_kernel(7, 1.2, 0.7, 0.3, 1.0), gaussian_kernel(7, 1.2, 0.7, 0.3))
    # An anisotropic kernel rotated by 90° swaps its axes.
    np.testing.assert_allclose(gaussian_kernel(9, 2.0, 0.5, math.pi / 2), gaussian_kernel(9, 0.5, 2.0, 0.0), atol=1e-12)
    for kernel in (plateau_kernel(11, 1.5, 1.5, 0, 1.5), sinc_kernel(11, math.pi / 2)):
        assert math.isclose(kernel.sum(), 1.0)
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)
        assert kernel[5, 5] == kernel.max()
    # Identity kernel leaves an image unchanged.
    img = torch.rand(1, 3, 16, 16)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    assert torch.allclose(filter2d(img, delta), img)


def test_same_seed_same_bytes_and_shape() -> None:
    pipe = DegradationPipeline.from_preset("osediff", scale=4)
    hr = photo_batch()
    lr1, rec1 = pipe.degrade(hr, torch.Generator().manual_seed(0))
    lr2, rec2 = pipe.degrade(hr, torch.Generator().manual_seed(0))
    lr3 = pipe(hr, 1)
    assert lr1.shape == (3, 3, 32, 32) and lr1.dtype == torch.float32
    assert lr1.numpy().tobytes() == lr2.numpy().tobytes()
    assert [r.to_dict() for r in rec1] == [r.to_dict() for r in rec2]
    assert not torch.equal(lr1, lr3)
    # Output lies on the 8-bit grid.
    assert torch.equal((lr1 * 255).round() / 255, lr1)


def test_one_image_does_not_depend_on_its_batch() -> None:
    pipe = DegradationPipeline.from_preset("s3diff", scale=2)
    hr = photo_batch(64)
    _, recs = pipe.degrade(hr, 5)
    alone, _ = pipe.degrade_one(hr[1:2], recs[1].seed)
    batch, _ = pipe.degrade(hr, 5)
    assert torch.equal(alone[0], batch[1])


@pytest.mark.parametrize("preset", ["osediff", "s3diff"])
def test_recorded_parameters_within_preset(preset: str) -> None:
    cfg = load_preset(preset)
    pipe = DegradationPipeline(cfg, scale=4)
    _, records = pipe.degrade(photo_batch(96).repeat(4, 1, 1, 1), 3)
    oracle = qtable_to_quality()
    for rec in records:
        for stage, sc in (("stage1", cfg.stage1), ("stage2", cfg.stage2)):
            part = getattr(rec, stage)
            noise = part["noise"]
            if noise["kind"] == "gaussian":
                assert sc.noise_range[0] <= noise["sigma"] <= sc.noise_range[1]
            else:
                assert sc.poisson_scale_range[0] <= noise["scale"] <= sc.poisson_scale_range[1]
            if part["kernel"] and part["kernel"]["type"] != "sinc":
                assert part["kernel"]["size"] in sc.kernel_sizes
                assert sc.blur_sigma[0] <= part["kernel"]["sigma_x"] <= sc.blur_sigma[1]
        # JPEG quality recovered from the encoded file's quantisation table.
        for part, rng in ((rec.stage1, cfg.stage1.jpeg_range), (rec.final, cfg.stage2.jpeg_range)):
            candidates = oracle[tuple(part["jpeg_qtable"])]
            assert part["jpeg_quality"] in candidates
            assert all(rng[0] <= q <= rng[1] for q in candidates) or candidates & set(range(rng[0], rng[1] + 1))


def test_measured_noise_sigma_matches_the_drawn_sigma() -> None:
    """Noise only (every other operation the identity) on flat grey: measured σ == drawn σ, in range."""
    base = load_preset("osediff")
    # Grey noise: colour noise would be partly averaged away by JPEG's 4:2:0 chroma subsampling.
    keep = dict(resize_prob=(0.0, 0.0, 1.0), gaussian_noise_prob=1.0, gray_noise_prob=1.0, jpeg_range=(100, 100),
                sinc_prob=0.0)
    cfg = DegradationConfig(
        stage1=dataclasses.replace(base.stage1, **keep),
        stage2=dataclasses.replace(base.stage2, blur_prob=0.0, noise_range=(0.0, 0.0), **keep),
        final=FinalConfig(sinc_prob=0.0),
    )
    hr = torch.full((8, 3, 128, 128), 0.5)
    lr, recs = DegradationPipeline(cfg, scale=1).degrade(hr, 11)
    for img, rec in zip(lr, recs):
        sigma = rec.stage1["noise"]["sigma"]
        measured = float(((img - 0.5) * 255).std())
        assert 1.0 <= sigma <= 30.0
        # 8-bit rounding and q100 JPEG add ~0.3 grey level of error in quadrature.
        assert abs(measured - math.sqrt(sigma**2 + 0.09)) < 0.1 + 0.03 * sigma, (sigma, measured)


def test_grey_noise_is_the_same_in_all_channels() -> None:
    base = StageConfig(resize_prob=(0, 0, 1), gaussian_noise_prob=1.0, gray_noise_prob=1.0, jpeg_range=(100, 100),
                       noise_range=(10, 10))
    cfg = DegradationConfig(stage1=base, stage2=dataclasses.replace(base, blur_prob=0.0), final=FinalConfig(0.0))
    lr = DegradationPipeline(cfg, scale=1)(torch.full((1, 3, 64, 64), 0.5), 0)
    # q100 JPEG with 4:2:0 chroma leaves a little colour error; grey noise keeps channels nearly equal.
    assert float((lr[0, 0] - lr[0, 1]).abs().mean()) < 2 / 255
    assert float(lr.std()) > 5 / 255


def test_works_on_non_divisible_sizes_and_rejects_bad_input() -> None:
    pipe = DegradationPipeline.from_preset("osediff", scale=4)
    assert pipe(torch.rand(1, 3, 70, 45), 0).shape == (1, 3, 17, 11)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        pipe(torch.rand(3, 64, 64), 0)
