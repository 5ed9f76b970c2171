import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from op4ksr.cli import app
from op4ksr.eval.diagnostics.latents import latent_views, pca_rgb
from op4ksr.eval.diagnostics.mid_timestep import search_mid_timestep, snr_gap


def test_pca_rgb_uses_one_basis_for_both_latents():
    torch.manual_seed(0)
    z = torch.randn(8, 6, 10)
    images, explained = pca_rgb([z, z.clone()])
    assert images[0].shape == (6, 10, 3) and images[0].dtype == np.uint8
    assert np.array_equal(images[0], images[1])  # identical latents → identical pictures
    assert len(explained) == 3 and 0 < sum(explained) <= 1.0 + 1e-9 and explained[0] >= explained[1]


def test_latent_views_shapes(tiny_pipeline):
    views = latent_views(tiny_pipeline, torch.rand(1, 3, 32, 48))  # 128×192 output → 8×12 latent
    assert views.before.shape == views.after.shape == (8, 12, 3)


def test_snr_gap_hand_computed():
    # P(z_HR) = 1 and SNR_LR = 1: SNR(σ) = ((1−σ)/σ)² equals 1 exactly at σ = 0.5
    sig = np.array([0.25, 0.5, 0.75])
    gap = snr_gap(sig, np.array([1.0]), np.array([1.0]))
    np.testing.assert_allclose(gap, [abs(9 - 1), 0.0, abs(1 / 9 - 1)])
    # two images, SNR_LR 9 and 1/9: the mean gap is smallest between their optima (0.25 and 0.75)
    gap2 = snr_gap(np.linspace(0.05, 0.95, 19), np.array([1.0, 1.0]), np.array([9.0, 1 / 9]))
    best = np.linspace(0.05, 0.95, 19)[np.argmin(gap2)]
    assert 0.25 <= best <= 0.75


def test_search_returns_a_sigma_in_range(tiny_pipeline):
    hr = torch.rand(2, 3, 64, 64)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    result = search_mid_timestep(tiny_pipeline, hr, lr, grid=49)
    assert 0.0 < result.sigma < 1.0 and len(result.snr_lr) == 2
    assert result.mean_abs_gap[result.sigmas.index(result.sigma)] == min(result.mean_abs_gap)


def test_analyze_latents_and_mid_timestep_cli(tiny_model_dir, tmp_path):
    from skimage import data

    photo = tmp_path / "photos"
    photo.mkdir()
    Image.fromarray(data.astronaut()).save(photo / "astronaut.png")
    lr = tmp_path / "lr.png"
    Image.fromarray(data.astronaut()).resize((32, 32)).save(lr)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["analyze", "latents", str(tiny_model_dir), str(lr), "--out", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("before_dit", "after_dit", "before_after"):
        assert (out / f"lr_latent_{name}.png").is_file()
    r = CliRunner().invoke(app, ["analyze", "mid-timestep", str(tiny_model_dir), str(photo), "--crop", "256",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "sigma* = " in r.output and (out / "mid_timestep_snr.png").is_file()
    r = CliRunner().invoke(app, ["analyze", "latents", str(tmp_path / "nope"), str(lr)])
    assert r.exit_code != 0 and "not a model directory" in r.output
