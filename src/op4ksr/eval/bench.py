"""Benchmark runner: suites → per-image, per-method outputs, metrics, timings, peak memory.

    >>> config = BenchConfig(methods=("bicubic", "op4ksr:runs/x/model"), metrics=("psnr_y", "lpips"))
    >>> results = run_bench(["bench/syn"], "results/", config)
    >>> results.mean("syn", "bicubic", "psnr_y")

What is measured, and how (docs/BENCHMARKS.md repeats this for readers of the tables):

* **Outputs**: every method's SR image is written as an 8-bit PNG under
  ``RESULTS_DIR/outputs/<suite>/<method>/<image>.png``; metrics are computed on the output
  tensor (the fidelity metrics quantise to 8 bits themselves, so they match the PNG).
* **Metrics**: :func:`op4ksr.eval.metrics.create_metric`. Full-reference metrics run only on
  suites with ground truth. Deep-feature metrics use the paper's patch-based evaluation
  (``PatchConfig``: 512×512 crops, stride 512, by default). A metric that cannot run here
  (missing asset, no pyiqa) is kept with its reason so that the tables say why a row is empty.
* **Time** (paper Table 5): per image, one warm-up call, then the median of ``timed_runs``
  timed calls (CUDA synchronised); a method's time is the median over its images.
* **Peak memory**: on CUDA, ``torch.cuda.max_memory_allocated`` after resetting the peak
  before each method. On the CPU, the process's peak resident set size (``VmHWM``), reset
  before each method by writing ``5`` to ``/proc/self/clear_refs`` (Linux ≥ 4.0): no
  subprocess is needed and every method gets its own peak, which includes the interpreter
  and the loaded weights (the whole cost of running that method). Where the reset is not
  available the kernel's peak (``ru_maxrss``) is monotonic over the process, so the value
  is reported with ``memory_kind="cpu_peak_rss_process"``: an upper bound shared with earlier
  methods, not a per-method peak.
* **Determinism**: images and methods run in a fixed order, the torch seed is reset before
  every call, and files are written with fixed PNG settings, so two runs give the same
  outputs and metric values (timings and memory naturally vary).
"""

from __future__ import annotations

import gc
import inspect
import json
import math
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from op4ksr.eval.metrics import PatchConfig
from op4ksr.utils.errors import one_line

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

# Metrics of the paper's Tables 3–4 plus the inspector's periodicity scores (token and latent
# pixel), in table order.
DEFAULT_METRICS: tuple[str, ...] = (
    "psnr_y", "ssim_y", "lpips", "dists", "topiq_fr", "niqe", "brisque", "maniqa", "musiq",
    "clipiqa", "topiq_nr", "topiq_iaa", "nima", "periodicity", "periodicity16",
)
DEFAULT_METHODS: tuple[str, ...] = ("bicubic", "lanczos", "realesrgan", "op4ksr-tiled", "op4ksr")
RESULTS_SCHEMA_VERSION = 1
RESULTS_JSON = "results.json"
OUTPUTS_DIR = "outputs"


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    methods: registry specs ``NAME[:ARG]`` (:mod:`op4ksr.eval.peers`), in column order.
    metrics: metric names (:func:`op4ksr.eval.metrics.available_metrics`), in row order.
    max_images: use at most this many images per suite (the first ones, manifest order).
    warmup_runs, timed_runs: per image, untimed warm-up calls then timed calls (median).
    patch: crop size and stride of the deep-feature metrics (paper: 512 / 512).
    device: where methods and metrics run ("auto": CUDA when present).
    seed: torch seed set before every method call.
    verify: check every suite file against the manifest's sha256 first.
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    max_images: int | None = None
    warmup_runs: int = 1
    timed_runs: int = 3
    patch: PatchConfig = field(default_factory=PatchConfig)
    device: str = "auto"
    seed: int = 0
    verify: bool = True

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("no methods given")
        if not self.metrics:
            raise ValueError("no metrics given")
        if self.timed_runs < 1 or self.warmup_runs < 0:
            raise ValueError(f"need timed_runs ≥ 1 and warmup_runs ≥ 0, got {self.timed_runs}, {self.warmup_runs}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be ≥ 1, got {self.max_images}")
        for name, values in (("method", self.methods), ("metric", self.metrics)):
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"{name} {duplicates[0]!r} given twice")


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteItem:
    name: str
    lr: Path
    hr: Path | None


@dataclass(frozen=True)
class Suite:
    """A folder written by ``op4ksr make-bench``; ``label`` names it in tables and paths."""

    label: str
    kind: str
    folder: Path
    items: tuple[SuiteItem, ...]

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.items) and all(item.hr is not None for item in self.items)


def load_suite(folder: str | Path, *, label: str | None = None, max_images: int | None = None,
               verify: bool = True) -> Suite:
    """Read ``folder/manifest.json`` (format: :mod:`op4ksr.data.bench_suites`)."""
    from op4ksr.data.bench_suites import verify_suite

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest["files"]
        kind = str(manifest["suite"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: no manifest (build suites with `op4ksr make-bench`)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{manifest_path}: not a benchmark manifest ({exc})") from None
    if verify:
        bad = verify_suite(folder)
        if bad:
            raise ValueError(f"{bad[0]}: missing or changed since the manifest was written ({len(bad)} file(s))")
    items = tuple(
        SuiteItem(name=str(e["name"]), lr=folder / e["lr"]["file"],
                  hr=folder / e["hr"]["file"] if "hr" in e else None)
        for e in entries[:max_images]
    )
    if not items:
        raise ValueError(f"{manifest_path}: the suite has no images")
    return Suite(label=label or _slug(folder.resolve().name), kind=kind, folder=folder, items=items)


def load_suites(folders: Sequence[str | Path], *, max_images: int | None = None, verify: bool = True) -> list[Suite]:
    """Several suites; labels are the folder names, made unique with ``-2``, ``-3``…"""
    suites: list[Suite] = []
    for folder in folders:
        base = _slug(Path(folder).resolve().name)
        label, n = base, 2
        while any(s.label == label for s in suites):
            label, n = f"{base}-{n}", n + 1
        suites.append(load_suite(folder, label=label, max_images=max_images, verify=verify))
    return suites


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """A metric as the tables need it; ``unavailable`` is why it could not run (else None)."""

    name: str
    lower_better: bool
    full_reference: bool
    unavailable: str | None = None


@dataclass(frozen=True)
class MethodInfo:
    label: str  # column name and output folder (unique, filesystem-safe)
    spec: str
    scale: int
    device: str


@dataclass
class ImageResult:
    suite: str
    image: str
    method: str
    output: str  # path relative to RESULTS_DIR
    seconds: float  # median of the timed calls
    runs: list[float]
    metrics: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # metric → why it failed on this image


@dataclass
class MethodEfficiency:
    """Paper Table 5: warm median seconds per image and peak memory for one method."""

    method: str
    seconds: float
    peak_memory_bytes: int
    memory_kind: str  # "cuda_max_allocated" | "cpu_peak_rss" | "cpu_peak_rss_process"
    images: int


@dataclass
class BenchResults:
    suites: list[dict[str, Any]]  # label, kind, folder, images, has_ground_truth
    methods: list[MethodInfo]
    metrics: list[MetricInfo]
    images: list[ImageResult]
    efficiency: list[MethodEfficiency]
    config: dict[str, Any]
    environment: dict[str, str]

    def suite_info(self, label: str) -> dict[str, Any]:
        return next(s for s in self.suites if s["label"] == label)

    def metric_info(self, name: str) -> MetricInfo:
        return next(m for m in self.metrics if m.name == name)

    def values(self, suite: str, method: str, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.images
                if r.suite == suite and r.method == method and r.metrics.get(metric) is not None]

    def mean(self, suite: str, method: str, metric: str) -> float | None:
        """Mean over the suite's images where the metric has a value; None when it has none."""
        values = self.values(suite, method, metric)
        return math.fsum(values) / len(values) if values else None

    def metric_applies(self, suite: str, metric: str) -> bool:
        """Full-reference metrics only where the suite has ground truth."""
        return self.suite_info(suite)["has_ground_truth"] or not self.metric_info(metric).full_reference

    def empty_reason(self, suite: str, metric: str) -> str | None:
        """Why a (suite, metric) row has no values, or None when it has some."""
        info = self.metric_info(metric)
        if info.unavailable:
            return info.unavailable
        if any(self.values(suite, m.label, metric) for m in self.methods):
            return None
        errors = [r.errors[metric] for r in self.images if r.suite == suite and metric in r.errors]
        return errors[0] if errors else "no values"

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": RESULTS_SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResults:
        if data.get("schema_version") != RESULTS_SCHEMA_VERSION:
            raise ValueError(f"unsupported results schema_version {data.get('schema_version')!r}")
        return cls(
            suites=data["suites"],
            methods=[MethodInfo(**m) for m in data["methods"]],
            metrics=[MetricInfo(**m) for m in data["metrics"]],
            images=[ImageResult(**r) for r in data["images"]],
            efficiency=[MethodEfficiency(**e) for e in data["efficiency"]],
            config=data["config"],
            environment=data["environment"],
        )


def load_results(path: str | Path) -> BenchResults:
    """Read ``results.json`` (a file or the RESULTS_DIR holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    return BenchResults.from_dict(json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux ``clear_refs`` code 5)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _vm_hwm_bytes() is not None


class PeakMemory:
    """Context manager: peak memory of the work inside it (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = ""
        self.peak_bytes = 0

    def __enter__(self) -> Self:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        elif _reset_rss_peak():
            self.kind = "cpu_peak_rss"
        else:
            self.kind = "cpu_peak_rss_process"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.kind == "cpu_peak_rss":
            self.peak_bytes = int(_vm_hwm_bytes() or 0)
        else:
            # ru_maxrss is KiB on Linux, bytes on macOS.
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_bytes = int(peak if sys.platform == "darwin" else peak * 1024)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def method_label(spec: str) -> str:
    """Column name and folder for a method spec: ``op4ksr:runs/x/model`` → ``op4ksr-model``."""
    from op4ksr.eval.peers import parse_method_spec

    name, arg = parse_method_spec(spec)
    if arg is None:
        return name
    tail = Path(arg.rstrip("/\\")).name or arg  # a folder's or file's last part
    return _slug(f"{name}-{Path(tail).stem if '.' in tail else tail}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def method_labels(specs: Sequence[str]) -> list[str]:
    """Unique labels for ``specs`` (``-2``, ``-3`` suffixes when two specs share one)."""
    labels: list[str] = []
    for spec in specs:
        base = method_label(spec)
        label, n = base, 2
        while label in labels:
            label, n = f"{base}-{n}", n + 1
        labels.append(label)
    return labels


def output_path(suite: str, method: str, image: str) -> str:
    """Where a method's output for an image goes, relative to RESULTS_DIR."""
    return f"{OUTPUTS_DIR}/{suite}/{method}/{image}.png"


def planned_outputs(suites: Sequence[Suite], labels: Sequence[str]) -> list[str]:
    """Every image file a run would write (relative to RESULTS_DIR), for the overwrite check."""
    return [output_path(s.label, label, item.name) for s in suites for label in labels for item in s.items]


def _metric_options(name: str, scale: int, patch: PatchConfig, device: torch.device) -> dict[str, Any]:
    """Keyword arguments ``name``'s constructor accepts among scale / patch / device."""
    from op4ksr.eval.metrics import metric_class

    accepted: set[str] = set()
    for klass in metric_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted |= set(inspect.signature(init).parameters)
    wanted = {"scale": scale, "patch": patch, "device": device}
    return {k: v for k, v in wanted.items() if k in accepted}


def build_metrics(names: Sequence[str], *, scale: int, patch: PatchConfig,
                  device: torch.device) -> tuple[list[MetricInfo], dict[str, Any]]:
    """Create each metric once; those that cannot run are returned with their reason."""
    from op4ksr.assets import AssetMissingError
    from op4ksr.eval.metrics import MetricUnavailable, create_metric, metric_class

    infos: list[MetricInfo] = []
    built: dict[str, Any] = {}
    for name in names:
        klass = metric_class(name)  # KeyError names the known metrics
        reason: str | None = None
        try:
            built[name] = create_metric(name, **_metric_options(name, scale, patch, device))
        except MetricUnavailable as exc:
            reason = exc.reason
        except AssetMissingError as exc:
            reason = str(exc)
        infos.append(MetricInfo(name, bool(klass.lower_better), bool(klass.full_reference), reason))
    return infos, built


def load_tensor(path: Path) -> torch.Tensor:
    """An image file as [1,3,H,W] float32 in [0,1] (grey repeated to RGB)."""
    from op4ksr.io.images import ImageError, load_image, to_tensor

    try:
        pixels = load_image(path).pixels  # [H,W,C] float32 in [0,1]
    except ImageError as exc:
        raise ValueError(f"{path}: {exc.reason}") from None
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return to_tensor(pixels).contiguous()


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] in [0,1] → uint8 [H,W,3] (round half up, as the metrics' 8-bit quantisation)."""
    from op4ksr.io.images import from_tensor

    return np.floor(from_tensor(image) * 255.0 + 0.5).astype(np.uint8)


def _save_png(image: torch.Tensor, path: Path, overwrite: bool) -> None:
    from PIL import Image

    from op4ksr.data.bench_suites import png_bytes
    from op4ksr.utils.atomic import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(Image.fromarray(tensor_to_uint8(image), "RGB")), overwrite=overwrite)


def _timed_call(method: Any, lr: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    sync = (lambda: torch.cuda.synchronize(method.device)) if method.device.type == "cuda" else (lambda: None)
    torch.manual_seed(seed)
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        out = method(lr)
    sync()
    return out, time.perf_counter() - start


ProgressCallback = Callable[[str, int, int], None]  # (what, done, total)


def run_bench(
    suite_dirs: Sequence[str | Path],
    results_dir: str | Path,
    config: BenchConfig | None = None,
    *,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> BenchResults:
    """Run every method on every suite image, score the outputs, write them and ``results.json``.

    ``method_options``: extra keyword arguments per method spec for ``create_method``.
    Existing output files are an error unless ``overwrite``; the check happens before any work.
    """
    from op4ksr.eval.peers import create_method
    from op4ksr.utils.atomic import atomic_write_text
    from op4ksr.utils.device import resolve_device

    config = config or BenchConfig()
    results_dir = Path(results_dir)
    report = on_progress or (lambda what, done, total: None)
    suites = load_suites(suite_dirs, max_images=config.max_images, verify=config.verify)
    labels = method_labels(config.methods)
    if not overwrite:
        for rel in [RESULTS_JSON, *planned_outputs(suites, labels)]:
            if (results_dir / rel).exists():
                raise FileExistsError(f"{results_dir / rel}: exists (use --overwrite to replace it)")
    device = resolve_device(config.device)
    total = sum(len(s.items) for s in suites) * len(labels)
    done = 0

    methods: list[MethodInfo] = []
    images: list[ImageResult] = []
    efficiency: list[MethodEfficiency] = []
    metric_infos: list[MetricInfo] | None = None
    metrics: dict[str, Any] = {}
    for spec, label in zip(config.methods, labels, strict=True):
        report(f"loading {label}", done, total)
        try:
            method = create_method(spec, device=device, **(method_options or {}).get(spec, {}))
        except (ValueError, OSError, RuntimeError) as exc:  # unknown name, missing weights, bad folder
            raise ValueError(f"method {spec!r}: {one_line(exc)}") from exc
        with method:
            if metric_infos is None:
                # Built once, with the first method's scale (all methods of a run share the suites' scale).
                metric_infos, metrics = build_metrics(config.metrics, scale=method.scale, patch=config.patch,
                                                      device=device)
            methods.append(MethodInfo(label=label, spec=spec, scale=method.scale, device=str(method.device)))
            seconds: list[float] = []
            with PeakMemory(method.device) as peak:
                for suite in suites:
                    for item in suite.items:
                        report(f"{label} · {suite.label}/{item.name}", done, total)
                        lr = load_tensor(item.lr).to(method.device)
                        for _ in range(config.warmup_runs):
                            _timed_call(method, lr, config.seed)
                        runs = []
                        for _ in range(config.timed_runs):
                            out, elapsed = _timed_call(method, lr, config.seed)
                            runs.append(elapsed)
                        seconds.append(statistics.median(runs))
                        result = ImageResult(suite=suite.label, image=item.name, method=label,
                                             output=output_path(suite.label, label, item.name),
                                             seconds=statistics.median(runs), runs=runs)
                        _save_png(out, results_dir / result.output, overwrite)
                        hr = load_tensor(item.hr) if item.hr is not None else None
                        _score(result, out.cpu(), hr, metric_infos, metrics)
                        images.append(result)
                        del out, lr
                        done += 1
                        report(f"{label} · {suite.label}/{item.name}", done, total)
        efficiency.append(MethodEfficiency(method=label, seconds=statistics.median(seconds),
                                           peak_memory_bytes=peak.peak_bytes, memory_kind=peak.kind,
                                           images=len(seconds)))
    assert metric_infos is not None
    results = BenchResults(
        suites=[{"label": s.label, "kind": s.kind, "folder": str(s.folder.resolve()), "images": len(s.items),
                 "has_ground_truth": s.has_ground_truth} for s in suites],
        methods=methods, metrics=metric_infos, images=images, efficiency=efficiency,
        config=json.loads(json.dumps(asdict(config))),  # JSON form (lists), as results.json reads back
        environment=environment(device),
    )
    atomic_write_text(results_dir / RESULTS_JSON, json.dumps(results.to_dict(), indent=1) + "\n", overwrite=overwrite)
    return results


def _score(result: ImageResult, sr: torch.Tensor, hr: torch.Tensor | None,
           infos: Sequence[MetricInfo], metrics: dict[str, Any]) -> None:
    """Fill ``result.metrics``; an error on one image is kept as that cell's reason."""
    for info in infos:
        if info.name not in metrics or (info.full_reference and hr is None):
            continue  # unavailable, or needs a ground truth this suite lacks
        if info.full_reference and hr is not None and hr.shape != sr.shape:
            result.metrics[info.name] = None
            result.errors[info.name] = f"output {tuple(sr.shape[-2:])} and ground truth {tuple(hr.shape[-2:])} differ"
            continue
        try:
            value = float(metrics[info.name](sr, hr)[0])
        except (ValueError, RuntimeError) as exc:
            result.metrics[info.name] = None
            result.errors[info.name] = one_line(exc)
            continue
        result.metrics[info.name] = value if math.isfinite(value) else None
        if not math.isfinite(value):
            result.errors[info.name] = "not finite"


def environment(device: torch.device) -> dict[str, str]:
    """Machine facts printed beside the efficiency table."""
    import os
    import platform

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "cpu": platform.processor() or platform.machine(), "cpu_threads": str(torch.get_num_threads()),
           "cpu_count": str(os.cpu_count())}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
