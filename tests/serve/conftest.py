"""A server over the bicubic stand-in model, on a free port in a background thread."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from doubles import InterpolationPipeline
from PIL import Image

from op4ksr.api import Upscaler
from op4ksr.serve import OP4KSRServer, ServeConfig, make_server


class ConcurrencyProbe(InterpolationPipeline):
    """The stand-in model, recording how many calls overlapped and the order of calls."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __call__(self, images, tiled=False):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return super().__call__(images, tiled)
        finally:
            with self._lock:
                self.active -= 1


@dataclass
class Running:
    server: OP4KSRServer
    pipe: Any

    @property
    def url(self) -> str:
        return self.server.url


def start(pipe, label: str, **config) -> tuple[OP4KSRServer, threading.Thread]:
    server = make_server({label: Upscaler(pipe)}, ServeConfig(port=0, **config))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def serve_factory() -> Iterator:
    started: list[tuple[OP4KSRServer, threading.Thread]] = []

    def factory(delay_s: float = 0.0, pipe=None, label: str = "fake", **config) -> Running:
        """A running server over ``pipe`` (default: the stand-in, sleeping ``delay_s`` per call)."""
        pipe = ConcurrencyProbe(delay_s=delay_s) if pipe is None else pipe
        server, thread = start(pipe, label, **config)
        started.append((server, thread))
        return Running(server, pipe)

    yield factory
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def png_bytes():
    """``png_bytes(width, height, seed=0, mode="RGB")``: a random-noise PNG file's bytes."""
    return make_png


def make_png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array if channels > 1 else array[..., 0], mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def wait_until():
    """``wait_until(predicate, timeout=20)``: poll until it returns something true; returns that."""
    return poll_until


def poll_until(predicate, timeout: float = 20.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
