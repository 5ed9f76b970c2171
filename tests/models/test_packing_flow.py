import torch

from op4ksr.models.flow import noisy_latent, paper_t_to_sigma, velocity_target, x0_from_velocity
from op4ksr.models.packing import image_ids, pack_latents, text_ids, unpack_latents


def test_pack_groups_each_2x2_neighbourhood_into_one_token():
    z = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    tokens = pack_latents(z)
    assert tokens.shape == (2, 2 * 3, 12)
    # token (row 1, col 2) of batch 1 holds channels c of pixels (2..3, 4..5) in (c, dy, dx) order
    token = tokens[1, 1 * 3 + 2]
    expected = torch.stack([z[1, c, 2 + dy, 4 + dx] for c in range(3) for dy in range(2) for dx in range(2)])
    assert torch.equal(token, expected)
    assert torch.equal(unpack_latents(tokens, 4, 6), z)


def test_image_ids_are_zero_row_col():
    ids = image_ids(2, 3)
    assert ids.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert text_ids(4).abs().sum() == 0


def test_one_step_recovers_x0_from_exact_velocity():
    z0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for sigma in (0.3, 0.7, 1.0):
        zs = noisy_latent(z0, eps, sigma)
        torch.testing.assert_close(x0_from_velocity(zs, velocity_target(z0, eps), sigma), z0)
    sig = torch.tensor([0.2, 0.9])
    zs = noisy_latent(z0, eps, sig)
    torch.testing.assert_close(zs[1], 0.1 * z0[1] + 0.9 * eps[1])
    assert paper_t_to_sigma(0.3) == 0.7


def test_ultraflux_preset_sigma_is_omgsr_f_not_the_literal_paper_t():
    """The full-size preset's σ is OMGSR-F's SNR-matched 0.505, not 1 − 0.3; and the SNR rule
    (`op4ksr analyze mid-timestep`) recovers σ from an LR latent whose SNR is that of z_σ."""
    import numpy as np

    from op4ksr.eval.diagnostics.mid_timestep import snr_gap
    from op4ksr.models.constants import DEFAULT_SIGMA
    from op4ksr.models.presets import get_preset

    assert get_preset("ultraflux").pipeline["sigma"] == DEFAULT_SIGMA == 0.505
    assert DEFAULT_SIGMA != paper_t_to_sigma(0.3)
    sigmas = np.linspace(0.01, 0.99, 99)
    hr_power = np.array([0.8, 1.2])
    snr_lr = (1 - 0.505) ** 2 / 0.505**2 * hr_power  # E(LR) as noisy as z_0.505
    assert abs(sigmas[int(np.argmin(snr_gap(sigmas, hr_power, snr_lr)))] - 0.505) <= 0.005 + 1e-9
