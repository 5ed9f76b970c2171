"""Token-harmonic notch settings against the network's own output, on benchmark suites.

    python benchmarks/grid_fix_eval.py corpus/bench/syn1024 corpus/bench/realvary256 \\
        --variants none default 4:4 8:2 8:4,4:8

Runs the model once per input with the notch off (the colour anchor as configured), then applies
each notch variant to that output and scores it (8-bit, as saved):

- ``grid32`` / ``grid16``: the inspector's whole-image score at the token period (32 px, the
  flag) and at the latent-pixel period (16 px); mean / max over the suite, and how many are
  above the 5 dB threshold;
- ``tiles`` / ``offset``: the inspector's per-256-px-tile scores, for tiles on the image's
  origin and for tiles shifted by 128 px (they straddle the notch's windows), mean / max;
- ``PSNR-Y`` against the ground truth (syn suites), and ``HR change``: the PSNR-Y between the
  ground truth and the notch applied to the ground truth itself — what the notch takes from a
  perfect output (mean / min).

A variant is ``none``, ``default`` (``NOTCH_PASSES``) or passes ``window:kappa[,window:kappa…]``
(window in tokens). The reference row ``HR`` scores the ground truth. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track

from op4ksr.api import load_model
from op4ksr.eval.bench import load_suites, load_tensor
from op4ksr.eval.diagnostics.inspector import DEFAULT_THRESHOLD_DB, grid_score, tile_scores
from op4ksr.eval.metrics.base import quantize_8bit
from op4ksr.eval.metrics.fidelity import PSNRY
from op4ksr.models.grid_fix import NOTCH_PASSES, TOKEN_PERIOD, token_notch

Passes = tuple[tuple[int, float], ...]


def parse_variant(text: str) -> Passes | None:
    """``none`` → None, ``default`` → NOTCH_PASSES, ``8:4,4:8`` → ((8, 4.0), (4, 8.0))."""
    if text == "none":
        return None
    if text == "default":
        return NOTCH_PASSES
    try:
        return tuple((int(w), float(k)) for w, k in (p.split(":") for p in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected none, default or window:kappa[,window:kappa…]") from None


def notched(image: torch.Tensor, passes: Passes | None) -> torch.Tensor:
    """The notch as the pipeline applies it: on the output padded to the token grid, then cropped."""
    if passes is None:
        return image
    height, width = image.shape[-2:]
    ph, pw = (-height) % TOKEN_PERIOD, (-width) % TOKEN_PERIOD
    padded = F.pad(image, (0, pw, 0, ph), mode="reflect") if ph or pw else image.clone()
    return token_notch(padded, passes=passes).clamp_(0, 1)[..., :height, :width]


@dataclass
class Scores:
    grid32: list[float] = field(default_factory=list)
    grid16: list[float] = field(default_factory=list)
    tiles: list[np.ndarray] = field(default_factory=list)
    offset: list[np.ndarray] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    hr_change: list[float] = field(default_factory=list)

    def add(self, image: torch.Tensor) -> None:
        eight_bit = quantize_8bit(image).float() / 255
        self.grid32.append(grid_score(eight_bit[0]))
        self.grid16.append(grid_score(eight_bit[0], period=16))
        self.tiles.append(tile_scores(eight_bit[0]))
        self.offset.append(tile_scores(eight_bit[0], offset=128))

    def row(self, label: str) -> str:
        def pair(values: Sequence[float] | np.ndarray) -> str:
            return f"{np.mean(values):.2f} / {np.max(values):.2f}"

        g32, g16 = np.array(self.grid32), np.array(self.grid16)
        over = f"{int((g32 > DEFAULT_THRESHOLD_DB).sum())} / {int((g16 > DEFAULT_THRESHOLD_DB).sum())}"
        psnr = f"{np.mean(self.psnr):.3f}" if self.psnr else "–"
        change = f"{np.mean(self.hr_change):.1f} / {np.min(self.hr_change):.1f}" if self.hr_change else "–"
        return (f"| {label} | {pair(g32)} | {pair(g16)} | {over} | {pair(np.concatenate(self.tiles))} "
                f"| {pair(np.concatenate(self.offset))} | {psnr} | {change} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+", help="folders written by `op4ksr make-bench`")
    parser.add_argument("--variants", nargs="+", type=parse_variant, metavar="VARIANT",
                        default=[None, NOTCH_PASSES], help="none, default or window:kappa[,window:kappa…]")
    parser.add_argument("--model", default=None, help="model directory (default: the bundled compact)")
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()

    pipe = load_model(args.model, device="cpu")
    psnr = PSNRY()
    def label(passes: Passes | None) -> str:
        if passes is None:
            return "none"
        text = ",".join(f"{w}:{k:g}" for w, k in passes)
        return f"{text} (default)" if passes == NOTCH_PASSES else text

    labels = [label(v) for v in args.variants]
    if len(set(labels)) != len(labels):
        parser.error("a variant is given twice")
    for suite in load_suites(args.suites, max_images=args.max_images):
        scores = {label: Scores() for label in labels}
        truth = Scores()
        for item in track(suite.items, description=suite.label):
            raw = pipe(load_tensor(item.lr), grid_fix="none")
            hr = load_tensor(item.hr) if item.hr is not None else None
            for label, passes in zip(labels, args.variants, strict=True):
                out = notched(raw, passes)
                scores[label].add(out)
                if hr is not None:
                    scores[label].psnr.append(float(psnr(out, hr)[0]))
                    if passes is not None:
                        scores[label].hr_change.append(float(psnr(notched(hr, passes), hr)[0]))
            if hr is not None:
                truth.add(hr)
        print(f"\n{suite.label} ({len(suite.items)} images; grid / tile scores in dB, mean / max)\n")
        print("| notch | grid32 | grid16 | over 5 dB (32 / 16) | tiles | offset tiles | PSNR-Y | HR change (dB) |")
        print("|---|---|---|---|---|---|---|---|")
        for label in labels:
            print(scores[label].row(label))
        if truth.grid32:
            print(truth.row("HR (ground truth)"))


if __name__ == "__main__":
    main()
