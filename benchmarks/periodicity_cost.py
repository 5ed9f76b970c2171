"""Cost of L_AP (paper Eq. 3) and of the grid inspector at 4096×4096 (results: docs/INSPECTOR.md).

Usage:  OMP_NUM_THREADS=2 python benchmarks/periodicity_cost.py [--size 4096] [--repeats 5]

Reports medians over ``--repeats`` runs after one warm-up, in fp32 on CPU (or on ``--device``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from op4ksr.eval.diagnostics.inspector import grid_score, inspect_image
from op4ksr.losses.periodicity import periodicity_loss
from op4ksr.utils.device import resolve_device


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, args.size, args.size, generator=generator).to(device)
    prediction = (target + 0.01 * torch.randn(target.shape, generator=generator).to(device)).clamp(0, 1)

    def forward() -> None:
        with torch.no_grad():
            periodicity_loss(prediction, target)

    def forward_backward() -> None:
        pred = prediction.clone().requires_grad_(True)
        periodicity_loss(pred, target).backward()

    image = (target[0].permute(1, 2, 0).cpu().numpy() * 255).astype("uint8")
    rows = [
        ("L_AP forward (1×3×N×N)", _median_seconds(forward, args.repeats, device)),
        ("L_AP forward + backward", _median_seconds(forward_backward, args.repeats, device)),
        ("grid_score (luma, N×N)", _median_seconds(lambda: grid_score(image), args.repeats, device)),
        (
            "inspect_image (all outputs)",
            _median_seconds(lambda: inspect_image(image), max(1, args.repeats // 2), device),
        ),
    ]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}, N = {args.size}"
    )
    print("| operation | median (s) |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
