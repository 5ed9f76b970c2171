"""Speed and memory of patch-free OP4KSR, per stage, against the tiled baseline and the peers.

Every figure is the median of warm runs (one warm-up call at the same size first). Peak memory is
the process's peak RSS during the call on CPU (reset through /proc/self/clear_refs) or CUDA's max
allocated, minus what was resident before the call, plus the model weights — the quantity the
planner (``op4ksr info``) estimates. Results are appended to docs/PERFORMANCE.md as tables with the
machine, the versions and the command.

    python benchmarks/speed.py --model compact --sizes 1024 2048 4096 --runs 3 --tiled --realesrgan --scaling --write
    python benchmarks/speed.py --sizes 1024 4096 --peers span,clearreality,span-ncnn,clearreality-ncnn --write
    python benchmarks/speed.py --ultraflux-cuda --write     # one CUDA GPU (H100 class), random bf16 weights
    python benchmarks/speed.py --sizes 1024 2048 --compile  # torch.compile vs eager for the DiT and the decoder
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch

from op4ksr.eval.bench import PeakMemory
from op4ksr.models.planner import human_bytes

DOCS = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


def timed(fn: Callable[[], object], device: torch.device, runs: int,
          warmup: Callable[[], object] | None = None) -> tuple[float, int, object]:
    """(median seconds, peak bytes above the resident set before the call, last result).

    ``warmup`` replaces the default warm-up (one call of ``fn`` at the same size), e.g. a small
    input for a method that takes minutes per call."""
    (warmup or fn)()
    times, peaks, out = [], [], None
    for _ in range(runs):
        out = None
        _sync(device)
        before = _resident(device)
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            out = fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        peaks.append(max(0, mem.peak_bytes - before))
    return statistics.median(times), max(peaks), out


def test_image(side: int) -> torch.Tensor:
    """A real photo (scikit-image's astronaut) resized to side×side, as [1,3,side,side] in [0,1]."""
    from PIL import Image
    import skimage.data

    img = Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def weights_bytes(pipe) -> int:
    return sum(p.numel() * p.element_size() for m in (pipe.vae, pipe.transformer, pipe.prompt) for p in m.parameters())


STAGES = ("encode", "dit", "decode")
STAGE_LABELS = {"encode": "encode", "dit": "DiT", "decode": "decode"}


def run_stage(pipe, stage: str, inp: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
    """One pipeline stage on its input: padded image → latent → denoised latent → image; the
    decode stage includes the high-frequency compensation when ``guide`` (the padded input) is given."""
    if stage == "decode":
        return pipe.decode(inp, guide)
    return {"encode": pipe.encode, "dit": pipe.denoise}[stage](inp)


@dataclass
class StageTiming:
    seconds: float  # median of the warm runs
    peak: int  # bytes above the resident set before the call (weights not included)
    input: torch.Tensor  # what the stage ran on, so that a compiled copy can be timed on the same tensor


def time_stages(pipe, x: torch.Tensor, runs: int) -> dict[str, StageTiming]:
    """Each stage timed on the previous stage's output, starting from the padded full-size input ``x``.

    Call under ``torch.inference_mode()``."""
    timings, inp = {}, x
    for stage in STAGES:
        t, m, out = timed(lambda stage=stage, inp=inp: run_stage(pipe, stage, inp, x), pipe.device, runs)
        timings[stage] = StageTiming(t, m, inp)
        inp = out
    return timings


def stage_rows(pipe, side_out: int, runs: int) -> dict:
    lr = test_image(side_out // pipe.scale).to(pipe.device, pipe.dtype)
    w = weights_bytes(pipe)
    with torch.inference_mode():
        x, _ = pipe.upsample_and_pad(lr)
        st = time_stages(pipe, x, runs)
        t_all, m_all, _ = timed(lambda: pipe(lr, check_memory=False), pipe.device, runs)
    est = pipe.estimate(side_out, side_out)
    return {"size": side_out, **{s: st[s].seconds for s in STAGES}, "total": t_all,
            "peak": m_all + w, **{f"peak_{s}": st[s].peak + w for s in STAGES},
            "estimate": est.peak_bytes, "flops": est.total_flops, "dit_flops": est.dit_flops}


@dataclass(frozen=True)
class CompileChoice:
    """What ``--compile`` compiles and how: the two stages that dominate the time at 4K, each separately."""

    # (stage, module path inside the pipeline): the DiT, and the decoder's forward, which holds all
    # of decode's convolutions (encode is not compiled: it is the smallest stage)
    targets: tuple[tuple[str, str], ...] = (("dit", "transformer"), ("decode", "vae.decoder"))
    backend: str = "inductor"
    mode: str | None = None  # torch.compile's default; "max-autotune" compiles for much longer
    # each size is compiled afresh: static shapes let inductor specialise every kernel to the size,
    # which is what a server at one resolution would do
    dynamic: bool = False

    def describe(self, device: torch.device) -> str:
        modules = ", ".join(f"`{path}` ({STAGE_LABELS[stage]})" for stage, path in self.targets)
        kernels = ""
        if self.backend == "inductor":
            kernels = " (Triton kernels)" if device.type == "cuda" else f" (C++/OpenMP kernels, {_cpp_compiler()})"
        return (f"Compiled {modules}, one at a time in place (eager again afterwards), with `torch.compile(backend="
                f"\"{self.backend}\", mode={self.mode!r}, dynamic={self.dynamic})`; backend: "
                f"{self.backend}{kernels}. Compile s is the first call (compilation + one run); it includes hits "
                f"in inductor's on-disk cache from earlier runs (point TORCHINDUCTOR_CACHE_DIR at an empty "
                f"folder for a cold figure).")


def _cpp_compiler() -> str:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - a private helper: its absence must not cost the table
        return f"compiler unknown: {type(exc).__name__}"


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The exception as one table cell: its type, and the first message line of its root cause.

    Dynamo wraps a backend's failure (``BackendCompilerFailed: backend='inductor' raised:``), so the
    reason (e.g. the C++ compiler's error) is on the wrapped exception or the one it was raised from."""
    root = exc
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner
    first = next((line.strip() for line in str(root).splitlines() if line.strip()), "")
    parts = [type(exc).__name__] + ([type(root).__name__] if root is not exc else []) + ([first] if first else [])
    text = ": ".join(parts).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compiled_stage_time(pipe, stage: str, path: str, inp: torch.Tensor, runs: int,
                        choice: CompileChoice) -> tuple[float, float]:
    """(first-call seconds, median warm seconds) of ``stage`` with ``pipe.<path>`` compiled.

    The module is compiled in place (``nn.Module.compile``, i.e. torch.compile of its call, so the
    pipeline still sees the same class and config) and put back to eager afterwards. No copy of
    the pipeline: at full size a second set of weights (~24 GB in bf16) would not be free."""
    module = attrgetter(path)(pipe)
    torch._dynamo.reset()  # no guards or graphs from another size: the first call compiles from scratch
    try:
        module.compile(backend=choice.backend, mode=choice.mode, dynamic=choice.dynamic)
        _sync(pipe.device)
        start = time.perf_counter()
        run_stage(pipe, stage, inp)
        _sync(pipe.device)
        first = time.perf_counter() - start
        # timed's own warm-up call also absorbs a recompilation if the second call's guards differ
        seconds, _, _ = timed(lambda: run_stage(pipe, stage, inp), pipe.device, runs)
        return first, seconds
    finally:
        module._compiled_call_impl = None  # where nn.Module.compile keeps the compiled call: eager again
        torch._dynamo.reset()


def compile_rows(pipe, side_out: int, runs: int, choice: CompileChoice) -> list[dict]:
    """Eager against compiled, per compiled stage, timed back to back on the same inputs."""
    lr = test_image(side_out // pipe.scale).to(pipe.device, pipe.dtype)
    rows = []
    with torch.inference_mode():
        x, _ = pipe.upsample_and_pad(lr)
        eager = time_stages(pipe, x, runs)
        for stage, path in choice.targets:
            row = {"size": side_out, "stage": stage, "eager": eager[stage].seconds}
            try:
                row["compile"], row["compiled"] = compiled_stage_time(pipe, stage, path, eager[stage].input, runs, choice)
            except Exception as exc:  # noqa: BLE001 - no C++ compiler, an op inductor cannot lower, …: one row
                row["error"] = _one_line(exc)
            rows.append(row)
    return rows


def tiled_row(pipe, side_out: int, runs: int) -> dict:
    lr = test_image(side_out // pipe.scale).to(pipe.device, pipe.dtype)
    t, m, _ = timed(lambda: pipe(lr, tiled=True, check_memory=False), pipe.device, runs)
    return {"size": side_out, "total": t, "peak": m + weights_bytes(pipe)}


def peer_row(spec: str, side_out: int, runs: int, device: torch.device) -> dict:
    """A registry method (``op4ksr.eval.peers``) timed at one output size; a method that cannot be
    created here (its asset not fetched, the ncnn runtime not installed) is a row with the reason."""
    from op4ksr.eval.peers.registry import create_method

    try:
        method = create_method(spec, device=device)
    except (ValueError, OSError, RuntimeError) as exc:
        return {"size": side_out, "spec": spec, "error": _one_line(exc)}
    with method:
        lr = test_image(side_out // method.scale)
        small = test_image(64)  # minutes per 4K call on a CPU: warm up (lazy init, allocator) on a small input
        t, m, _ = timed(lambda: method(lr), method.device, runs, warmup=lambda: method(small))
    return {"size": side_out, "spec": spec, "total": t, "peak": m, "device": method.device.type}


def realesrgan_row(side_out: int, runs: int, device: torch.device) -> dict:
    row = peer_row("realesrgan", side_out, runs, device)
    if "error" in row:
        raise RuntimeError(f"realesrgan: {row['error']}")
    return row


def scaling_rows(pipe, grids: list[int], runs: int) -> list[dict]:
    """DiT time against token count, and the share of time spent in attention (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    channels = pipe.vae.config.latent_channels
    for g in grids:
        z = torch.randn(1, channels, 2 * g, 2 * g, device=pipe.device, dtype=pipe.dtype)
        with torch.inference_mode():
            t, _, _ = timed(lambda: pipe.denoise(z), pipe.device, runs)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if pipe.device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                pipe.denoise(z)
                _sync(pipe.device)
        key = "self_device_time_total" if pipe.device.type == "cuda" else "self_cpu_time_total"
        events = prof.key_averages()
        total = sum(getattr(e, key) for e in events)
        attention = sum(getattr(e, key) for e in events if "scaled_dot_product" in e.key or "flash_attention" in e.key)
        tokens = g * g
        rows.append({"tokens": tokens, "seconds": t, "attention_share": attention / max(total, 1),
                     "dit_flops": pipe.estimate(32 * g, 32 * g).dit_flops})
    return rows


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    else:
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), platform.processor())
        dev = f"{cpu}, {torch.get_num_threads()} threads"
    return (f"{dev}; Python {platform.python_version()}, torch {torch.__version__}; "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")


def markdown(args, device, stages, tiled, esrgan, scaling, compiled: list[dict] | None = None,
             compile_choice: CompileChoice | None = None, peers: list[dict] | None = None) -> str:
    lines = [f"\n## {args.model} on {device.type} ({datetime.now(timezone.utc):%Y-%m-%d})", "",
             f"Machine: {machine_line(device)}  ", f"Command: `python {' '.join(sys.argv)}`  ",
             f"Each time is the median of {args.runs} warm run(s); peak = memory above the idle process + weights.", ""]
    if stages:
        lines += ["| output | encode s | DiT s | decode s | total s | peak | planner estimate | estimate/peak | achieved GFLOP/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in stages:
            lines.append(f"| {r['size']}² | {r['encode']:.2f} | {r['dit']:.2f} | {r['decode']:.2f} | {r['total']:.2f} | "
                         f"{human_bytes(r['peak'])} | {human_bytes(r['estimate'])} | {r['estimate'] / r['peak']:.2f} | "
                         f"{r['flops'] / r['total'] / 1e9:.0f} |")
        lines.append("")
    if tiled or esrgan:
        lines += ["| output | patch-free s | tiled baseline s | Real-ESRGAN x4plus s | tiled / patch-free | Real-ESRGAN / patch-free | peaks (free / tiled / ESRGAN) |",
                  "|---|---|---|---|---|---|---|"]
        by_size = {r["size"]: r for r in stages}
        for size in sorted({r["size"] for r in tiled + esrgan}):
            free = by_size.get(size)
            t = next((r for r in tiled if r["size"] == size), None)
            e = next((r for r in esrgan if r["size"] == size), None)
            cell = lambda r: f"{r['total']:.2f}" if r else "–"  # noqa: E731
            ratio = lambda r: f"{r['total'] / free['total']:.1f}×" if r and free else "–"  # noqa: E731
            peaks = " / ".join(human_bytes(r["peak"]) if r else "–" for r in (free, t, e))
            lines.append(f"| {size}² | {cell(free)} | {cell(t)} | {cell(e)} | {ratio(t)} | {ratio(e)} | {peaks} |")
        lines.append("")
    if peers:
        by_size = {r["size"]: r for r in stages}
        lines += ["| output | peer (`--peers`) | device | s | peak | peer / patch-free |", "|---|---|---|---|---|---|"]
        for r in peers:
            free = by_size.get(r["size"])
            if "error" in r:
                lines.append(f"| {r['size']}² | `{r['spec']}` | – | not run: {r['error']} | – | – |")
                continue
            ratio = f"{r['total'] / free['total']:.2f}×" if free else "–"
            lines.append(f"| {r['size']}² | `{r['spec']}` | {r['device']} | {r['total']:.2f} | "
                         f"{human_bytes(r['peak'])} | {ratio} |")
        lines.append("")
    if scaling:
        lines += ["| tokens | DiT s | attention share | DiT TFLOP (model) | achieved GFLOP/s | s per TFLOP |", "|---|---|---|---|---|---|"]
        for r in scaling:
            lines.append(f"| {r['tokens']:,} | {r['seconds']:.3f} | {100 * r['attention_share']:.0f}% | "
                         f"{r['dit_flops'] / 1e12:.3f} | {r['dit_flops'] / r['seconds'] / 1e9:.0f} | "
                         f"{r['seconds'] / (r['dit_flops'] / 1e12):.2f} |")
        lines.append("")
    if compiled:
        # three decimals: at small sizes a stage takes hundredths of a second
        lines += ["| output | stage | eager s | compiled s | speed-up | compile s (first call) |", "|---|---|---|---|---|---|"]
        for r in compiled:
            head = f"| {r['size']}² | {STAGE_LABELS[r['stage']]} | {r['eager']:.3f} |"
            if "error" in r:
                lines.append(f"{head} failed: {r['error']} | – | – |")
            else:
                lines.append(f"{head} {r['compiled']:.3f} | {r['eager'] / r['compiled']:.2f}× | {r['compile']:.1f} |")
        lines += ["", (compile_choice or CompileChoice()).describe(device), ""]
    return "\n".join(lines)


def build_ultraflux_cuda():
    """Full-size architecture with random bf16 weights on the GPU (initialised there, no CPU copy)."""
    from op4ksr.models.presets import build_pipeline

    pipe = build_pipeline("ultraflux", device="meta", seed=None)
    device = torch.device("cuda")
    for part in (pipe.vae, pipe.transformer, pipe.prompt):
        part.to_empty(device=device)
        part.to(dtype=torch.bfloat16)
        with torch.no_grad():
            for p in part.parameters():
                p.normal_(0.0, 0.02)
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="compact", help="bundled 'compact' or a model directory")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="output sides")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tiled", action="store_true", help="also time the OMGSR-style tiled baseline")
    ap.add_argument("--realesrgan", action="store_true", help="also time Real-ESRGAN x4plus (needs its asset)")
    ap.add_argument("--esrgan-runs", type=int, default=1, help="timed runs for Real-ESRGAN (minutes each at 4K on CPU)")
    ap.add_argument("--peers", type=lambda text: [p for p in text.split(",") if p], default=[],
                    help="also time these registry methods (comma-separated specs, e.g. "
                         "span,clearreality,clearreality-ncnn; ncnn ones need op4ksr[ncnn]), --runs each")
    ap.add_argument("--scaling", action="store_true", help="DiT time vs tokens, 256…16,384")
    ap.add_argument("--compile", action="store_true",
                    help="also time the DiT and the VAE decoder under torch.compile against eager")
    ap.add_argument("--ultraflux-cuda", action="store_true", help="the full-size architecture on one CUDA GPU, bf16")
    ap.add_argument("--write", action="store_true", help=f"append the tables to {DOCS}")
    args = ap.parse_args()

    if args.ultraflux_cuda:
        if not torch.cuda.is_available():
            sys.exit("--ultraflux-cuda needs a CUDA GPU")
        args.model = "ultraflux (random bf16 weights)"
        pipe = build_ultraflux_cuda()
        args.sizes = [4096]
    else:
        from op4ksr.models.loading import load_pipeline

        pipe = load_pipeline(args.model)
    device = pipe.device
    stages = [stage_rows(pipe, s, args.runs) for s in args.sizes]
    tiled = [tiled_row(pipe, s, args.runs) for s in args.sizes] if args.tiled else []
    esrgan = [realesrgan_row(s, args.esrgan_runs, device) for s in args.sizes] if args.realesrgan else []
    peers = [peer_row(spec, s, args.runs, device) for s in args.sizes for spec in args.peers]
    scaling = scaling_rows(pipe, [16, 32, 64, 96, 128], args.runs) if args.scaling else []
    choice = CompileChoice()
    compiled = [r for s in args.sizes for r in compile_rows(pipe, s, args.runs, choice)] if args.compile else []
    text = markdown(args, device, stages, tiled, esrgan, scaling, compiled, choice, peers)
    print(text)
    if args.write:
        if not DOCS.exists():
            DOCS.write_text("# Performance\n\nMeasured by `benchmarks/speed.py`; newest sections last.\n")
        with open(DOCS, "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
