import pytest
import torch

from op4ksr.models.loading import ModelLoadError, from_pretrained, load_pipeline
from op4ksr.models.pipeline import TileConfig
from op4ksr.models.planner import MemoryPlanError


@pytest.mark.parametrize("h,w", [(37, 53), (100, 77)])
def test_output_is_exactly_scale_times_input(tiny_pipeline, h, w):
    out = tiny_pipeline(torch.rand(1, 3, h, w))
    assert out.shape == (1, 3, 4 * h, 4 * w)
    assert out.min() >= 0 and out.max() <= 1


def test_batch_of_two_equals_two_single_calls(tiny_pipeline):
    x = torch.rand(2, 3, 24, 40)
    both = tiny_pipeline(x)
    torch.testing.assert_close(both[0:1], tiny_pipeline(x[0:1]), rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1:2], tiny_pipeline(x[1:2]), rtol=0, atol=1e-5)


def test_exactly_one_dit_call_per_image_batch(tiny_pipeline, monkeypatch):
    calls = []
    original = type(tiny_pipeline.transformer).forward

    def counting(self, *args, **kwargs):
        calls.append(kwargs["hidden_states"].shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_pipeline.transformer), "forward", counting)
    tiny_pipeline(torch.rand(1, 3, 64, 64))  # 256² output = 8×8 tokens
    assert calls == [torch.Size([1, 64, 16])]


def test_save_load_is_bit_identical(tiny_pipeline, tiny_model_dir):
    loaded = from_pretrained(tiny_model_dir)
    x = torch.rand(2, 3, 20, 24)
    assert torch.equal(tiny_pipeline(x), loaded(x))
    assert loaded.transformer.config.rope_theta == 100.0
    assert loaded.sigma == tiny_pipeline.sigma and loaded.scale == 4


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "model.pt", "extra.ckpt"])
def test_pickle_files_are_refused(tiny_model_dir, name):
    (tiny_model_dir / "transformer" / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        from_pretrained(tiny_model_dir)


def test_missing_and_mismatched_parts_are_named(tiny_model_dir):
    import json
    import shutil

    broken = tiny_model_dir.parent / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "prompt" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="prompt"):
        from_pretrained(broken)
    cfg_file = tiny_model_dir / "transformer" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["num_attention_heads"] = 4
    cfg["axes_dims_rope"] = [8, 12, 12]
    cfg["attention_head_dim"] = 32
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="transformer weights do not match"):
        from_pretrained(tiny_model_dir)
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_pipeline(tiny_model_dir / "nope")


def test_tiled_baseline_equals_patch_free_when_one_tile_covers_the_latent(tiny_pipeline):
    x = torch.rand(1, 3, 32, 32)  # 128² output → 8×8 latent, one tile
    torch.testing.assert_close(tiny_pipeline(x, tiled=True), tiny_pipeline(x), rtol=0, atol=1e-5)


def test_tiled_baseline_runs_overlapping_tiles(tiny_pipeline):
    x = torch.rand(1, 3, 64, 96)  # latent 16×24
    out = tiny_pipeline(x, tiled=True, tiles=TileConfig(tile=8, overlap=4))
    assert out.shape == (1, 3, 256, 384)
    assert not torch.allclose(out, tiny_pipeline(x))


def test_memory_planner_refuses_before_allocating(tiny_pipeline, monkeypatch):
    from op4ksr.models import planner

    monkeypatch.setattr(planner, "available_bytes", lambda device: 64 * 2**20)
    with pytest.raises(MemoryPlanError, match="GiB"):
        tiny_pipeline(torch.rand(1, 3, 2048, 2048))


def test_estimate_for_ultraflux_4k():
    from op4ksr.models.presets import build_pipeline

    pipe = build_pipeline("ultraflux", device="meta", seed=None)
    est = pipe.estimate(4096, 4096, dtype=torch.bfloat16)
    assert (est.token_rows, est.token_cols) == (128, 128)
    assert est.tokens == 16384 and est.text_tokens == 512
    assert 20 * 2**30 < est.peak_bytes < 80 * 2**30
    # linear FLOPs are 2 × per-token parameters × tokens; attention 4·L²·hidden per block
    assert est.dit_attention_flops == pytest.approx(4 * (16384 + 512) ** 2 * 3072 * 57)


def test_the_call_is_its_named_steps(tiny_pipeline):
    # inference, training and the diagnostics share lr_latent → denoise → decode → post_process:
    # composing them by hand must give the call's output bit for bit, post-steps on and off
    torch.manual_seed(3)
    lr = torch.rand(2, 3, 20, 28)
    for color_fix, grid_fix in (("none", "none"), ("wavelet", "notch")):
        with torch.inference_mode():
            steps = tiny_pipeline.lr_latent(lr)
            assert steps.size == (80, 112) and steps.upsampled.shape[-2:] == (96, 128)
            out = tiny_pipeline.decode(tiny_pipeline.denoise(steps.latent), steps.upsampled)
            by_hand = tiny_pipeline.post_process(out, steps.upsampled, steps.size, color_fix, grid_fix)
        assert torch.equal(by_hand, tiny_pipeline(lr, color_fix=color_fix, grid_fix=grid_fix))
    with pytest.raises(ValueError, match="grid_fix"):
        tiny_pipeline(lr, grid_fix="blur")


def test_mixed_part_dtypes_run_each_part_in_its_own_dtype(tiny_pipeline):
    """A bf16 DiT beside an fp32 VAE (UltraFlux's storage; training's frozen bf16 DiT) runs: each
    step casts to its part's dtype, and the result equals the fp32 pipeline with a bf16-rounded DiT
    up to the DiT's bf16 arithmetic."""
    import copy

    lr = torch.rand(1, 3, 16, 24)
    mixed = copy.deepcopy(tiny_pipeline)
    mixed.transformer.to(torch.bfloat16)
    reference = copy.deepcopy(mixed)
    reference.transformer.to(torch.float32)  # the same (bf16-rounded) weights in fp32
    out = mixed(lr)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 64, 96) and torch.isfinite(out).all()
    assert {p.dtype for p in mixed.vae.parameters()} == {torch.float32}
    assert (out - reference(lr)).abs().max() < 0.05


def test_tiled_baseline_blends_with_omgsr_gaussian():
    """OMGSR's tile weights: exp(−(x − mid)² / (2·0.01·W²)), i.e. σ = 0.1 of the tile."""
    import math

    from op4ksr.models.pipeline import _gaussian_window

    tiles = TileConfig()
    assert tiles.gaussian_sigma == 0.1
    size = 64
    window = _gaussian_window(size, tiles.gaussian_sigma, torch.device("cpu"), torch.float64)[0, 0]
    mid = (size - 1) / 2
    for y, x in ((0, 0), (10, 40), (31, 32)):
        expected = math.exp(-((y - mid) ** 2) / (2 * 0.01 * size**2)) * math.exp(-((x - mid) ** 2) / (2 * 0.01 * size**2))
        assert math.isclose(float(window[y, x]), expected, rel_tol=1e-6)
