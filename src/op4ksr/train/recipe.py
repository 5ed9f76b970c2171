"""The whole compact model in one command, from a small data pack: VAE → prior → SR (with
high-frequency compensation) → fp16 export. Made for a lent GPU with a fixed time budget
(every stage is time-boxed with ``run.max_minutes``), tested at tiny scale on the CPU.

    python -m op4ksr.train.recipe pack --out pack/ --train corpus/train_v1 corpus/skimage --val corpus/heldout
    python -m op4ksr.train.recipe run pack/ --out runs/gpu            # the `gpu` plan: ≈ 9 min of training

The pack holds the photos (resized, JPEG q95), the perceptual-loss backbone the stages use
(the LPIPS AlexNet asset, so that no registry is needed where the GPU is) and a manifest with
every source's path and sha256; ``pack`` refuses to write more than ``MAX_PACK_BYTES``.
The stage settings are the committed TOML files in ``configs/`` plus the plan's overrides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

MAX_PACK_BYTES = 60 * 2**20
PACK_ASSETS = ("lpips_alexnet.safetensors",)


@dataclass(frozen=True)
class StagePlan:
    name: str  # vae | prior | sr
    config: str  # file name in the configs folder
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class RecipePlan:
    description: str
    stages: tuple[StagePlan, ...]
    common: tuple[str, ...] = ()


RECIPES: dict[str, RecipePlan] = {
    # One CUDA GPU (an H200 has ~140 GB; the compact model needs a few): 3 + 2 + 3.5 minutes.
    "gpu": RecipePlan(
        description="compact model on one CUDA GPU in under 10 minutes",
        common=("optim.batch_size=16", "run.max_steps=100000", "run.checkpoint_every=1000",
                "run.validate_every=1000000", "run.log_every=50", "data.scale_range=[0.5, 1.0]",
                "data.cache_images=true"),
        stages=(
            StagePlan("vae", "compact-vae.toml", ("run.max_minutes=3.0",)),
            StagePlan("prior", "compact-prior.toml", ("run.max_minutes=2.0",)),
            StagePlan("sr", "compact-v1-sr.toml", ("run.max_minutes=3.5", "sr.sigma=0.31", "sr.train_dit=true",
                                                   "sr.train_vae_encoder=true", "optim.lr=3e-4")),
        ),
    ),
    # The same chain at test size on a CPU: seconds.
    "tiny": RecipePlan(
        description="tiny preset, a few steps per stage (tests)",
        common=('model.preset="tiny"', "optim.batch_size=2", "data.crop_size=96", "run.max_steps=3",
                "run.checkpoint_every=100", "run.validate_every=1000", "run.log_every=1", "loss.lpips=0.0",
                "data.cache_images=true", "optim.warmup_steps=1"),
        stages=(
            StagePlan("vae", "compact-vae.toml", ()),
            StagePlan("prior", "compact-prior.toml", ("prior.latent_stats_batches=1",)),
            StagePlan("sr", "compact-v1-sr.toml", ("sr.sigma=0.31", "sr.train_dit=true", "sr.train_vae_encoder=true",
                                                   "sr.lora_rank=4", "sr.lora_alpha=4",
                                                   "loss.periodicity=0.0", "loss.token_grid=0.0")),
        ),
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_pack(out: str | Path, train: list[str | Path], val: list[str | Path], *, train_side: int = 1536,
               val_side: int = 1024, assets_dir: str | Path | None = None, overwrite: bool = False) -> dict:
    """Write a data pack (see the module doc) and return its manifest."""
    from PIL import Image

    from op4ksr.assets import SHA256_SUFFIX, cache_dir, is_verified_file
    from op4ksr.data.datasets import image_sources
    from op4ksr.data.imageio import read_rgb

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out}: exists (pass overwrite to rebuild)")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest: dict = {"train": [], "val": [], "assets": []}
    for split, sources, side in (("train", train, train_side), ("val", val, val_side)):
        (tmp / split).mkdir(parents=True)
        for i, src in enumerate(image_sources(list(sources))):
            img = read_rgb(src)
            scale = min(1.0, side / max(img.size))
            if scale < 1.0:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
            name = f"{i:03d}_{Path(src).stem}.jpg"
            img.save(tmp / split / name, quality=95)
            manifest[split].append({"file": f"{split}/{name}", "source": str(src), "source_sha256": _sha256(Path(src)),
                                    "size": list(img.size)})
    assets = Path(assets_dir) if assets_dir is not None else cache_dir()
    (tmp / "assets").mkdir()
    for name in PACK_ASSETS:
        if is_verified_file(assets / name):  # with its sha256 record: the pack's cache checks it too
            for file in (name, name + SHA256_SUFFIX):
                shutil.copy2(assets / file, tmp / "assets" / file)
            manifest["assets"].append(name)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    if size > MAX_PACK_BYTES:
        shutil.rmtree(tmp)
        raise ValueError(f"the pack would be {size / 2**20:.1f} MiB, over {MAX_PACK_BYTES / 2**20:.0f} MiB: "
                         "lower the sides or pass fewer photos")
    tmp.rename(out)
    manifest["bytes"] = size
    return manifest


def run_recipe(pack: str | Path, out: str | Path, *, plan: str = "gpu", configs: str | Path = "configs",
               extra: tuple[str, ...] = ()) -> Path:
    """Train every stage of ``plan`` on ``pack`` into ``out/<stage>``; returns the fp16 model folder
    ``out/model`` (post-steps off: the compensation sees the LR)."""
    import torch

    from op4ksr.models.loading import export_pipeline, from_pretrained
    from op4ksr.train.config import load_config
    from op4ksr.train.trainer import train

    pack, out, configs = Path(pack), Path(out), Path(configs)
    recipe = RECIPES[plan]
    if (pack / "assets").is_dir() and any((pack / "assets").iterdir()):
        os.environ.setdefault("OP4KSR_CACHE", str((pack / "assets").resolve()))
    init = ""
    for stage in recipe.stages:
        overrides = [*recipe.common, f'data.train=["{pack / "train"}"]', f'data.val=["{pack / "val"}"]',
                     f'run.output_dir="{out / stage.name}"', *([f'model.init="{init}"'] if init else []),
                     *stage.overrides, *extra]
        result = train(load_config(configs / stage.config, overrides))
        if result.model_dir is None:
            raise RuntimeError(f"stage {stage.name} stopped before exporting its model (see {out / stage.name})")
        init = str(result.model_dir)
    pipe = from_pretrained(init)
    pipe.register_to_config(color_fix="none", grid_fix="none")
    final = out / "model"
    shutil.rmtree(final, ignore_errors=True)
    export_pipeline(pipe, final, dtype=torch.float16)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m op4ksr.train.recipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write a data pack")
    p.add_argument("--out", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--val", nargs="+", required=True)
    p.add_argument("--overwrite", action="store_true")
    r = sub.add_parser("run", help="train every stage from a pack")
    r.add_argument("pack")
    r.add_argument("--out", required=True)
    r.add_argument("--plan", default="gpu", choices=sorted(RECIPES))
    r.add_argument("--configs", default="configs")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            manifest = build_pack(args.out, args.train, args.val, overwrite=args.overwrite)
            print(f"{args.out}: {len(manifest['train'])} train, {len(manifest['val'])} val photos, "
                  f"assets {manifest['assets']}, {manifest['bytes'] / 2**20:.1f} MiB")
        else:
            print(f"model → {run_recipe(args.pack, args.out, plan=args.plan, configs=args.configs)}")
    except (FileExistsError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
