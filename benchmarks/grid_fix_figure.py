"""What the token-harmonic notch changes on one input: crops and harmonic prominences, as a PNG.

    python benchmarks/grid_fix_figure.py corpus/bench/syn1024/lr/fog.png --out docs/compact_notch.png

Top row: a crop of the output without the notch, with it, and (when ``--hr`` is given) the
ground truth; second row: the same crops high-passed and amplified ×8 (the grid is ~1/255, so it
is invisible at normal contrast). Bottom: the inspector's per-harmonic prominence for both
outputs. Numbers behind the picture: docs/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from op4ksr.api import load_model
from op4ksr.eval.bench import load_tensor, tensor_to_uint8
from op4ksr.eval.diagnostics.inspector import inspect_image
from op4ksr.eval.diagnostics.plots import PALETTE, HLine, Series, hstack, line_plot, save_png


def _high_pass(x: torch.Tensor, gain: float = 8.0) -> torch.Tensor:
    blur = torch.nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
    return 0.5 + gain * (x - blur)


def _labelled(image: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + 22), "white")
    canvas.paste(image, (0, 22))
    ImageDraw.Draw(canvas).text((4, 4), text, fill=(0, 0, 0))
    return canvas


def _harmonics_panel(report, title: str) -> Image.Image:
    ks = [h.k for h in report.harmonics]
    return line_plot([Series("horizontal", ks, [h.horizontal_db for h in report.harmonics], PALETTE[0]),
                      Series("vertical", ks, [h.vertical_db for h in report.harmonics], PALETTE[1])],
                     title=f"{title}: score {report.score_db:.1f} dB", xlabel="harmonic k (k/32 cycles/px)",
                     ylabel="prominence (dB)", hlines=[HLine(report.threshold_db, "threshold")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lr", type=Path, help="low-resolution input")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--hr", type=Path, help="ground truth at ×4, shown beside the outputs")
    parser.add_argument("--model", default=None, help="model directory (default: bundled compact)")
    parser.add_argument("--crop", type=int, default=256, help="crop side in output pixels")
    parser.add_argument("--at", type=int, nargs=2, default=None, metavar=("Y", "X"),
                        help="crop corner (default: the centre)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    pipe = load_model(args.model, device="cpu")
    lr = load_tensor(args.lr)
    outputs = {"network only (--grid-fix none)": pipe(lr, grid_fix="none"), "shipped (notch)": pipe(lr, grid_fix="notch")}
    if args.hr is not None:
        outputs["ground truth"] = load_tensor(args.hr)
    height, width = next(iter(outputs.values())).shape[-2:]
    y, x = args.at if args.at else ((height - args.crop) // 2, (width - args.crop) // 2)
    crops = {name: out[..., y:y + args.crop, x:x + args.crop] for name, out in outputs.items()}
    row = hstack([_labelled(Image.fromarray(tensor_to_uint8(c)), name) for name, c in crops.items()])
    detail = hstack([_labelled(Image.fromarray(tensor_to_uint8(_high_pass(c))), f"{name}: high-pass x8") for name, c in crops.items()])
    reports = [inspect_image(outputs[name][0]) for name in list(outputs)[:2]]
    plots = hstack([_harmonics_panel(r, name) for r, name in zip(reports, list(outputs)[:2], strict=True)])
    panels = [row, detail, plots]
    figure = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels) + 20), "white")
    top = 0
    for panel in panels:
        figure.paste(panel, (0, top))
        top += panel.height + 10
    save_png(figure, args.out, overwrite=args.overwrite)
    print(f"{args.out}: crop at ({y}, {x}); scores {reports[0].score_db:.2f} → {reports[1].score_db:.2f} dB")


if __name__ == "__main__":
    main()
