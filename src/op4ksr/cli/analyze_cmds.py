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
            fail(str(exc).splitlines()[0])
        typer.echo(f"wrote {phase_path}")
        typer.echo(f"wrote {similarity_path}")


# One entry per `op4ksr analyze` sub-command.
_SUBCOMMANDS: tuple[Callable[[typer.Typer], None], ...] = (_add_rope,)


def register(app: typer.Typer) -> None:
    analyze = typer.Typer(name="analyze", help="Model diagnostics (RoPE phase, …).", no_args_is_help=True)
    for add in _SUBCOMMANDS:
        add(analyze)
    app.add_typer(analyze, name="analyze")
