"""to_tensor/from_tensor: the one conversion between image arrays and the model's tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from op4ksr.io.images import _quantise, from_tensor, to_tensor


def test_integer_arrays_are_scaled_and_floats_kept() -> None:
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    assert torch.equal(to_tensor(u8), torch.from_numpy(u8.copy()).permute(2, 0, 1)[None].float() / 255)
    u16 = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    assert torch.equal(to_tensor(u16)[0, 0], torch.from_numpy(u16.astype(np.float32) / 65535.0))
    floats = np.array([[[-0.5, 0.25, 1.5]]], dtype=np.float64)
    tensor = to_tensor(floats)
    assert tensor.dtype == torch.float32 and tensor.shape == (1, 3, 1, 1)
    assert tensor.flatten().tolist() == [-0.5, 0.25, 1.5]  # not clamped


def test_float32_is_a_view_and_comes_back_unchanged() -> None:
    pixels = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    tensor = to_tensor(pixels)
    assert tensor.shape == (1, 3, 5, 7) and tensor.data_ptr() == pixels.ctypes.data
    back = from_tensor(tensor)
    assert back.dtype == np.float32 and np.array_equal(back, pixels)
    assert np.array_equal(from_tensor(tensor[0]), pixels)  # [C, H, W] too


def test_from_tensor_clamps_and_quantises_like_save_image() -> None:
    tensor = torch.tensor([-0.2, 0.5 / 255, 1.5 / 255, 0.5, 1.2]).reshape(1, 1, 1, 5)
    assert from_tensor(tensor).ravel().tolist() == pytest.approx([0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0])
    values = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    for dtype, bits in ((np.uint8, 8), (np.uint16, 16)):
        out = from_tensor(values, dtype)
        assert out.dtype == dtype
        assert np.array_equal(out, _quantise(values[0].permute(1, 2, 0).numpy(), bits))
    # round half to even, as torch.round: the 8-bit conversions this replaced
    assert np.array_equal(from_tensor(values, np.uint8),
                          (values[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy())
    with pytest.raises(ValueError, match="float32, uint8 or uint16"):
        from_tensor(values, np.int32)
