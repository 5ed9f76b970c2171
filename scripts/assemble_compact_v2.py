"""Assemble the shipped compact v2 from its two training runs (docs/MODEL_CARD.md, "Recipe").

    python scripts/assemble_compact_v2.py runs/v2-perceptual/checkpoints/step-N \\
        --wise 0.25 --fidelity 0.5 --out src/op4ksr/weights/compact --overwrite

The perceptual run's export holds both ends: ``faithful`` (the L1 fine-tune of SPAN x4 with the
fused latent, configs/compact-v2-faithful.toml) and ``perceptual`` (its LPIPS + GAN fine-tune, EMA).
The shipped faithful end is a weight-space ensemble of that fine-tune and the official SPAN x4 it
started from (WiSE-FT, Wortsman et al., CVPR 2022): ``wise · fine-tuned + (1 − wise) · SPAN``, the
fusion scaled by ``wise`` (SPAN has none, i.e. zero). Measured on the held-out suites, the
fine-tune alone loses 1.8 dB on clean bicubic LR to SPAN while gaining 1.6 dB on `osediff`; the
blend keeps most of each (the model card's table). ``--fidelity`` sets the model's default blend
of the two ends; the post-steps stay off.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the perceptual run's model folder or checkpoint")
    parser.add_argument("--span", default="span-x4", help="the SPAN weights both runs started from (asset or file)")
    parser.add_argument("--wise", type=float, required=True, help="weight of the fine-tune in the faithful end (0–1)")
    parser.add_argument("--fidelity", type=float, required=True, help="the model's default fidelity (0–1)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not 0.0 <= args.wise <= 1.0 or not 0.0 <= args.fidelity <= 1.0:
        parser.error("--wise and --fidelity must be in [0, 1]")

    from op4ksr.models.loading import export_pipeline, from_pretrained
    from op4ksr.models.span_ncnn import load_span_weights

    with tempfile.TemporaryDirectory(prefix="op4ksr-v2-") as tmp:
        source = args.model
        if (source / "model_index.json").is_file():
            pipe = from_pretrained(source)
        else:  # a checkpoint: export it as the run would have (EMA end included)
            from op4ksr.train.checkpoint import export_checkpoint

            pipe = from_pretrained(export_checkpoint(source, Path(tmp) / "m"))
    span = load_span_weights(args.span)
    official = {f"span.{k}": v for k, v in span.state_dict().items()}
    faithful = pipe.pixel_path.faithful
    with torch.no_grad():
        for name, tensor in faithful.state_dict().items():
            start = official.get(name, torch.zeros_like(tensor))  # the fusion starts at zero in SPAN
            tensor.copy_(args.wise * tensor + (1.0 - args.wise) * start)
    pipe.register_to_config(fidelity=float(args.fidelity), color_fix="none", grid_fix="none")
    if args.out.exists():
        if not args.overwrite:
            parser.error(f"{args.out} exists (use --overwrite)")
        import shutil

        shutil.rmtree(args.out)
    export_pipeline(pipe, args.out, dtype=torch.float16 if args.dtype == "fp16" else torch.float32)
    print(f"wrote {args.out}: faithful end = {args.wise}·fine-tune + {1 - args.wise:.2f}·SPAN, "
          f"default fidelity {args.fidelity}")


if __name__ == "__main__":
    main()
