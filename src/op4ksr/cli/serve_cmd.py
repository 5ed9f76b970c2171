"""``op4ksr serve``: the local web page (drop an image, watch it, compare, download).

See docs/SERVE.md. The server logic lives in ``op4ksr.serve``; this module loads the models,
binds, reports one line per finished job and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from op4ksr.cli.common import fail
from op4ksr.io.limits import DEFAULT_MAX_PIXELS
from op4ksr.utils.names import shown

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on. The default 127.0.0.1 is reachable only from this "
                     "computer; there is no authentication, so bind elsewhere only on a network you trust."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0 = any free port).")] = 8000,
    models: Annotated[
        list[str] | None,
        typer.Option("--model", help="'compact' (bundled, default) or a model folder; repeat to offer several "
                     "(each runs one job at a time, with its own queue)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, fp16, bf16.")
    ] = None,
    scale: Annotated[int, typer.Option("-s", "--scale", min=2, max=4, help="Scale the page offers first.")] = 4,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Refuse uploads larger than this (MB = 2^20 bytes).")
    ] = 50.0,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse inputs with more pixels (decompression-bomb limit).")
    ] = DEFAULT_MAX_PIXELS,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Jobs that may wait per model; more are refused (HTTP 503).")
    ] = 8,
    keep_jobs: Annotated[
        int, typer.Option("--keep-jobs", min=1, help="Finished jobs (and their files) kept for the page.")
    ] = 16,
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="Folder for uploads and results (default: a temporary folder, "
                     "removed on exit)."),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option("--allow-host", help="A host name requests may use besides the bound address and localhost "
                     "(e.g. the name a reverse proxy forwards); repeatable."),
    ] = None,
) -> None:
    """Serve a local web page: drop images, watch progress, compare before/after, download."""
    from op4ksr.api import ModelLoadError, Upscaler
    from op4ksr.serve import ServeConfig, make_server
    from op4ksr.serve.server import check_work_dir

    if work_dir is not None:  # before the models load: a file or read-only folder is not a port problem
        try:
            check_work_dir(work_dir)
        except ValueError as exc:
            fail(f"--work-dir: {exc}", 2)
    labels = list(dict.fromkeys(models or ["compact"]))
    upscalers: dict[str, Any] = {}
    for label in labels:
        try:
            name = _display_label(label)
            upscaler = Upscaler(None if label == "compact" else label, device=device, dtype=dtype)
            upscalers[label if name in upscalers else name] = upscaler  # two folders named alike
        except (ModelLoadError, ValueError) as exc:
            fail(str(exc), 2)
    config = ServeConfig(
        host=host, port=port, scale=scale, max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
        max_pending=max_queue, keep_jobs=keep_jobs, work_dir=work_dir, allow_hosts=tuple(allow_host or ()),
    )
    try:
        server = make_server(upscalers, config, on_finish=_report_job)
    except ValueError as exc:  # e.g. a scale the model cannot do
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another with --port)", 2)
    typer.echo(f"op4ksr: serving {', '.join(upscalers)} on {server.url}  (Ctrl-C to stop)", err=True)
    if host not in _LOOPBACK:
        typer.echo("warning: listening beyond this computer; anyone who can reach it can use it (no authentication)",
                   err=True)
    # `kill` (SIGTERM) and Ctrl-C stop the serving loop from a helper thread instead of raising
    # KeyboardInterrupt at an arbitrary point: raised inside a connection's thread start, it was
    # swallowed by socketserver's error handler (and released the connection slot twice), and the
    # server kept running. The temporary folder is removed either way.
    stop = _stopper(server)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.5)
        typer.echo("op4ksr: stopping", err=True)
    except KeyboardInterrupt:  # a signal before the handlers were set
        typer.echo("op4ksr: stopping", err=True)
    finally:
        server.server_close()


def _stopper(server: Any):
    """A signal handler that ends ``server.serve_forever`` (shutdown must run in another thread)."""
    import threading

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, name="op4ksr-serve-stop", daemon=True).start()

    return stop


def _display_label(model: str) -> str:
    return model if model == "compact" else Path(model).name or model


def _report_job(job: Any) -> None:
    if job.error:
        typer.echo(f"error: {shown(job.error)}", err=True)
        return
    (w, h), (ow, oh) = job.input_size, job.output_size
    typer.echo(f"done: {shown(job.name)} {w}×{h} → {ow}×{oh} in {job.finished - job.started:.1f} s", err=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
