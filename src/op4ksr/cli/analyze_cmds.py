"""``op4ksr analyze …``: model diagnostics (paper Sec. 3.2).

Each sub-command is added by one ``_add_*`` function listed in ``_SUBCOMMANDS``, so a new
analysis (latent view, mid-timestep search) is one function and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from op4ksr.cli.common import fail
from op4ksr.utils.errors import one_line


def _add_rope(analyze: typer.Typer) -> None:
    @analyze.command("rope")
    def rope(
        theta: Annotated[float, typer.Option("--theta", help="RoPE base frequency to analyse (OP4KSR: 100).")],
        dim: Annotated[int, typer.Option("--dim", help="Per-axis RoPE dim (Flux: 56 → 28 pairs).")] = 56,
        threshold_deg: Annotated[
            float, typer.Option("--threshold-deg", help="Phase step counted as 'separating'.")] = 5.0,
        grid: Annotated[
            int, typer.Option("--grid", help="Token grid side for the similarity map (4096 px → 128).")] = 128,
        out: Annotated[Path, typer.Option("--out", help="Folder for the two PNGs.")] = Path("."),
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing PNGs.")] = False,
    ) -> None:
        """Adjacent-token phase steps Δφ_i = θ^(−2i/d) and the RoPE similarity map (paper Fig. 5)."""
        from op4ksr.eval.diagnostics.plots import save_png
        from op4ksr.eval.diagnostics.rope_phase import (
            phase_plot,
            rope_phase_report,
            similarity_plot,
        )
        from op4ksr.models.rope import FLUX_ROPE_THETA

        if dim <= 0 or dim % 2:
            fail(f"--dim {dim}: must be a positive even number")
        if theta <= 1:
            fail(f"--theta {theta:g}: must be greater than 1")
        if grid < 3:
            fail(f"--grid {grid}: must be at least 3 tokens")
        thetas = [FLUX_ROPE_THETA] if theta == FLUX_ROPE_THETA else [FLUX_ROPE_THETA, theta]
        tag = "_vs_".join(f"theta{t:g}" for t in thetas)
        phase_path = out / f"rope_phase_{tag}.png"
        similarity_path = out / f"rope_similarity_{tag}.png"
        for path in (phase_path, similarity_path):
            if path.exists() and not overwrite:
                fail(f"{path}: exists (use --overwrite to replace it)")
        report = rope_phase_report(theta, dim, threshold_deg)
        typer.echo(f"RoPE theta={theta:g}, per-axis dim {dim}: dphi_i = theta^(-2i/{dim}) rad")
        typer.echo(f"{'i':>3} {'dphi (rad)':>12} {'dphi (deg)':>11}  above {threshold_deg:g} deg")
        for i, (rad, deg, above) in enumerate(zip(report.delta_phi_rad, report.delta_phi_deg, report.above, strict=True)):
            typer.echo(f"{i:>3} {rad:>12.6f} {deg:>11.4f}  {'yes' if above else 'no'}")
        typer.echo(report.summary_line())

        try:
            save_png(phase_plot([rope_phase_report(t, dim, threshold_deg) for t in thetas]), phase_path,
                     overwrite=overwrite)
            save_png(similarity_plot(thetas, dim, grid), similarity_path, overwrite=overwrite)
        except (FileExistsError, OSError) as exc:
            fail(one_line(exc))
        typer.echo(f"wrote {phase_path}")
        typer.echo(f"wrote {similarity_path}")


def _load_rgb(path: Path):
    """An image file → [1, 3, H, W] float tensor in [0, 1] (grey expanded, alpha dropped)."""
    from op4ksr.io.images import ImageError, load_image, to_tensor

    try:
        data = load_image(path)
    except (ImageError, OSError) as exc:
        fail(f"{path}: {exc}")
    pixels = to_tensor(data.pixels)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.contiguous()


def _load_model(model: str):
    from op4ksr.models.loading import ModelLoadError, load_pipeline

    try:
        return load_pipeline(model, device="cpu")
    except ModelLoadError as exc:
        fail(str(exc))


def _add_latents(analyze: typer.Typer) -> None:
    @analyze.command("latents")
    def latents(
        model: Annotated[str, typer.Argument(help="Model directory or 'compact' (the bundled model).")],
        image: Annotated[Path, typer.Argument(help="Low-resolution input image.")],
        out: Annotated[Path, typer.Option("--out", help="Folder for the PNGs.")] = Path("."),
        zoom: Annotated[int, typer.Option("--zoom", min=1, help="Nearest-neighbour enlargement of the latent maps.")] = 4,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing PNGs.")] = False,
    ) -> None:
        """PCA-to-RGB of the latent before the DiT and after it (paper Fig. 6)."""
        from PIL import Image

        from op4ksr.eval.diagnostics.latents import latent_views
        from op4ksr.eval.diagnostics.plots import hstack, save_png

        pipe = _load_model(model)
        views = latent_views(pipe, _load_rgb(image))
        panels = []
        paths = {}
        for name, array in (("before_dit", views.before), ("after_dit", views.after)):
            img = Image.fromarray(array)
            img = img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)
            panels.append(img)
            paths[name] = out / f"{image.stem}_latent_{name}.png"
        try:
            for (name, path), img in zip(paths.items(), panels, strict=True):
                save_png(img, path, overwrite=overwrite)
                typer.echo(f"wrote {path}")
            both = out / f"{image.stem}_latent_before_after.png"
            save_png(hstack(panels), both, overwrite=overwrite)
            typer.echo(f"wrote {both}")
        except (FileExistsError, OSError) as exc:
            fail(one_line(exc))
        ev = ", ".join(f"{v:.2f}" for v in views.explained_variance)
        typer.echo(f"shared PCA basis; explained variance of the 3 components: {ev}")


def _add_mid_timestep(analyze: typer.Typer) -> None:
    @analyze.command("mid-timestep")
    def mid_timestep(
        model: Annotated[str, typer.Argument(help="Model directory or 'compact'.")],
        hr_dir: Annotated[list[Path], typer.Argument(help="High-resolution images or folders.")],
        preset: Annotated[str, typer.Option("--preset", help="Degradation preset (osediff, s3diff) or .toml.")] = "osediff",
        crop: Annotated[int, typer.Option("--crop", help="Centre crop of each HR image (multiple of 32).")] = 512,
        images: Annotated[int, typer.Option("--images", min=1, help="Images used at most.")] = 16,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        out: Annotated[Path, typer.Option("--out", help="Folder for the curve PNG.")] = Path("."),
        overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    ) -> None:
        """Pick σ by OMGSR's rule: argmin over σ of mean |SNR(z_σ) − SNR(E(LR))|; plots the curves."""
        import numpy as np
        import torch

        from op4ksr.data.datasets import DatasetConfig, PairedImageDataset
        from op4ksr.eval.diagnostics.mid_timestep import search_mid_timestep
        from op4ksr.eval.diagnostics.plots import HLine, Series, line_plot, save_png

        if crop % 32:
            fail(f"--crop {crop}: must be a multiple of 32")
        pipe = _load_model(model)
        dataset = PairedImageDataset([str(p) for p in hr_dir], DatasetConfig(
            crop_size=crop, scale=pipe.scale, train=False, preset=preset, seed=seed))
        if len(dataset) == 0:
            fail(f"no usable HR images of at least {crop}×{crop} in {', '.join(map(str, hr_dir))}")
        items = [dataset[i] for i in range(min(images, len(dataset)))]
        hr = torch.stack([it["hr"] for it in items])
        lr = torch.stack([it["lr"] for it in items])
        result = search_mid_timestep(pipe, hr, lr)
        typer.echo(f"images: {len(items)}, degradation: {preset}, crop {crop}")
        typer.echo(f"SNR of E(LR): median {np.median(result.snr_lr):.3g} (dB {10 * np.log10(np.median(result.snr_lr)):.1f})")
        typer.echo(f"sigma* = {result.sigma:.2f}  (paper time t = 1 - sigma = {1 - result.sigma:.2f}); "
                   f"model's configured sigma = {pipe.sigma:.2f}")
        sig = np.asarray(result.sigmas)
        snr_db = 10 * np.log10([result.snr_curve(s) for s in sig])
        lr_db = 10 * np.log10(np.median(result.snr_lr))
        plot = line_plot([Series("SNR(z_sigma)", sig.tolist(), snr_db.tolist(), markers=False)],
                         title=f"Mid-timestep search: sigma* = {result.sigma:.2f}", xlabel="sigma",
                         ylabel="SNR (dB)", hlines=[HLine(lr_db, f"SNR(E(LR)) median {lr_db:.1f} dB", (214, 39, 40))])
        path = out / "mid_timestep_snr.png"
        try:
            save_png(plot, path, overwrite=overwrite)
        except (FileExistsError, OSError) as exc:
            fail(one_line(exc))
        typer.echo(f"wrote {path}")


def _add_ceiling(analyze: typer.Typer) -> None:
    @analyze.command("ceiling")
    def ceiling(
        model: Annotated[str, typer.Argument(help="Model directory or 'compact'.")],
        suites: Annotated[list[Path], typer.Argument(help="Paired benchmark suites (syn, mild) from make-bench.")],
        metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated full-reference metrics.")] = "psnr_y,lpips,delta_e",
        max_images: Annotated[int | None, typer.Option("--max-images", min=1, help="Images per suite at most.")] = None,
        crop: Annotated[int, typer.Option("--crop", min=64, help="Centre crop of each image (output pixels).")] = 512,
        steps: Annotated[int, typer.Option("--steps", min=1, help="Decoder passes fitting the latent to the HR.")] = 40,
        as_json: Annotated[bool, typer.Option("--json", help="Print the per-image and mean values as JSON.")] = False,
    ) -> None:
        """The VAE's reconstruction of the ground truth next to the SR output's (the decoder's ceiling)."""
        import json
        from dataclasses import asdict

        import torch

        from op4ksr.eval.bench import build_metrics, load_suites
        from op4ksr.eval.diagnostics.ceiling import ceiling_means, vae_ceiling
        from op4ksr.eval.metrics import PatchConfig

        try:
            loaded = load_suites(suites, max_images=max_images)
            infos, built = build_metrics([m.strip() for m in metrics.split(",") if m.strip()], scale=4,
                                         patch=PatchConfig(), device=torch.device("cpu"))
        except (FileNotFoundError, ValueError, KeyError) as exc:
            fail(one_line(exc))
        # a no-reference metric is refused as such, whether or not its asset happens to be cached
        unusable = [f"{i.name} ({'no-reference' if not i.full_reference else i.unavailable})"
                    for i in infos if i.unavailable or not i.full_reference]
        if unusable:
            fail(f"--metrics: not usable here: {', '.join(unusable)}")
        if not any(s.has_ground_truth for s in loaded):
            fail("no paired suite given: the ceiling needs ground truth (make-bench syn or mild)")
        pipe = _load_model(model)
        rows = vae_ceiling(pipe, loaded, built, crop=crop, steps=steps)
        means = ceiling_means(rows)
        if as_json:
            typer.echo(json.dumps({"model": model, "means": means, "images": [asdict(r) for r in rows]}, indent=1))
            return
        names = list(built)
        for suite, variants in means.items():
            typer.echo(f"{suite}: mean over {sum(r.suite == suite for r in rows)} images")
            typer.echo(f"  {'variant':<14}" + "".join(f"{n:>10}" for n in names))
            for variant, values in variants.items():
                typer.echo(f"  {variant:<14}" + "".join(f"{values[n]:>10.4f}" for n in names))


# One entry per `op4ksr analyze` sub-command.
_SUBCOMMANDS: tuple[Callable[[typer.Typer], None], ...] = (_add_rope, _add_latents, _add_mid_timestep, _add_ceiling)


def register(app: typer.Typer) -> None:
    analyze = typer.Typer(name="analyze", help="Model diagnostics: RoPE phase, latent view, mid-timestep search, VAE ceiling.", no_args_is_help=True)
    for add in _SUBCOMMANDS:
        add(analyze)
    app.add_typer(analyze, name="analyze")
