import pytest
import torch
from numerics import assert_within, summation_bound

from op4ksr.models.color import adain_color_fix, apply_color_fix, low_frequency, wavelet_color_fix


def test_wavelet_fix_removes_a_colour_shift_exactly_and_keeps_detail():
    torch.manual_seed(0)
    ref = torch.rand(1, 3, 64, 64)
    shift = torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(wavelet_color_fix(ref + shift, ref), ref)
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float() * 0.1 - 0.05
    fixed = wavelet_color_fix(ref + checker, ref)
    # a 1-px checkerboard is pure high frequency: it survives, within the blur's leakage
    assert (fixed - ref - checker).abs().mean() < 0.01
    assert low_frequency(torch.full((1, 1, 16, 16), 0.3)).sub(0.3).abs().max() < 1e-6


def _reference_low_frequency(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The colour anchor's definition, written plainly: 3×3 binomial depthwise convolutions
    with holes 1, 2, 4, … on replicate-padded input."""
    import torch.nn.functional as F

    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
    for i in range(levels):
        d = 2**i
        x = F.conv2d(F.pad(x, (d,) * 4, mode="replicate"), kernel, groups=x.shape[1], dilation=d)
    return x


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 37, 50), (1, 1, 9, 12)])
def test_separable_low_pass_and_one_pass_fix_equal_the_definition(shape):
    # the fast forms (separable shifted sums; sr + low(ref − sr)) against the 2-D definition,
    # including images smaller than the largest hole (16 px)
    torch.manual_seed(2)
    sr, ref = torch.rand(shape), torch.rand(shape)
    # Tolerance from the arithmetic: each level is a weighted average (weights ≥ 0, sum 1) of 9
    # values in [0, 1], so the two summation orders differ by ≤ summation_bound(1, 9) per level,
    # and averaging never amplifies an earlier difference: 5 levels add up.
    low_bound = 5 * summation_bound(torch.tensor(1.0), 9)
    assert_within(low_frequency(sr), _reference_low_frequency(sr), low_bound)
    definition = sr - _reference_low_frequency(sr) + _reference_low_frequency(ref)
    # sr + low(ref − sr) vs sr − low(sr) + low(ref): two low-passes' bounds (inputs in [−1, 1]
    # or [0, 1]) plus a rounding of each of the three additions of values ≤ 2
    eps = torch.finfo(torch.float32).eps
    assert_within(wavelet_color_fix(sr, ref), definition, 2 * low_bound + 3 * 2 * eps)


def test_adain_matches_mean_and_std():
    torch.manual_seed(1)
    sr, ref = torch.rand(2, 3, 32, 32) * 0.5, torch.rand(2, 3, 32, 32)
    out = adain_color_fix(sr, ref)
    torch.testing.assert_close(out.mean((-2, -1)), ref.mean((-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((-2, -1)), ref.std((-2, -1)), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown colour fix"):
        apply_color_fix(sr, ref, "sepia")


def test_pipeline_color_fix_is_config_and_per_call(tiny_pipeline, tmp_path):
    from op4ksr.models.loading import from_pretrained

    x = torch.rand(1, 3, 32, 32)
    plain = tiny_pipeline(x)
    fixed = tiny_pipeline(x, color_fix="wavelet")
    assert fixed.shape == plain.shape and not torch.equal(fixed, plain)
    tiny_pipeline.register_to_config(color_fix="wavelet")
    tiny_pipeline.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config.color_fix == "wavelet"
    torch.testing.assert_close(loaded(x), fixed)
    torch.testing.assert_close(loaded(x, color_fix="none"), plain)
