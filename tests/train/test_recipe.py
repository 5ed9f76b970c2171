"""The one-command recipe: a data pack, then VAE → prior → SR → fp16 export, at tiny scale."""

import json
from pathlib import Path

import pytest
import torch

from op4ksr.train.recipe import RECIPES, build_pack, run_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_pack_holds_resized_photos_and_a_manifest(tmp_path, photo_dir):
    manifest = build_pack(tmp_path / "pack", [photo_dir / "coffee.png", photo_dir / "rocket.png"],
                          [photo_dir / "chelsea.png"], train_side=320, assets_dir=tmp_path / "none")
    assert [len(manifest["train"]), len(manifest["val"])] == [2, 1]
    assert all(max(e["size"]) <= 320 for e in manifest["train"])
    on_disk = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert on_disk["train"][0]["source"].endswith("coffee.png") and len(on_disk["train"][0]["source_sha256"]) == 64
    assert not (tmp_path / "pack.partial").exists()
    with pytest.raises(FileExistsError):
        build_pack(tmp_path / "pack", [photo_dir], [photo_dir])


def test_gpu_plan_fits_ten_minutes():
    minutes = [float(o.split("=")[1]) for s in RECIPES["gpu"].stages for o in s.overrides if "max_minutes" in o]
    assert len(minutes) == 3 and sum(minutes) <= 9.0  # the rest of the 10 minutes: start-up and export


@pytest.mark.slow
def test_tiny_recipe_trains_every_stage_and_exports(tmp_path, photo_dir):
    build_pack(tmp_path / "pack", [photo_dir / "coffee.png", photo_dir / "rocket.png"], [photo_dir / "chelsea.png"],
               train_side=256, val_side=256, assets_dir=tmp_path / "none")
    model = run_recipe(tmp_path / "pack", tmp_path / "out", plan="tiny", configs=CONFIGS)
    from op4ksr.models.loading import from_pretrained

    for stage in ("vae", "prior", "sr"):
        assert (tmp_path / "out" / stage / "model" / "model_index.json").is_file()
    note = json.loads((tmp_path / "out" / "sr" / "model" / "training.json").read_text())
    assert sorted(note["trained_parts"]) == ["compensation", "transformer", "vae"]
    pipe = from_pretrained(model)
    assert (pipe.config.color_fix, pipe.config.grid_fix) == ("none", "none")
    assert pipe.compensation is not None
    assert pipe(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_pack_carries_only_verified_assets_with_their_sha256_record(tmp_path, photo_dir):
    from op4ksr import assets
    from op4ksr.train.recipe import PACK_ASSETS

    cache = tmp_path / "cache"
    cache.mkdir()
    name = PACK_ASSETS[0]
    (cache / name).write_bytes(b"weights")
    manifest = build_pack(tmp_path / "unverified", [photo_dir / "coffee.png"], [photo_dir / "chelsea.png"],
                          train_side=64, assets_dir=cache)
    assert manifest["assets"] == []  # no record: not trusted, not packed
    assets.record_sha256(cache / name)
    manifest = build_pack(tmp_path / "pack", [photo_dir / "coffee.png"], [photo_dir / "chelsea.png"],
                          train_side=64, assets_dir=cache)
    assert manifest["assets"] == [name]
    assert assets.is_verified_file(tmp_path / "pack" / "assets" / name)  # the recipe's cache accepts it
