"""Small helpers shared by CLI modules (error exit, size parsing)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any, NoReturn

import typer

from op4ksr.utils.names import shown


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line to stderr and exit non-zero (control characters and undecodable bytes
    of file names escaped: the line stays one line and cannot drive the terminal)."""
    typer.echo(f"error: {shown(message)}", err=True)
    raise typer.Exit(code)


def parse_size(text: str) -> tuple[int, int]:
    """``"4096x2160"`` → (4096, 2160); a clear error otherwise."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        fail(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 4096x4096")
    if w <= 0 or h <= 0:
        fail(f"--size {text!r}: width and height must be positive")
    return w, h


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`kill` (SIGTERM) stops a command like Ctrl-C: the write or build in progress removes its
    temporaries, what is finished stays, and the command reports."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
