"""Shared fixtures for the data tests: small real photos (scikit-image), bad files, and a tiny
OpenAI-compatible chat server on 127.0.0.1 for stage (iii) (stdlib only)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from data_test_images import PHOTOS, blurred
from PIL import Image
from skimage import data


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos, their blurred copies, a flat and a gradient image, a truncated JPEG, a text '.png'."""
    folder = tmp_path_factory.mktemp("mixed")
    for name in PHOTOS:
        rgb = getattr(data, name)()
        Image.fromarray(rgb).save(folder / f"{name}.png")
        Image.fromarray(blurred(rgb, 3.0)).save(folder / f"{name}_blurred.png")
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(folder / "flat.png")
    ramp = np.tile(np.linspace(0, 255, 400), (300, 1)).round().astype(np.uint8)
    Image.fromarray(np.stack([ramp] * 3, -1)).save(folder / "gradient.png")
    jpeg = folder / "whole.jpg"
    Image.fromarray(data.coffee()).save(jpeg, quality=90)
    raw = jpeg.read_bytes()
    jpeg.unlink()
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (folder / "notes.png").write_text("this is not an image\n")
    (folder / "readme.txt").write_text("not listed: not an image extension\n")
    return folder


Behaviour = Callable[[int], tuple[str, float]]  # request number -> (reply content, delay seconds)


class FakeVLM:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()


@contextmanager
def fake_vlm(behaviour: Behaviour) -> Iterator[tuple[str, FakeVLM]]:
    state = FakeVLM(behaviour)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                n = len(state.requests)
                state.requests.append(body)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                content, delay = state.behaviour(n)
                time.sleep(delay)
                reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (time-out test)
            finally:
                with state.lock:
                    state.in_flight -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def vlm_server() -> Callable[[Behaviour], object]:
    """``with vlm_server(behaviour) as (url, state): ...``"""
    return fake_vlm
