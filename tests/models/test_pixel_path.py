"""The compact model's pixel path: SPAN at the LR size with the DiT's latent fused in, and the
two-end --fidelity knob; inside the pipeline, saved and loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import astronaut

from op4ksr.models.loading import export_pipeline, from_pretrained
from op4ksr.models.pixel_path import LatentGuidedSPAN
from op4ksr.models.presets import build_pipeline, build_pixel_path
from op4ksr.models.span import SPAN

SMALL = {"feature_channels": 8, "num_blocks": 2, "fusion_channels": 8, "latent_channels": 4, "latent_factor": 4}


def _photo(h: int = 40, w: int = 56) -> torch.Tensor:
    """A real-photo LR crop: SPAN's ×255 input range makes random noise a numerically poor test input."""
    crop = np.ascontiguousarray(astronaut()[60:60 + h, 190:190 + w])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255


def _random_span(seed: int, **cfg) -> SPAN:
    torch.manual_seed(seed)
    return SPAN(**{k: v for k, v in cfg.items() if k in ("feature_channels", "num_blocks", "upscale")}).eval()


def test_fresh_fusion_leaves_span_exactly_as_it_was():
    span = _random_span(1, **SMALL)
    path = LatentGuidedSPAN(**SMALL).eval()
    path.load_span(span.state_dict())
    x = _photo()
    latent = torch.randn(1, 4, 10, 14)
    with torch.no_grad():
        expected = span(x)
        for fidelity in (0.0, 0.37, 1.0):
            assert torch.equal(path(x, latent, fidelity), expected)  # x + 0 == x, and lerp(a, a) == a


def test_fidelity_runs_the_network_of_interpolated_weights():
    path = LatentGuidedSPAN(**SMALL).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in path.parameters():
            p.normal_(0, 0.05)
    x, latent = _photo(), torch.randn(1, 4, 10, 14)
    fidelity = 0.3
    # Independent: build one plain branch whose every weight is f·faithful + (1−f)·perceptual.
    reference = LatentGuidedSPAN(**SMALL).eval()
    faithful, perceptual = path.faithful.state_dict(), path.perceptual.state_dict()
    reference.faithful.load_state_dict({k: fidelity * faithful[k] + (1 - fidelity) * perceptual[k] for k in faithful})
    with torch.no_grad():
        mixed = path(x, latent, fidelity)
        torch.testing.assert_close(mixed, reference(x, latent, 1.0), rtol=1e-5, atol=1e-5)
        assert torch.equal(path(x, latent, 1.0), path.faithful(x, latent))
        assert torch.equal(path(x, latent, 0.0), path.perceptual(x, latent))
        assert not torch.allclose(path(x, latent, 0.0), path(x, latent, 1.0))
        # the cached blend follows a change of the ends' weights
        path.faithful.span.conv_1.bias.add_(0.1)
        changed = path(x, latent, fidelity)
    assert not torch.equal(changed, mixed)


def test_fusion_needs_the_latent_and_uses_it():
    path = LatentGuidedSPAN(**SMALL).eval()
    with torch.no_grad():
        path.faithful.fusion.out.weight.normal_(0, 0.1)
        x = _photo()
        with pytest.raises(ValueError, match="latent"):
            path(x, None, 1.0)
        a, b = path(x, torch.zeros(1, 4, 10, 14)), path(x, torch.ones(1, 4, 10, 14))
    assert a.shape == (1, 3, 160, 224) and not torch.allclose(a, b)


def test_without_latent_the_pipeline_runs_no_encoder(monkeypatch):
    pipe = build_pipeline("tiny", overrides={"pixel_path": {"enabled": True, **SMALL, "use_latent": False}})
    monkeypatch.setattr(pipe, "encode", lambda *a: pytest.fail("the encoder ran"))
    monkeypatch.setattr(pipe, "denoise", lambda *a: pytest.fail("the DiT ran"))
    x = _photo(21, 30)
    out = pipe(x)
    with torch.no_grad():
        direct = pipe.pixel_path.faithful.span(pipe.pad_lr(x).contiguous(memory_format=torch.channels_last))
    assert out.shape == (1, 3, 84, 120)
    torch.testing.assert_close(out, direct.clamp(0, 1)[..., :84, :120], rtol=0, atol=0)


@pytest.mark.parametrize("size", [(32, 32), (21, 30), (9, 47)])
def test_pipeline_with_pixel_path_odd_sizes_and_the_dit_latent(size):
    pipe = build_pipeline("tiny", overrides={"pixel_path": {"enabled": True, **SMALL}})
    with torch.no_grad():
        pipe.pixel_path.faithful.fusion.out.weight.normal_(0, 0.1)  # make the latent matter
    calls = []
    denoise = pipe.denoise
    pipe.denoise = lambda z: calls.append(z.shape) or denoise(z)
    x = _photo(*size)
    out = pipe(x)
    h, w = size
    assert out.shape == (1, 3, 4 * h, 4 * w) and 0 <= out.min() and out.max() <= 1
    # the DiT saw the whole padded image's latent once: (4·pad8(h))/16 latent pixels per side
    assert calls == [torch.Size([1, 4, -(-h // 8) * 8 // 4, -(-w // 8) * 8 // 4])]


def test_save_load_round_trip_and_fp16_export(tmp_path):
    pipe = build_pipeline("tiny", overrides={"pixel_path": {"enabled": True, **SMALL}})
    with torch.no_grad():
        for p in pipe.pixel_path.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    pipe.register_to_config(fidelity=0.6)
    pipe.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    x = _photo(16, 24)
    assert loaded.fidelity == 0.6 and isinstance(loaded.pixel_path, LatentGuidedSPAN)
    for part in ("pixel_path", "vae", "transformer"):
        saved, back = getattr(pipe, part).state_dict(), getattr(loaded, part).state_dict()
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved), part
    loaded.save_pretrained(tmp_path / "again")
    assert torch.equal(from_pretrained(tmp_path / "again")(x), loaded(x))  # reloads bit for bit
    # The freshly built pipeline's DiT sums in another order than the loaded one (1e-7 on the latent);
    # the fused latent carries that through SPAN's ×255 input scale, no further.
    torch.testing.assert_close(loaded(x), pipe(x), rtol=0, atol=1e-4)
    export_pipeline(pipe, tmp_path / "fp16")
    half = from_pretrained(tmp_path / "fp16")
    assert (half(x) - pipe(x)).abs().max() < 2e-2  # fp16-rounded weights, fp32 compute


def test_compact_preset_builds_the_span_path_without_decoder_parts():
    pipe = build_pipeline("compact", device="meta")
    assert pipe.compensation is None and isinstance(pipe.pixel_path, LatentGuidedSPAN)
    span = pipe.pixel_path.faithful.span
    assert span.config["feature_channels"] == 48 and len(span.blocks) == 6 and span.upscale == 4
    official = sum(p.numel() for p in span.parameters())
    # conv_1 (3·48·9 + 48) + 20 convs 48→48 3×3 (18 in the blocks, conv_2, upsampler) + conv_cat (192·48 + 48)
    assert official == 1344 + 20 * (48 * 48 * 9 + 48) + 9264 == 426_288
    fresh = build_pixel_path("compact", pipe.vae.config)
    assert fresh.latent_factor * 4 == pipe.vae.spatial_factor
