"""`op4ksr serve` under attack and misuse, with raw sockets (issue: hostile inputs)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from op4ksr.serve.server import parse_content_length, split_host


def raw_request(server, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send ``head`` (request line + headers, without the blank line) and ``body``; read the reply."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_blob, _, rest = data.partition(b"\r\n\r\n")
        lines = header_blob.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:length]


def _post_head(port: int, length: str, host: str | None = None, extra: str = "") -> str:
    return (f"POST /api/jobs?name=x.png HTTP/1.1\nHost: {host or f'127.0.0.1:{port}'}\n"
            f"Content-Type: application/octet-stream\nContent-Length: {length}{extra}")


@pytest.mark.parametrize("length", ["-1", "+100", "1_000", "0x10", "1e3", "", "12 34"])
def test_malformed_content_length_is_refused_before_reading(serve_factory, length):
    running = serve_factory(max_upload_bytes=1000)
    port = running.server.server_address[1]
    status, _, body = raw_request(running.server, _post_head(port, length), b"\x89PNG" + b"a" * 2000)
    assert status == 400
    assert "bad Content-Length" in json.loads(body)["error"]
    assert list(running.server.app.work_dir.iterdir()) == []


def test_content_length_parser():
    assert parse_content_length("123") == 123 and parse_content_length(" 7\t") == 7
    assert parse_content_length(None) is None
    for bad in ("-1", "+1", "1_0", "", "١٢"):  # the last: Arabic-Indic digits, which int() accepts
        with pytest.raises(ValueError):
            parse_content_length(bad)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost.evil.example"])
def test_foreign_host_is_refused_even_with_a_matching_origin(serve_factory, png_bytes, host):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1."""
    running = serve_factory()
    port = running.server.server_address[1]
    host = host.format(port=port)
    body = png_bytes(8, 8)
    head = _post_head(port, str(len(body)), host=host, extra=f"\nOrigin: http://{host}")
    status, _, reply = raw_request(running.server, head, body)
    assert status == 403 and "is not served here" in json.loads(reply)["error"]
    for path in ("/api/jobs", "/api/info"):
        status, _, _ = raw_request(running.server, f"GET {path} HTTP/1.1\nHost: {host}")
        assert status == 403
    assert running.server.app.store.all() == [] and list(running.server.app.work_dir.iterdir()) == []


def test_allowed_names_and_the_origin_scheme(serve_factory, png_bytes):
    running = serve_factory(allow_hosts=("photos.lan",))
    port = running.server.server_address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"photos.lan:{port}", "localhost"):
        status, _, _ = raw_request(running.server, f"GET /api/info HTTP/1.1\nHost: {host}")
        assert status == 200, host
    assert raw_request(running.server, "GET /api/info HTTP/1.1")[0] == 400  # no Host at all
    body = png_bytes(8, 8)
    head = _post_head(port, str(len(body)), extra=f"\nOrigin: https://127.0.0.1:{port}")  # scheme differs
    status, _, reply = raw_request(running.server, head, body)
    assert status == 403 and "not accepted" in json.loads(reply)["error"]


def test_split_host():
    assert split_host("LocalHost:8000") == ("localhost", 8000)
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("photos.lan") == ("photos.lan", None)
    for bad in ("", "a b", "user@host", "[zz]:1", "host:99999999"):
        with pytest.raises(ValueError):
            split_host(bad)


def test_stalled_upload_times_out_and_leaves_nothing(serve_factory):
    running = serve_factory(socket_timeout_s=0.5)
    host, port = running.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        head = _post_head(port, "5000").replace("\n", "\r\n").encode() + b"\r\n\r\n"
        sock.sendall(head + b"\x89PNG")  # then nothing more
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            data += chunk
    assert b" 408 " in data.split(b"\r\n")[0] and b"stalled" in data
    time.sleep(0.2)
    assert list(running.server.app.work_dir.iterdir()) == []


def test_idle_sockets_are_bounded_and_others_still_served(serve_factory):
    running = serve_factory(socket_timeout_s=30, max_connections=8)
    host, port = running.server.server_address[:2]
    before = threading.active_count()
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(40)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= 8  # one thread per served connection, at most
        # the ones beyond the limit got a 503 and were closed
        refused = 0
        for sock in idle[8:]:
            sock.settimeout(2)
            refused += sock.recv(200).startswith(b"HTTP/1.1 503")
        assert refused == 32
    finally:
        for sock in idle:
            sock.close()
    # once the idle ones are gone, a normal client is answered promptly
    start = time.monotonic()
    deadline = start + 5
    while True:
        try:
            status, _, _ = raw_request(running.server, f"GET /api/info HTTP/1.1\nHost: 127.0.0.1:{port}")
        except OSError:
            status = 0
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200


def test_finished_jobs_beyond_keep_are_evicted_without_a_new_upload(serve_factory, png_bytes, wait_until):
    running = serve_factory(keep_jobs=1)
    port = running.server.server_address[1]
    ids = []
    for i in range(3):
        body = png_bytes(8, 8, seed=i)
        status, _, reply = raw_request(running.server, _post_head(port, str(len(body))), body)
        assert status == 202
        ids.append(json.loads(reply)["id"])
    wait_until(lambda: all(j.finished_state for j in running.server.app.store.all()))
    wait_until(lambda: len(running.server.app.store.all()) == 1)
    assert [j.id for j in running.server.app.store.all()] == ids[-1:]
    # the evicted jobs' folders go right after they leave the store
    wait_until(lambda: sorted(p.name for p in running.server.app.work_dir.iterdir()) == ids[-1:])


def test_413_message_states_the_exact_limit(serve_factory):
    running = serve_factory(max_upload_bytes=50 * 2**20)
    port = running.server.server_address[1]
    status, _, body = raw_request(running.server, _post_head(port, str(50 * 2**20 + 1 + 8 * 2**20)))
    assert status == 413
    assert "52,428,801" not in json.loads(body)["error"]  # the stated length is what was sent
    assert "exceeds the upload limit of 52,428,800 bytes" in json.loads(body)["error"]


# --- round 2 (issue 24) -----------------------------------------------------------------------
def _post(running, body: bytes, extra: str = "", query: str = "name=x.png"):
    port = running.server.server_address[1]
    head = (f"POST /api/jobs?{query} HTTP/1.1\nHost: 127.0.0.1:{port}\n"
            f"Content-Type: application/octet-stream\nContent-Length: {len(body)}{extra}")
    return raw_request(running.server, head, body)


def _one_line_json(reply: bytes) -> str:
    assert b"\n" not in reply.strip()
    return json.loads(reply)["error"]


def test_a_removed_work_dir_is_recreated_and_uploads_go_on(serve_factory, png_bytes):
    import shutil

    running = serve_factory()
    shutil.rmtree(running.server.app.work_dir)  # what a /tmp cleaner does to an idle server
    status, _, reply = _post(running, png_bytes(8, 8))
    assert status == 202, reply
    assert running.server.app.work_dir.is_dir()


class _FullDisk:
    """A file whose first write fails the way a full disk does."""

    def __init__(self, path, mode):
        self._fh = open(path, mode)  # noqa: SIM115 - closed in __exit__, like the file it stands in for

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def write(self, data):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_answers_507_keeps_nothing_and_the_server_recovers(serve_factory, png_bytes, monkeypatch):
    from op4ksr.serve import server as server_module

    running = serve_factory()
    monkeypatch.setattr(server_module, "open", _FullDisk, raising=False)
    status, headers, reply = _post(running, png_bytes(64, 64))
    assert status == 507 and headers["content-type"].startswith("application/json")
    assert "x.png: the server cannot store the upload (No space left on device)" in _one_line_json(reply)
    assert list(running.server.app.work_dir.iterdir()) == []
    monkeypatch.undo()
    status, _, _ = _post(running, png_bytes(8, 8))
    assert status == 202


def test_a_read_only_work_dir_answers_500_and_the_server_goes_on(serve_factory, png_bytes, monkeypatch):
    import errno

    running = serve_factory()
    app = running.server.app

    def read_only(name):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(app, "new_upload_path", read_only)
    status, _, reply = _post(running, png_bytes(8, 8))
    assert status == 500 and "cannot store the upload (Read-only file system)" in _one_line_json(reply)
    monkeypatch.undo()
    assert _post(running, png_bytes(8, 8))[0] == 202


def test_delete_says_so_when_the_files_cannot_be_removed(serve_factory, png_bytes, wait_until, monkeypatch):
    import errno
    import shutil as shutil_module

    running = serve_factory()
    status, _, reply = _post(running, png_bytes(8, 8))
    job_id = json.loads(reply)["id"]
    wait_until(lambda: running.server.app.store.get(job_id).finished_state)

    def busy(path, *args, **kwargs):
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(shutil_module, "rmtree", busy)
    port = running.server.server_address[1]
    status, _, reply = raw_request(running.server, f"DELETE /api/jobs/{job_id} HTTP/1.1\nHost: 127.0.0.1:{port}")
    assert status == 500 and "could not be removed (Device or resource busy)" in _one_line_json(reply)
    assert running.server.app.store.get(job_id) is not None  # still listed: its files are still there
    monkeypatch.undo()
    status, _, _ = raw_request(running.server, f"DELETE /api/jobs/{job_id} HTTP/1.1\nHost: 127.0.0.1:{port}")
    assert status == 204 and running.server.app.store.get(job_id) is None


@pytest.mark.parametrize("extra,fragment", [
    ("\nHost: evil.example", "more than one Host header"),
    ("\nContent-Length: 5", "more than one Content-Length header"),
])
def test_duplicate_host_or_length_is_refused(serve_factory, png_bytes, extra, fragment):
    running = serve_factory()
    status, _, reply = _post(running, png_bytes(8, 8), extra)
    assert status == 400 and fragment in _one_line_json(reply)
    assert list(running.server.app.work_dir.iterdir()) == []


def test_expect_100_gets_the_413_before_sending_the_body(serve_factory):
    running = serve_factory(max_upload_bytes=1000)
    host, port = running.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall((f"POST /api/jobs?name=big.png HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n").encode())
        answer = b""
        while chunk := sock.recv(65536):  # the server closes: the body was never invited
            answer += chunk
    text = answer.decode("latin-1")
    assert text.startswith("HTTP/1.1 413") and "100 Continue" not in text
    assert "exceeds the upload limit of 1,000 bytes" in text


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "PATCH", "TRACE"])
def test_other_methods_get_json_405_after_the_host_check(serve_factory, method):
    running = serve_factory()
    port = running.server.server_address[1]
    if method == "HEAD":  # headers only: read them up to the blank line
        host, _ = running.server.server_address[:2]
        for sent_host, expected in (("evil.example", "403"), (f"127.0.0.1:{port}", "405")):
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(f"HEAD /api/jobs HTTP/1.1\r\nHost: {sent_host}\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(65536)
            assert head.split()[1].decode() == expected
        return
    status, headers, reply = raw_request(running.server, f"{method} /api/jobs HTTP/1.1\nHost: evil.example")
    assert status == 403
    status, headers, reply = raw_request(running.server, f"{method} /api/jobs HTTP/1.1\nHost: 127.0.0.1:{port}")
    assert status == 405 and headers["allow"] == "GET, POST, DELETE"
    assert headers["content-type"].startswith("application/json")
    assert f"{method} is not supported" in _one_line_json(reply)


def test_unknown_method_and_server_header_reveal_nothing(serve_factory):
    import platform

    running = serve_factory()
    port = running.server.server_address[1]
    status, headers, reply = raw_request(running.server, f"BREW /api/jobs HTTP/1.1\nHost: 127.0.0.1:{port}")
    assert status == 501 and headers["content-type"].startswith("application/json") and b"<html" not in reply.lower()
    status, headers, _ = raw_request(running.server, f"GET /api/info HTTP/1.1\nHost: 127.0.0.1:{port}")
    assert headers["server"] == "op4ksr-serve" and platform.python_version() not in headers["server"]


@pytest.mark.parametrize("query,fragment", [
    ("name=x.png&scale=%D9%A4", "is not a whole number"),  # Arabic-Indic 4
    ("name=x.png&scale=" + "9" * 5000, "is not a whole number"),
    ("name=x.png&fidelity=%EF%BC%90.5", "is not a number from 0 to 1"),  # fullwidth 0
    ("name=x.png&fidelity=" + "1" * 5000, "is not a number from 0 to 1"),
    ("name=x.png&fidelity=nan", "is not a number from 0 to 1"),
])
def test_numbers_are_plain_ascii_digits(serve_factory, png_bytes, query, fragment):
    running = serve_factory()
    status, _, reply = _post(running, png_bytes(8, 8), query=query)
    message = _one_line_json(reply)
    assert status == 400 and fragment in message and len(message) < 200


def test_work_dir_that_is_a_file_or_unwritable_is_named_not_the_port(tmp_path, monkeypatch):
    import errno
    import tempfile

    from typer.testing import CliRunner

    import op4ksr.api
    from op4ksr.cli import app
    from op4ksr.serve.server import check_work_dir

    loaded = []
    monkeypatch.setattr(op4ksr.api, "Upscaler", lambda *a, **k: loaded.append(a))
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["serve", "--work-dir", str(tmp_path / "file"), "--port", "0"])
    assert result.exit_code == 2 and loaded == []  # refused before any model loads
    assert f"error: --work-dir: work dir {tmp_path / 'file'}: exists and is not a folder" in result.output
    assert "port" not in result.output

    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(ValueError, match="cannot create job folders there \\(Read-only file system\\)"):
        check_work_dir(tmp_path / "ro")


def test_expect_100_still_invites_a_good_upload(serve_factory, png_bytes):
    running = serve_factory()
    host, port = running.server.server_address[:2]
    body = png_bytes(8, 8)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall((f"POST /api/jobs?name=ok.png HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202")
