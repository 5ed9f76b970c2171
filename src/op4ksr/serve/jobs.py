"""Upscaling jobs for the web server: one worker thread per model, jobs run one at a time.

A model holds most of the accelerator's memory while it runs, so two jobs on one model at
once would only fight for it (or run out of it). Each :class:`ModelWorker` owns one loaded
:class:`~op4ksr.api.Upscaler` and a FIFO of jobs; HTTP threads only enqueue and read state.
Files live in one folder per job (upload, before-preview, result) under the server's work
folder and are deleted when the job is evicted or the server closes.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from op4ksr.utils.errors import one_line

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class QueueFull(RuntimeError):
    """The model's queue holds its maximum of pending jobs; try again later."""


@dataclass
class Job:
    """One uploaded image and what became of it. Times are ``time.time()`` seconds."""

    id: str
    name: str  # the uploaded file's name, cleaned; for messages and the download name only
    model: str
    scale: int
    folder: Path
    input_path: Path
    fidelity: float | None = None  # None: the model's own compensation strength
    state: str = QUEUED
    error: str | None = None
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    expected_s: float | None = None  # estimated run time, from this model's previous job

    @property
    def preview_path(self) -> Path:
        return self.folder / "before.png"

    @property
    def result_path(self) -> Path:
        return self.folder / "result.png"

    @property
    def download_name(self) -> str:
        return f"{Path(self.name).stem or 'image'}_x{self.scale}.png"

    @property
    def finished_state(self) -> bool:
        return self.state in (DONE, FAILED)


def preview_png(pixels: np.ndarray, alpha: np.ndarray | None) -> bytes:
    """8-bit PNG of float pixels in [0, 1] for the page's "before" view (display only: the
    browser must be able to show it whatever the upload was — TIFF, 16-bit, CMYK, HEIC)."""
    import io

    from PIL import Image

    rgb = pixels if pixels.shape[-1] == 3 else np.repeat(pixels, 3, axis=-1)
    layers = [rgb] if alpha is None else [rgb, alpha[..., None]]
    array = np.clip(np.concatenate(layers, axis=-1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB" if alpha is None else "RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def failure_reason(exc: BaseException) -> str:
    """One line for the page: the ImageError reason, the planner's refusal, or the error's first line."""
    from op4ksr.api import memory_plan_error
    from op4ksr.io.images import ImageError

    if isinstance(exc, ImageError):
        return exc.reason
    text = one_line(exc)
    if isinstance(exc, memory_plan_error()):
        return f"too large for this device: {text}"
    if isinstance(exc, (ValueError, FileExistsError)):
        return text
    return f"{type(exc).__name__}: {text}"


class ModelWorker:
    """A FIFO of jobs for one model, run one at a time by a single daemon thread."""

    def __init__(
        self,
        label: str,
        upscaler: Any,
        *,
        max_pending: int,
        max_pixels: int,
        on_finish: Callable[[Job], None] | None = None,
    ):
        self.label = label
        self.upscaler = upscaler
        self.max_pending = max_pending
        self.max_pixels = max_pixels
        self.on_finish = on_finish
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._current: Job | None = None
        # Seconds per output pixel of the last finished job: basis of the page's progress estimate.
        self._seconds_per_pixel: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"op4ksr-serve-{label}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> int:
        """Queue ``job``; returns how many jobs are ahead of it (the running one included)."""
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._pending) >= self.max_pending:
                raise QueueFull(f"model {self.label!r} already has {len(self._pending)} jobs waiting; try again later")
            self._pending.append(job)
            self._cond.notify()
            return len(self._pending) - 1 + (1 if self._running else 0)

    @property
    def _running(self) -> bool:
        return self._current is not None

    def status(self, job: Job) -> tuple[str, int | None]:
        """``job``'s state and, while queued, how many jobs are ahead of it (the running one
        included), read together so that a page never sees "queued" without a position."""
        with self._cond:
            for index, pending in enumerate(self._pending):
                if pending is job:
                    return job.state, index + (1 if self._running else 0)
            return job.state, None

    def cancel(self, job: Job) -> bool:
        """Drop a job that has not started; False if it is running or finished."""
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return False
            return True

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, drop the waiting ones and wait for the running one to end."""
        with self._cond:
            self._closing = True
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._pending.popleft()
                self._current = job
                job.state, job.started = RUNNING, time.time()
            state, error = DONE, None
            try:
                self._process(job)
            except Exception as exc:  # noqa: BLE001 - a bad image must not stop the worker
                state, error = FAILED, f"{job.name}: {failure_reason(exc)}"
            finally:
                with self._cond:
                    job.state, job.error, job.finished = state, error, time.time()
                    self._current = None
            if self.on_finish is not None:
                with contextlib.suppress(Exception):  # a reporting hook never kills the worker
                    self.on_finish(job)

    def _process(self, job: Job) -> None:
        from op4ksr.io.images import encode_image, load_image
        from op4ksr.utils.atomic import atomic_write_bytes

        data = load_image(job.input_path, max_pixels=self.max_pixels)
        job.input_size = data.size
        out_pixels = data.width * data.height * job.scale**2
        if self._seconds_per_pixel is not None:
            job.expected_s = self._seconds_per_pixel * out_pixels
        atomic_write_bytes(job.preview_path, preview_png(data.pixels, data.alpha), overwrite=True)
        start = time.perf_counter()
        result = self.upscaler.upscale_data(data, job.scale, fidelity=job.fidelity)
        # PNG keeps what the upload had (alpha, 16-bit, ICC) losslessly; notes say what it could not.
        body, save_notes = encode_image(result, "png")
        atomic_write_bytes(job.result_path, body, overwrite=True)
        self._seconds_per_pixel = (time.perf_counter() - start) / out_pixels
        job.output_size = result.size
        job.notes = list(result.notes) + list(save_notes)


class JobStore:
    """All jobs by id, oldest first; keeps at most ``keep`` finished jobs (their files too)."""

    def __init__(self, keep: int):
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job
        self.evict()

    def evict(self) -> None:
        """Forget the oldest finished jobs (and their files) beyond ``keep``; called on every
        upload and when a job finishes, so the limit holds between uploads too."""
        with self._lock:
            finished = [j for j in self._jobs.values() if j.finished_state]
            evicted = finished[: max(0, len(finished) - self.keep)]
            for old in evicted:
                del self._jobs[old.id]
        for old in evicted:
            shutil.rmtree(old.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def remove(self, job_id: str) -> Job | None:
        """Forget a job and delete its files; OSError (the job kept) when they cannot be deleted."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        with contextlib.suppress(FileNotFoundError):  # already gone (e.g. a /tmp cleaner): nothing to keep
            shutil.rmtree(job.folder)
        with self._lock:
            self._jobs.pop(job_id, None)
        return job

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())
