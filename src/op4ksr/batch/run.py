"""Running a batch plan: one function per file (:func:`process_item`) that never raises for a
bad file — it returns a :class:`~op4ksr.batch.plan.FileResult` whose ``reason`` is one line —
and the local loop over the plan (:func:`run_batch`). The Ray path
(:mod:`op4ksr.batch.cluster`) and a web server call the same :func:`process_item`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from op4ksr.batch.plan import BatchOptions, BatchPlan, FileResult, WorkItem
from op4ksr.io.images import ImageError
from op4ksr.utils.errors import one_line
from op4ksr.utils.names import json_safe, with_raw_names

REPORT_SCHEMA = "op4ksr.upscale/1"


@dataclass
class BatchReport:
    results: list[FileResult]
    stale_temps_removed: int = 0
    seconds: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM; the results say which files were done

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def summary(self) -> dict[str, Any]:
        return {
            "total": len(self.results),
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "stale_temps_removed": self.stale_temps_removed,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
        }

    def to_json_dict(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """The report document: every string valid Unicode; a path that is not valid UTF-8 is
        shown with ``\\xNN`` escapes and its exact bytes are in ``input_raw``/``output_raw``
        (base64), see docs/UPSCALE.md."""
        return {
            "schema": REPORT_SCHEMA,
            **json_safe(meta or {}),
            "summary": self.summary(),
            "files": [with_raw_names(r.to_dict(), ("input", "output")) for r in self.results],
        }


def remove_stale_temps(plan: BatchPlan) -> int:
    """Delete the leftovers found while planning; returns how many were removed."""
    removed = 0
    for path in plan.stale_temps:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


# ----------------------------------------------------------------------------- running


def process_item(upscaler: Any, item: WorkItem, options: BatchOptions) -> FileResult:
    """Upscale one file; every failure becomes a one-line ``reason`` (the batch goes on).

    KeyboardInterrupt is not caught: the atomic write removes its temporary file and the
    whole run stops.
    """
    from op4ksr.api import memory_plan_error

    start = time.perf_counter()
    plan_error = memory_plan_error()

    def failed(reason: str) -> FileResult:
        return FileResult(item.label, str(item.output), "failed", reason, seconds=time.perf_counter() - start)

    try:
        outcome = upscaler.upscale_file(
            item.source,
            item.output,
            scale=options.scale,
            fmt=options.fmt,
            quality=options.quality,
            png_compression=options.png_compression,
            overwrite=options.existing == "overwrite",
            tiled=options.tiled,
            max_pixels=options.max_pixels,
        )
    except ImageError as exc:
        return failed(exc.reason)
    except FileExistsError as exc:
        if item.output.exists() and not item.output.is_dir():
            return failed("output exists (use --overwrite or --skip-existing)")
        return failed(f"cannot write output ({one_line(exc)})")  # e.g. a file where its folder goes
    except plan_error as exc:
        return failed(f"too large for this device: {one_line(exc)}")
    except MemoryError:
        return failed("out of host memory")
    except OSError as exc:
        return failed(f"cannot write output ({one_line(exc)})")
    except Exception as exc:  # a bad file must not stop the batch  # noqa: BLE001
        return failed(f"{type(exc).__name__}: {one_line(exc)}")
    # Success only once the file is really there (users have been told "done" for no file).
    if not item.output.is_file() or item.output.stat().st_size == 0:
        return failed("output missing after write")
    return FileResult(
        item.label,
        str(item.output),
        "done",
        None,
        outcome.input_size,
        outcome.output_size,
        outcome.notes,
        time.perf_counter() - start,
        outcome.timings or None,
    )


def run_batch(
    plan: BatchPlan,
    process: Callable[[WorkItem], FileResult],
    *,
    on_result: Callable[[FileResult], None] | None = None,
) -> BatchReport:
    """Run ``process`` over the plan's items (stale temps removed first); collect the report."""
    start = time.perf_counter()
    removed = remove_stale_temps(plan)
    results = list(plan.preflight)
    for i, item in enumerate(plan.items):
        try:
            result = process(item)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the write in progress removed its temporary
            results.append(FileResult(item.label, str(item.output), "failed", "interrupted; no output written",
                                      seconds=0.0))
            results.extend(FileResult(rest.label, str(rest.output), "skipped", "not started (interrupted)")
                           for rest in plan.items[i + 1:])
            return BatchReport(results, removed, time.perf_counter() - start, interrupted=True)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return BatchReport(results, removed, time.perf_counter() - start)


def interrupted_report(plan: BatchPlan, seconds: float = 0.0) -> BatchReport:
    """The report of a batch stopped before (or without knowing) which files were done."""
    results = [*plan.preflight, *(FileResult(i.label, str(i.output), "skipped", "not started (interrupted)")
                                  for i in plan.items)]
    return BatchReport(results, 0, seconds, interrupted=True)


def report_from_results(plan: BatchPlan, results: Iterable[FileResult], removed: int, seconds: float) -> BatchReport:
    """Assemble a report from results computed elsewhere (the Ray path)."""
    return BatchReport([*plan.preflight, *results], removed, seconds)
