"""``op4ksr upscale --ray``: the same batch spread over a Ray cluster with Ray Data.

Each actor loads the model once and runs :func:`op4ksr.batch.run.process_item` — the very
function of the local run — so outputs, skips, failure reasons and atomic writes are the
same. Planning (collisions, existing outputs, stale temporaries) happens on the driver before
any work. Inputs and the output folder must be on storage every node sees (paths are sent
absolute). Needs the ``cluster`` extra (``pip install 'op4ksr[cluster]'``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from op4ksr.batch.plan import BatchOptions, BatchPlan, FileResult, WorkItem
from op4ksr.batch.run import BatchReport, process_item, remove_stale_temps, report_from_results


class ClusterError(RuntimeError):
    """Ray is missing or the cluster could not run the batch (one line)."""


class UpscaleActor:
    """A Ray Data callable class: one loaded model per actor, one file per row."""

    def __init__(self, model: Any, device: str, dtype: str | None, options: dict[str, Any]):
        from op4ksr.api import Upscaler, is_pipeline

        # A zero-argument factory lets callers (and tests) build the pipeline on the worker.
        if callable(model) and not is_pipeline(model):
            model = model()
        self.options = BatchOptions(**options)
        self.upscaler = Upscaler(model, device=device, dtype=dtype, color_fix=self.options.color_fix,
                                 grid_fix=self.options.grid_fix, fidelity=self.options.fidelity)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for source, output, label in zip(batch["source"], batch["output"], batch["label"]):
            item = WorkItem(Path(str(source)), Path(str(output)), str(label))
            results.append(json.dumps(process_item(self.upscaler, item, self.options).to_dict()))
        return {"result": np.array(results, dtype=object)}


def _ray_modules() -> tuple[Any, Any]:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ClusterError("--ray needs Ray Data: pip install 'op4ksr[cluster]'") from None
    return ray, ray.data


def run_batch_ray(
    plan: BatchPlan,
    options: BatchOptions,
    *,
    model: Any = None,
    device: str = "auto",
    dtype: str | None = None,
    address: str = "auto",
    actors: int | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> BatchReport:
    """Run ``plan`` on Ray (``address``: ``auto`` = the running cluster or a local one).

    ``model`` is a model name/folder (loaded on each actor) or a zero-argument factory.
    Uses an already initialised Ray session as is.
    """
    ray, ray_data = _ray_modules()
    start = time.perf_counter()
    removed = remove_stale_temps(plan)
    if not plan.items:
        return report_from_results(plan, [], removed, time.perf_counter() - start)
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for a bad address
            raise ClusterError(f"cannot connect to Ray at {address!r}: {exc}") from None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    replicas = actors or max(1, gpus)
    rows = [{"source": str(i.source.resolve()), "output": str(i.output.resolve()), "label": i.label} for i in plan.items]
    options_dict = {**asdict(options), "out_dir": str(options.out_dir)}
    dataset = ray_data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        UpscaleActor,
        fn_constructor_kwargs={"model": model, "device": device, "dtype": dtype, "options": options_dict},
        batch_size=1,
        concurrency=replicas,
        num_gpus=1 if gpus else 0,
        num_cpus=1,
    )
    by_output: dict[str, FileResult] = {}
    try:
        for row in dataset.iter_rows():
            result = FileResult.from_dict(json.loads(row["result"]))
            by_output[result.output or result.input] = result
            if on_result is not None:
                on_result(result)
    except Exception as exc:  # noqa: BLE001 - e.g. the model failed to load on an actor
        raise ClusterError(f"Ray batch failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}") from None
    # Report in plan order with the user's output paths, as the local run does.
    results = []
    for item, row in zip(plan.items, rows):
        result = by_output.get(row["output"])
        if result is None:
            result = FileResult(item.label, str(item.output), "failed", "no result came back from the cluster")
        result.output = str(item.output)
        results.append(result)
    return report_from_results(plan, results, removed, time.perf_counter() - start)
