"""Whole-process times as a user runs them: one `op4ksr upscale` call per image, from a cold start.

Every figure is the median of ``--runs`` fresh processes (imports, loading, reading, compute,
writing included), measured in one run of this script beside:

* ``python -c "import torch"`` — the floor any PyTorch tool pays;
* Real-ESRGAN x4plus as a whole Python process (torch, op4ksr's converted x4plus weights, run,
  PNG save), launched from this file's ``--realesrgan-worker`` mode;
* the in-process pipeline time of the same call (model loaded and warm; one warm-up call first);
* the post-steps (colour anchor, notch) timed on the real 4096² output;
* PNG encoding of that output at zlib levels 0–9 (the measurement behind ``--png-compression``'s
  default);
* ``op4ksr --help`` and ``op4ksr upscale --help``.

The per-phase split of an ``op4ksr upscale`` process comes from its ``--json`` report
(``load_seconds``, ``timings``); "start + imports" is the wall time minus those phases.

    python benchmarks/startup.py --runs 3 --write            # tables appended to docs/PERFORMANCE.md
    python benchmarks/startup.py --runs 3 --peer-runs 1      # Real-ESRGAN at 4096² takes minutes per run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "PERFORMANCE.md"
HELDOUT = ROOT / "corpus" / "heldout"
BIN = Path(sys.executable).parent
SIZES = (256, 1024)  # LR sides: 256→1024 and 1024→4096
PNG_LEVELS = (0, 1, 3, 6, 9)


# ------------------------------------------------------------------ inputs
def make_inputs(folder: Path, photo: Path | None) -> tuple[dict[int, Path], str]:
    """Square LR crops (centre, box-downscaled to each side) of a held-out photo, else scikit-image's astronaut."""
    import numpy as np
    from PIL import Image

    if photo is None and HELDOUT.is_dir():
        candidates = sorted(p for p in HELDOUT.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        photo = next((p for p in candidates if min(Image.open(p).size) >= 2048), None)
    if photo is not None:
        image = Image.open(photo).convert("RGB")
        source = str(photo.relative_to(ROOT) if photo.is_relative_to(ROOT) else photo)
    else:
        from skimage import data

        image, source = Image.fromarray(data.astronaut()), "skimage astronaut"
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    paths = {}
    for lr in SIZES:
        path = folder / f"lr{lr}.png"
        resample = Image.BOX if side >= lr else Image.LANCZOS
        Image.fromarray(np.asarray(square.resize((lr, lr), resample))).save(path)
        paths[lr] = path
    return paths, source


# ------------------------------------------------------------------ whole processes
def wall(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, done.stdout


def op4ksr_process(image: Path, out: Path, runs: int) -> dict[str, float]:
    """Median whole-process seconds and phases of `op4ksr upscale IMAGE --json`."""
    rows = []
    for _ in range(runs):
        seconds, stdout = wall([str(BIN / "op4ksr"), "upscale", str(image), "-o", str(out), "--overwrite", "--json"])
        report = json.loads(stdout)
        timings = report["files"][0]["timings"]
        load = report["load_seconds"]
        phases = {"total": seconds, "load": load, "read": timings["read_s"], "compute": timings["compute_s"],
                  "write": timings["write_s"]}
        phases["start_imports"] = seconds - load - timings["read_s"] - timings["compute_s"] - timings["write_s"]
        rows.append(phases)
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def realesrgan_process(image: Path, out: Path, runs: int) -> dict[str, float]:
    rows = []
    for _ in range(runs):
        seconds, stdout = wall([sys.executable, __file__, "--realesrgan-worker", str(image), str(out)])
        rows.append({"total": seconds, **json.loads(stdout.strip().splitlines()[-1])})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def realesrgan_worker(image: str, out: str) -> None:
    """One Real-ESRGAN x4plus upscale as its own process; prints its phases as JSON."""
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image

    from op4ksr.eval.peers.realesrgan import RealESRGANMethod

    t1 = time.perf_counter()
    method = RealESRGANMethod(device="cpu")
    t2 = time.perf_counter()
    lr = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    t3 = time.perf_counter()
    with torch.inference_mode():
        sr = method.upscale(lr)
    t4 = time.perf_counter()
    pixels = (sr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(pixels).save(out, compress_level=3)
    t5 = time.perf_counter()
    print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "read": t3 - t2, "compute": t4 - t3, "write": t5 - t4}))


# ------------------------------------------------------------------ in process
def in_process(image: Path, out: Path, runs: int) -> dict[str, object]:
    """Warm in-process times for the same call, the post-steps' cost and PNG levels, on the 4096² output."""
    import torch

    from op4ksr.api import Upscaler
    from op4ksr.io.images import encode_image, load_image
    from op4ksr.models.color import wavelet_color_fix
    from op4ksr.models.grid_fix import token_notch

    upscaler = Upscaler()
    pipe = upscaler.pipe
    upscaler.upscale_file(image, out, overwrite=True)  # warm-up
    calls, computes = [], []
    for _ in range(runs):
        start = time.perf_counter()
        outcome = upscaler.upscale_file(image, out, overwrite=True)
        calls.append(time.perf_counter() - start)
        computes.append(outcome.timings["compute_s"])
    data = load_image(image)
    lr = torch.from_numpy(data.pixels).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        bare = []
        for _ in range(runs):
            start = time.perf_counter()
            raw = pipe(lr, color_fix="none", grid_fix="none")
            bare.append(time.perf_counter() - start)
        reference = torch.nn.functional.interpolate(lr, scale_factor=pipe.scale, mode="bicubic").clamp_(0, 1)
        colour, notch = [], []
        for _ in range(runs):
            start = time.perf_counter()
            wavelet_color_fix(raw, reference)
            colour.append(time.perf_counter() - start)
            padded = raw.clone()  # the notch runs on the token-grid size (here already a multiple of 32)
            start = time.perf_counter()
            token_notch(padded)
            notch.append(time.perf_counter() - start)
    result = load_image(out)
    levels = {}
    for level in PNG_LEVELS:
        times, size = [], 0
        for _ in range(runs):
            start = time.perf_counter()
            body, _ = encode_image(result, "png", png_compression=level)
            times.append(time.perf_counter() - start)
            size = len(body)
        levels[level] = (statistics.median(times), size)
    return {"call": statistics.median(calls), "compute": statistics.median(computes),
            "pipeline_bare": statistics.median(bare), "color_fix": statistics.median(colour),
            "notch": statistics.median(notch), "png": levels, "post_steps": (pipe.config.color_fix, pipe.config.grid_fix)}


# ------------------------------------------------------------------ report
def markdown(args, torch_s: float, helps: dict[str, float], ours: dict[int, dict], peer: dict[int, dict],
             warm: dict[str, object], source: str) -> str:
    import torch
    from speed import machine_line  # the sibling benchmark's machine description; imported here so
    # that the Real-ESRGAN worker process (this file too) does not pay for it

    lines = [f"## Whole-process start-up and run ({datetime.now(timezone.utc):%Y-%m-%d})", "",
             f"Machine: {machine_line(torch.device('cpu'))}  ",
             f"Command: `python benchmarks/startup.py {' '.join(sys.argv[1:])}`  ",
             f"Input: square centre crop of {source}, box-downscaled to 256² and 1024². Medians of "
             f"{args.runs} fresh processes ({args.peer_runs} for Real-ESRGAN); one run of this script.", "",
             f"`python -c \"import torch\"`: **{torch_s:.2f} s**. " +
             "; ".join(f"`{k}`: {v:.2f} s" for k, v in helps.items()) + ".", "",
             "| call | whole process s | start + imports s | load s | read s | compute s | write s | "
             "× import torch | Real-ESRGAN x4plus process s | Real-ESRGAN / op4ksr |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for lr, row in ours.items():
        p = peer.get(lr)
        lines.append(
            f"| {lr}→{4 * lr} | {row['total']:.2f} | {row['start_imports']:.2f} | {row['load']:.2f} | "
            f"{row['read']:.2f} | {row['compute']:.2f} | {row['write']:.2f} | {row['total'] / torch_s:.2f}× | "
            + (f"{p['total']:.1f} | {p['total'] / row['total']:.1f}× |" if p else "– | – |"))
    if peer:
        lines += ["", "Real-ESRGAN x4plus process phases (s): " + "; ".join(
            f"{lr}→{4 * lr}: " + ", ".join(f"{k} {v:.2f}" for k, v in p.items() if k != "total")
            for lr, p in peer.items()) + "."]
    if warm:
        from op4ksr.io.images import PNG_COMPRESS_LEVEL

        big = ours[max(ours)]
        post = warm["color_fix"] + warm["notch"]
        lines += ["", f"**1024→4096 in process** (model loaded, warm): pipeline {warm['compute']:.2f} s "
                  f"(the `upscale_file` call with reading and writing: {warm['call']:.2f} s); whole process / "
                  f"in-process pipeline = **{big['total'] / warm['compute']:.2f}×**. Post-steps "
                  f"({', '.join(warm['post_steps'])}) on the 4096² output: colour anchor {warm['color_fix']:.2f} s, "
                  f"notch {warm['notch']:.2f} s, together **{100 * post / warm['compute']:.0f} %** of the pipeline "
                  f"(the pipeline with both off: {warm['pipeline_bare']:.2f} s).", "",
                  "| PNG zlib level (4096² output) | encode s | size MiB |", "|---|---|---|"]
        lines += [f"| {level}{' (default)' if level == PNG_COMPRESS_LEVEL else ''} | {t:.2f} | {size / 2**20:.1f} |"
                  for level, (t, size) in warm["png"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--realesrgan-worker":
        realesrgan_worker(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per figure (median)")
    ap.add_argument("--peer-runs", type=int, default=3, help="Real-ESRGAN processes per size (0: skip it)")
    ap.add_argument("--photo", type=Path, default=None, help="source photo (default: a held-out corpus photo)")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=SIZES, help="LR sides")
    ap.add_argument("--no-warm", action="store_true", help="skip the in-process 4096² measurements")
    ap.add_argument("--write", action="store_true", help=f"append the tables to {DOCS}")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images, source = make_inputs(folder, args.photo)
        torch_s = statistics.median(wall([sys.executable, "-c", "import torch"])[0] for _ in range(args.runs))
        helps = {cmd: statistics.median(wall([str(BIN / "op4ksr"), *cmd.split()[1:], "--help"])[0]
                                        for _ in range(args.runs))
                 for cmd in ("op4ksr", "op4ksr upscale")}
        helps = {f"{k} --help": v for k, v in helps.items()}
        ours = {lr: op4ksr_process(images[lr], folder / f"ours{lr}", args.runs) for lr in args.sizes}
        peer = {lr: realesrgan_process(images[lr], folder / f"peer{lr}.png", args.peer_runs)
                for lr in args.sizes} if args.peer_runs > 0 else {}
        warm = {} if args.no_warm or 1024 not in args.sizes else in_process(images[1024], folder / "warm.png", args.runs)
        text = markdown(args, torch_s, helps, ours, peer, warm, source)
    print(text)
    if args.write:
        with open(DOCS, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
