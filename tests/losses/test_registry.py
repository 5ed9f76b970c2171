"""The loss registry and the ``[loss]`` table: one class, one name; a weight of 0 builds nothing."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import tomllib
import torch

from op4ksr.losses import base, registry
from op4ksr.losses.base import Loss, register_loss
from op4ksr.losses.combined import ImageLosses, WeightedLosses
from op4ksr.train.config import ConfigError, LossConfig, load_config

ROOT = Path(__file__).resolve().parents[2]

# The [loss] table before the registry (a dataclass in train/config.py): names, defaults, options.
OLD_DEFAULTS = {
    "mse": 1.0, "l1": 0.0, "lpips": 1.0, "lpips_net": "vgg16", "wavelet": 0.0, "adversarial": 0.0,
    "adversarial_start": 0, "periodicity": 0.0, "token_grid": 0.0, "token_grid_window": 0, "vae_align": 5.0,
    "kl": 1e-6,
}


def test_every_loss_is_registered_with_its_kind():
    kinds = {name: cls.kind for name, cls in registry.loss_classes().items()}
    assert kinds == {
        "mse": "image", "l1": "image", "lpips": "image", "dists": "image", "wavelet": "image",
        "periodicity": "image", "token_grid": "image", "adversarial": "adversarial", "vae_align": "latent",
        "kl": "posterior",
    }
    # The image terms are summed in the order the hand-written sum used (reproducible totals).
    assert [n for n, k in kinds.items() if k == "image"] == [
        "mse", "l1", "lpips", "dists", "wavelet", "periodicity", "token_grid"]


def test_defaults_and_option_keys_are_the_old_table():
    table = LossConfig().to_table()
    assert {k: table[k] for k in OLD_DEFAULTS} == OLD_DEFAULTS
    assert set(table) - set(OLD_DEFAULTS) == {"dists"} and table["dists"] == 0.0
    assert registry.option_keys() == {"lpips_net": ("lpips", "net"), "token_grid_window": ("token_grid", "window"),
                                      "adversarial_start": ("adversarial", "start")}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_give_the_same_weights(path):
    given = tomllib.loads(path.read_text()).get("loss", {})
    expected = {k: (type(OLD_DEFAULTS[k])(v)) for k, v in {**OLD_DEFAULTS, **given}.items()}
    table = load_config(path, check_paths=False).loss.to_table()
    assert {k: table[k] for k in OLD_DEFAULTS} == expected
    assert all(isinstance(table[k], type(OLD_DEFAULTS[k])) for k in OLD_DEFAULTS)


def test_config_json_round_trips(tmp_path):
    from op4ksr.train.config import TrainConfig, _build

    cfg = load_config(None, ['stage="vae"', 'loss.lpips_net="alexnet"', "loss.token_grid=10", "loss.token_grid_window=2"],
                      check_paths=False)
    data = cfg.to_dict()
    assert data["loss"]["token_grid"] == 10.0 and data["loss"]["lpips_net"] == "alexnet"
    assert _build(TrainConfig, data, "").loss == cfg.loss
    assert cfg.loss.token_grid_window == 2 and cfg.loss.weights["token_grid"] == 10.0


def test_unknown_loss_in_a_file_is_one_line_naming_the_file_and_the_names(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('stage = "vae"\n[loss]\nmse = 1.0\nlpipz = 0.5\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, check_paths=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: [loss] unknown loss 'lpipz'; valid names: ")
    for name in registry.available_losses() + ["lpips_net", "token_grid_window"]:
        assert name in message


def test_unknown_loss_in_an_override_names_the_override():
    with pytest.raises(ConfigError, match=r"^override loss\.nope: \[loss\] unknown loss 'nope'; valid names: adv"):
        load_config(None, ["loss.nope=1"], check_paths=False)


@pytest.mark.parametrize("override,message", [
    ("loss.lpips=\"much\"", "loss.lpips: expected a number"),
    ("loss.token_grid_window=1.5", "loss.token_grid_window: expected an integer"),
    ('loss.lpips_net="resnet"', "loss.lpips_net: 'resnet' is not vgg16 or alexnet"),
])
def test_bad_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ['stage="vae"', override], check_paths=False)


def test_zero_weight_builds_nothing(tmp_path, monkeypatch):
    # An empty cache: building LPIPS would raise AssetMissingError, a zero weight never tries.
    monkeypatch.setenv("OP4KSR_CACHE", str(tmp_path / "empty"))
    losses = ImageLosses(LossConfig().weights | {"lpips": 0.0, "mse": 0.0, "wavelet": 2.0})
    assert list(losses.weights) == ["wavelet"]
    assert [name for name, _ in losses.named_children()] == ["wavelet"]
    assert registry.required_assets({"lpips": 0.0, "dists": 0.0}) == []
    assert registry.required_assets({"lpips": 1.0, "dists": 1.0}, {"lpips": {"net": "alexnet"}}) == [
        "alexnet", "vgg16", "dists"]


def test_image_losses_match_the_functions():
    from op4ksr.losses.token_grid import token_grid_loss
    from op4ksr.losses.wavelet import wavelet_loss

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 128, 128, generator=gen)
    pred = (target + 0.05 * torch.randn(target.shape, generator=gen)).clamp(0, 1)
    total, terms = ImageLosses(mse=1.0, l1=0.5, wavelet=2.0, token_grid=10.0, token_grid_window=2)(pred, target)
    expected = {"mse": torch.nn.functional.mse_loss(pred, target), "l1": torch.nn.functional.l1_loss(pred, target),
                "wavelet": wavelet_loss(pred, target), "token_grid": token_grid_loss(pred, target, window=2)}
    assert terms == {k: float(v) for k, v in expected.items()}
    weighted = pred.new_zeros(()) + expected["mse"] + 0.5 * expected["l1"] + 2.0 * expected["wavelet"]
    assert total.item() == (weighted + 10.0 * expected["token_grid"]).item()


def test_adding_a_loss_is_one_class(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(registry, "_REGISTRY", base._REGISTRY)

    @register_loss("mean_shift")
    class MeanShift(Loss):
        options: ClassVar[dict[str, int]] = {"power": 2}

        def __init__(self, power: int = 2) -> None:
            super().__init__()
            self.power = power

        def forward(self, pred, target):
            return (pred.mean() - target.mean()).abs() ** self.power

    cfg = load_config(None, ['stage="vae"', "loss.mse=0", "loss.lpips=0", "loss.mean_shift=3", "loss.mean_shift_power=1"],
                      check_paths=False)
    losses = ImageLosses(cfg.loss.weights, cfg.loss.options)
    assert list(losses.weights) == ["mean_shift"] and losses.mean_shift.power == 1
    total, terms = losses(torch.full((1, 3, 8, 8), 0.75), torch.full((1, 3, 8, 8), 0.5))
    assert terms == {"mean_shift": 0.25} and total.item() == 0.75
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("mean_shift")(type("Other", (Loss,), {}))


def test_weighted_losses_of_another_kind_add_in_order():
    latent = WeightedLosses({"vae_align": 5.0, "mse": 1.0}, kind="latent")
    assert list(latent.weights) == ["vae_align"]
    z, target = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    logs: dict[str, float] = {}
    total = latent.add_terms(torch.tensor(1.0), logs, latent.terms(z, target))
    assert logs == {"vae_align": 1.0} and total.item() == 6.0
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        WeightedLosses({"nope": 1.0}, kind="image")
