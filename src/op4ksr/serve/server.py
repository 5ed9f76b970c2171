"""``op4ksr serve``: a local web page and JSON API over loaded models (standard library only).

Endpoints (all JSON unless noted; errors are ``{"error": "<file>: <reason>"}``):

| method | path | what |
|---|---|---|
| GET | ``/`` , ``/static/NAME`` | the page (package data ``serve/static/*``) |
| GET | ``/api/info`` | models, scales, upload and pixel limits |
| POST | ``/api/jobs?name=FILE&scale=N&model=M&fidelity=F`` | body = the image bytes → 202 ``{id, state, position}`` |
| GET | ``/api/jobs`` , ``/api/jobs/ID`` | job states: queued / running / done / failed (+ ``error``) |
| GET | ``/api/jobs/ID/before.png`` , ``/api/jobs/ID/result.png`` | the input as 8-bit PNG; the result |
| DELETE | ``/api/jobs/ID`` | forget a job that is not running, with its files |

Uploads are checked when they arrive, the way ``op4ksr upscale`` checks files: size in
bytes (413), empty / not an image / zero-sized / over ``max_pixels`` (400, 413), and the
memory planner's refusal (413), all before anything is queued. Decoding errors found later
(a truncated file) fail the job with the same one-line reason.

No authentication: the server binds to 127.0.0.1 by default and is meant for one user's
machine (docs/SECURITY.md). Every request must name an allowed host (the bound address,
``localhost`` and the names given with ``--allow-host``), which defeats DNS rebinding; POSTs
and DELETEs from another web origin are refused so that a page open in the same browser cannot
queue work on it. Sockets time out, and at most ``max_connections`` are served at once.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import re
import secrets
import shutil
import socket
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from op4ksr.io.images import DEFAULT_MAX_PIXELS, ImageError, open_checked
from op4ksr.serve.jobs import DONE, RUNNING, Job, JobStore, ModelWorker, QueueFull, failure_reason
from op4ksr.utils.errors import one_line

_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# An over-limit body up to this much larger than the limit is read and thrown away, so that
# the client (which sends the whole body before reading) gets a clean 413 instead of a reset.
_DRAIN_SLACK_BYTES = 4 * 2**20
_CHUNK = 2**16
_JOB_PATH = re.compile(r"^/api/jobs/([0-9a-f]{16})(?:/(before\.png|result\.png))?$")
# RFC 9110: Content-Length = 1*DIGIT. Python's int() also takes "-1", "+100", "1_000", " 7 ".
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'"


@dataclass
class ServeConfig:
    """Server settings. ``port=0`` picks a free port (see ``server.server_address``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    scale: int = 4  # the scale the page offers first
    max_upload_bytes: int = 50 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pending: int = 8  # waiting jobs per model; more are refused with 503
    keep_jobs: int = 16  # finished jobs (and their files) kept for the page
    work_dir: Path | None = None  # None: a temporary folder, removed when the server closes
    allow_hosts: tuple[str, ...] = ()  # host names accepted besides the bound address and localhost
    socket_timeout_s: float = 20.0  # an idle or stalled connection is closed after this long
    max_connections: int = 32  # served at once; more are answered 503 and closed at once


def parse_content_length(raw: str | None) -> int | None:
    """A Content-Length header as a byte count; None when absent; ValueError when malformed."""
    if raw is None:
        return None
    if not _CONTENT_LENGTH.fullmatch(raw.strip(" \t")):
        raise ValueError(f"bad Content-Length {raw!r}")
    return int(raw.strip(" \t"))


def allowed_hosts(config: ServeConfig, bound_host: str) -> frozenset[str]:
    """Host names (lower case, IPv6 without brackets) that requests may name in ``Host``."""
    names = {*LOOPBACK_NAMES, bound_host.lower().strip("[]"), *(h.lower().strip("[]") for h in config.allow_hosts)}
    if bound_host in ("0.0.0.0", "::", ""):  # all interfaces: this machine's name is fine too
        names.add(socket.gethostname().lower())
    return frozenset(names)


def split_host(value: str) -> tuple[str, int | None]:
    """``"name:8000"`` / ``"[::1]:8000"`` / ``"name"`` → (name, port); ValueError if malformed."""
    value = value.strip().lower()
    match = re.fullmatch(r"\[([0-9a-f:.]+)\](?::([0-9]{1,5}))?|([^:\[\]/@\s]+)(?::([0-9]{1,5}))?", value)
    if not match or not value:
        raise ValueError(f"bad Host {value!r}")
    if match.group(1) is not None:
        ipaddress.IPv6Address(match.group(1))  # raises ValueError
        return match.group(1), int(match.group(2)) if match.group(2) else None
    return match.group(3), int(match.group(4)) if match.group(4) else None


class HTTPError(Exception):
    """A request refused with ``status`` and a one-line ``message``."""

    def __init__(self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def check_work_dir(path: Path) -> None:
    """ValueError (one line) unless ``path`` is, or can become, a folder this process can write
    job folders into: a file, a read-only folder or a missing parent is named as such."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=".op4ksr-probe-", dir=path)).rmdir()
    except FileExistsError:
        raise ValueError(f"work dir {path}: exists and is not a folder") from None
    except OSError as exc:
        raise ValueError(f"work dir {path}: cannot create job folders there ({exc.strerror or one_line(exc)})") from None


def storage_error(name: str, exc: OSError) -> HTTPError:
    """An upload the server could not store: 507 for a full disk or quota, 500 otherwise."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    status = HTTPStatus.INSUFFICIENT_STORAGE if full else HTTPStatus.INTERNAL_SERVER_ERROR
    return HTTPError(status, f"{name}: the server cannot store the upload ({exc.strerror or one_line(exc)}); "
                             "nothing was kept")


def clean_name(raw: str | None) -> str:
    """A display-safe base name for an uploaded file (no folders, no control characters)."""
    text = unicodedata.normalize("NFC", raw or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()
    return text[:200] or "upload"


def _upload_suffix(name: str) -> str:
    # Kept only so that format hints by extension (HEIC) still work; never a path component.
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


class ServeApp:
    """The server's state: one :class:`ModelWorker` per model and the job store."""

    def __init__(
        self,
        models: Mapping[str, Any],
        config: ServeConfig,
        *,
        on_finish: Callable[[Job], None] | None = None,
    ):
        if not models:
            raise ValueError("at least one model is needed")
        self.config = config
        self.default_model = next(iter(models))
        self.default_scale = models[self.default_model].check_scale(config.scale)  # before any thread starts
        self._own_dir = config.work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="op4ksr-serve-")) if self._own_dir else Path(config.work_dir)
        check_work_dir(self.work_dir)
        self.store = JobStore(config.keep_jobs)
        def finished(job: Job) -> None:
            self.store.evict()  # --keep-jobs holds between uploads too
            if on_finish is not None:
                on_finish(job)

        self.workers = {
            label: ModelWorker(label, upscaler, max_pending=config.max_pending, max_pixels=config.max_pixels,
                               on_finish=finished)
            for label, upscaler in models.items()
        }

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close(timeout=60)
        for job in self.store.all():
            with contextlib.suppress(OSError):  # closing goes on; the work dir's own removal follows
                self.store.remove(job.id)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- API -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "models": [
                {"name": label, "native_scale": w.upscaler.native_scale,
                 "device": str(getattr(w.upscaler.pipe, "device", "")),
                 "scales": list(range(2, w.upscaler.native_scale + 1)),
                 # the model's default fidelity (compensation strength or pixel-path blend); None: no knob
                 "fidelity": (float(getattr(w.upscaler.pipe.config, "fidelity", 1.0))
                              if getattr(w.upscaler.pipe, "has_fidelity_knob", False) else None)}
                for label, w in self.workers.items()
            ],
            "default_model": self.default_model,
            "default_scale": self.default_scale,
            "max_upload_bytes": self.config.max_upload_bytes,
            "max_pixels": self.config.max_pixels,
        }

    def job_json(self, job: Job) -> dict[str, Any]:
        state, position = self.workers[job.model].status(job)
        document: dict[str, Any] = {
            "id": job.id,
            "name": job.name,
            "model": job.model,
            "scale": job.scale,
            "fidelity": job.fidelity,
            "state": state,
            "position": position,
            "error": job.error,
            "input_size": job.input_size,
            "output_size": job.output_size,
            "notes": job.notes,
            "created": job.created,
            "started": job.started,
            "finished": job.finished,
            "expected_s": job.expected_s,
        }
        if job.input_size is not None:
            document["before_url"] = f"/api/jobs/{job.id}/before.png"
        if state == DONE:
            document["result_url"] = f"/api/jobs/{job.id}/result.png"
            document["download_name"] = job.download_name
        return document

    def submit(self, body_path: Path, name: str, model: str | None, scale: str | None,
               fidelity: str | None = None) -> Job:
        """Check a stored upload and queue it; raises :class:`HTTPError` (the file is then removed)."""
        label = model or self.default_model
        worker = self.workers.get(label)
        if worker is None:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"unknown model {label!r}; choose one of {sorted(self.workers)}")
        try:
            factor = worker.upscaler.check_scale(_scale_value(scale) if scale is not None else self.default_scale)
            strength = None if fidelity is None else _fidelity_value(fidelity)
            if strength is not None and not getattr(worker.upscaler.pipe, "has_fidelity_knob", False):
                raise ValueError(f"model {label!r} has no fidelity knob (no compensation or pixel path): "
                                 "fidelity does not apply")
            with open_checked(body_path, self.config.max_pixels) as image:
                width, height = image.size
            # The planner's estimate, before queueing: refuse early rather than fail after a wait.
            worker.upscaler.check_fits(width, height)
        except ImageError as exc:
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if "exceeds the limit" in exc.reason else HTTPStatus.BAD_REQUEST
            message = exc.reason.replace("raise it with --max-pixels", "the server's --max-pixels")
            raise HTTPError(status, f"{name}: {message}") from None
        except ValueError as exc:  # int() of a bad scale, or check_scale
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: {one_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - the planner's MemoryPlanError (its class is optional)
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{name}: {failure_reason(exc)}") from None
        job_id = body_path.parent.name
        job = Job(id=job_id, name=name, model=label, scale=factor, folder=body_path.parent, input_path=body_path,
                  fidelity=strength)
        try:
            worker.submit(job)
        except QueueFull as exc:
            raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), {"Retry-After": "10"}) from None
        self.store.add(job)
        return job

    def new_upload_path(self, name: str) -> Path:
        # recreated when gone (a /tmp cleaner removes idle folders); the next upload then works again
        self.work_dir.mkdir(parents=True, exist_ok=True)
        job_id = secrets.token_hex(8)
        folder = self.work_dir / job_id
        folder.mkdir()
        return folder / f"input{_upload_suffix(name)}"

    def delete(self, job: Job) -> None:
        worker = self.workers[job.model]
        # cancel() and status() each hold the worker's lock: a job cannot start in between unseen.
        if not worker.cancel(job) and worker.status(job)[0] == RUNNING:
            raise HTTPError(HTTPStatus.CONFLICT, f"{job.name}: is running; it cannot be removed now")
        try:
            self.store.remove(job.id)
        except OSError as exc:
            raise HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR,
                            f"{job.name}: its files could not be removed ({exc.strerror or one_line(exc)})") from None


class OP4KSRServer(ThreadingHTTPServer):
    """A threading HTTP server holding a :class:`ServeApp`; ``server_close`` also closes the app.

    At most ``config.max_connections`` connections get a thread; the next ones are answered
    503 and closed at once, so that idle or slow sockets cannot pile up threads and memory.
    """

    daemon_threads = True

    def __init__(self, app: ServeApp):
        self.app = app
        self._slots = threading.BoundedSemaphore(app.config.max_connections)
        super().__init__((app.config.host, app.config.port), _Handler)
        self.allowed_hosts = allowed_hosts(app.config, str(self.server_address[0]))

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                body = b'{"error": "too many connections; try again later"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        self.app.close()


def make_server(
    models: Mapping[str, Any], config: ServeConfig | None = None, *, on_finish: Callable[[Job], None] | None = None
) -> OP4KSRServer:
    """Bind a server over ``models`` ({label: Upscaler}); call ``serve_forever()`` to run it.

    Raises ``OSError`` when the address cannot be bound (port in use); the app is closed then.
    """
    app = ServeApp(models, config or ServeConfig(), on_finish=on_finish)
    try:
        return OP4KSRServer(app)
    except BaseException:
        app.close()
        raise


def static_bytes(name: str) -> bytes | None:
    """A file from the package's ``serve/static`` folder, or None (names are not paths)."""
    if not re.fullmatch(r"[a-z0-9_-]+\.[a-z]+", name):
        return None
    resource = resources.files("op4ksr.serve").joinpath("static", name)
    return resource.read_bytes() if resource.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    server: OP4KSRServer
    protocol_version = "HTTP/1.1"
    server_version = "op4ksr-serve"

    def version_string(self) -> str:
        return self.server_version  # not the Python version (the standard library appends it)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (malformed request line, unknown method, …) as
        the one-line JSON every other error uses, instead of its HTML page."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._send_json({"error": message or status.phrase}, status)

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: refuse what the headers already decide (host, origin,
        length, size) with the final answer instead of inviting the body first."""
        try:
            self._check_request_headers()
            if self.command == "POST":
                self._check_origin()
                self._declared_length(self._upload_name())
        except HTTPError as exc:
            self.close_connection = True  # the body was never invited: nothing to drain
            self._send_json({"error": exc.message}, exc.status, exc.headers)
            return False
        return super().handle_expect_100()

    def setup(self) -> None:
        # socketserver applies `timeout` to the connection: every read and write, headers and body
        self.timeout = self.server.app.config.socket_timeout_s
        super().setup()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except TimeoutError:  # an idle keep-alive or a stalled client: drop the connection
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # The library never prints; request lines go to logging for whoever wants them.
        import logging

        logging.getLogger("op4ksr.serve").debug("%s " + format, self.address_string(), *args)

    # --- dispatch --------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def do_DELETE(self) -> None:
        self._dispatch(self._delete)

    def _not_allowed(self, path: str, query: dict[str, list[str]]) -> None:
        raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here",
                        {"Allow": "GET, POST, DELETE"})

    def do_HEAD(self) -> None:
        self._dispatch(self._not_allowed)

    do_OPTIONS = do_PUT = do_PATCH = do_TRACE = do_CONNECT = do_HEAD

    def _dispatch(self, handler: Callable[[str, dict[str, list[str]]], None]) -> None:
        url = urlsplit(self.path)
        try:
            self._check_request_headers()
            handler(url.path, parse_qs(url.query))
        except HTTPError as exc:
            self._send_json({"error": exc.message}, exc.status, exc.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # whatever broke, the client gets one JSON line, the server goes on
            import logging

            logging.getLogger("op4ksr.serve").exception("request %s failed", self.path)
            self.close_connection = True
            self._send_json({"error": f"internal error: {failure_reason(exc)}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    # --- routes ----------------------------------------------------------------------------
    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        app = self.server.app
        if path in ("/", "/index.html"):
            path = "/static/index.html"
        if path.startswith("/static/"):
            body = static_bytes(path.removeprefix("/static/"))
            if body is None:
                raise HTTPError(HTTPStatus.NOT_FOUND, f"{path}: no such file")
            content_type = _STATIC_TYPES.get(Path(path).suffix, "application/octet-stream")
            self._send(body, HTTPStatus.OK, content_type, {"Content-Security-Policy": _PAGE_CSP})
            return
        if path == "/api/info":
            self._send_json(app.info())
            return
        if path == "/api/jobs":
            self._send_json({"jobs": [app.job_json(job) for job in app.store.all()]})
            return
        job, part = self._job(path)
        if part is None:
            self._send_json(app.job_json(job))
            return
        file = job.preview_path if part == "before.png" else job.result_path
        if part == "result.png" and job.state != DONE:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"{job.name}: no result yet (state: {job.state})")
        try:
            body = file.read_bytes()
        except FileNotFoundError:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"{job.name}: {part} not ready") from None
        headers = {"Cache-Control": "no-store"}
        if part == "result.png":
            disposition = "attachment" if query.get("download") else "inline"
            headers["Content-Disposition"] = _content_disposition(disposition, job.download_name)
        self._send(body, HTTPStatus.OK, "image/png", headers)

    def _post(self, path: str, query: dict[str, list[str]]) -> None:
        app = self.server.app
        self._check_origin()
        if path != "/api/jobs":
            raise HTTPError(HTTPStatus.NOT_FOUND, f"{path}: no such endpoint")
        name = self._upload_name()
        body_path = self._receive_upload(name)
        try:
            job = app.submit(body_path, name, _first(query, "model"), _first(query, "scale"),
                             _first(query, "fidelity"))
        except HTTPError:
            shutil.rmtree(body_path.parent, ignore_errors=True)
            raise
        self._send_json(app.job_json(job), HTTPStatus.ACCEPTED, {"Location": f"/api/jobs/{job.id}"})

    def _delete(self, path: str, query: dict[str, list[str]]) -> None:
        self._check_origin()
        job, part = self._job(path)
        if part is not None:
            raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path}: cannot be deleted")
        self.server.app.delete(job)
        self._send(b"", HTTPStatus.NO_CONTENT, "text/plain")

    # --- helpers ---------------------------------------------------------------------------
    def _job(self, path: str) -> tuple[Job, str | None]:
        match = _JOB_PATH.match(path)
        job = self.server.app.store.get(match.group(1)) if match else None
        if match is None or job is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"{path}: no such job (finished jobs are kept only for a while)")
        return job, match.group(2)

    def _check_request_headers(self) -> None:
        """One Host and at most one Content-Length: a proxy and this server reading different
        copies is request smuggling. Then the Host check."""
        for header in ("Host", "Content-Length", "Transfer-Encoding"):
            if len(self.headers.get_all(header) or []) > 1:
                self.close_connection = True
                raise HTTPError(HTTPStatus.BAD_REQUEST, f"more than one {header} header; refused")
        self._check_host()

    def _upload_name(self) -> str:
        return clean_name(_first(parse_qs(urlsplit(self.path).query), "name") or self.headers.get("X-Filename"))

    def _check_host(self) -> None:
        """Refuse requests that do not name this server (DNS rebinding: a foreign name that
        resolves to 127.0.0.1 reaches the socket, but its Host header gives it away)."""
        raw = self.headers.get("Host")
        try:
            name, port = split_host(raw or "")
        except ValueError:
            self.close_connection = True
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"missing or bad Host header {raw!r}") from None
        if name not in self.server.allowed_hosts or (port is not None and port != self.server.server_address[1]):
            self.close_connection = True
            raise HTTPError(HTTPStatus.FORBIDDEN, f"host {raw!r} is not served here (allow it with --allow-host)")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if not origin:
            return
        parts = urlsplit(origin)
        if parts.scheme != "http" or parts.netloc.lower() != (self.headers.get("Host") or "").lower():
            raise HTTPError(HTTPStatus.FORBIDDEN, f"requests from {origin} are not accepted")

    def _declared_length(self, name: str) -> int:
        """The upload's Content-Length, or HTTPError: malformed (400), missing (411), over the limit (413)."""
        limit = self.server.app.config.max_upload_bytes
        try:
            length = parse_content_length(self.headers.get("Content-Length"))
        except ValueError as exc:
            self.close_connection = True
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: {exc}") from None
        if self.headers.get("Transfer-Encoding") or length is None:
            self.close_connection = True
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, f"{name}: the upload must state its Content-Length")
        if length > limit:
            raise HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{name}: {length:,} bytes exceeds the upload limit of {limit:,} bytes ({limit / 2**20:.2f} MiB, "
                "the server's --max-upload-mb)",
            )
        return length

    def _receive_upload(self, name: str) -> Path:
        try:
            length = self._declared_length(name)
        except HTTPError as exc:
            if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                declared = int(self.headers["Content-Length"].strip(" \t"))
                if declared <= self.server.app.config.max_upload_bytes + _DRAIN_SLACK_BYTES:
                    self._discard(declared)
                else:
                    self.close_connection = True
            raise
        remaining = length
        try:
            path = self.server.app.new_upload_path(name)
        except OSError as exc:  # the work dir cannot hold a new job folder (read-only, full, …)
            self._discard(remaining)
            raise storage_error(name, exc) from None
        try:
            with open(path, "wb") as fh:
                while remaining:
                    chunk = self.rfile.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise HTTPError(HTTPStatus.BAD_REQUEST, f"{name}: the upload ended early")
                    remaining -= len(chunk)
                    fh.write(chunk)
        except TimeoutError:
            self.close_connection = True
            shutil.rmtree(path.parent, ignore_errors=True)
            raise HTTPError(HTTPStatus.REQUEST_TIMEOUT, f"{name}: the upload stalled; nothing was kept") from None
        except OSError as exc:  # disk full, remounted read-only, folder removed while writing
            shutil.rmtree(path.parent, ignore_errors=True)
            self._discard(remaining)  # the client still gets its answer instead of a reset
            raise storage_error(name, exc) from None
        except BaseException:
            self.close_connection = True
            shutil.rmtree(path.parent, ignore_errors=True)
            raise
        return path

    def _discard(self, length: int) -> None:
        remaining = length
        with contextlib.suppress(TimeoutError):
            while remaining:
                chunk = self.rfile.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
        if remaining:
            self.close_connection = True

    def _send_json(
        self, document: Any, status: HTTPStatus = HTTPStatus.OK, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(document, ensure_ascii=False).encode("utf-8")
        self._send(body, status, "application/json; charset=utf-8", {"Cache-Control": "no-store", **(headers or {})})

    def _send(self, body: bytes, status: HTTPStatus, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":  # a HEAD answer has headers only
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


# Query numbers in plain ASCII of bounded length: Python's int()/float() also take other scripts'
# digits ("٤"), underscores, "nan"/"inf", and 5000-digit strings (with an internal error message).
_SCALE_TEXT = re.compile(r"[0-9]{1,3}")
_FIDELITY_TEXT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{0,12})?|\.[0-9]{1,12}")


def _scale_value(text: str) -> int:
    if not _SCALE_TEXT.fullmatch(text):
        raise ValueError(f"scale {text[:20]!r} is not a whole number such as 2, 3 or 4")
    return int(text)


def _fidelity_value(text: str) -> float:
    """A ``fidelity`` query value as a float in [0, 1], or ValueError with the accepted range."""
    from op4ksr.models.post_steps import check_post_steps

    if not _FIDELITY_TEXT.fullmatch(text):
        raise ValueError(f"fidelity {text[:20]!r} is not a number from 0 to 1")
    value = float(text)  # finite: the pattern has no "nan"/"inf"
    check_post_steps(None, None, value)
    return value


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _content_disposition(kind: str, filename: str) -> str:
    from urllib.parse import quote

    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace('"', "_").replace("?", "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
