"""The JSON API of ``op4ksr serve`` over real HTTP (urllib), with the bicubic stand-in model."""

from __future__ import annotations

import http.client
import io
import json
import socket
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from op4ksr.serve.server import clean_name


def call(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def post_image(base: str, body: bytes, name: str = "photo.png", **params):
    query = urllib.parse.urlencode({"name": name, **params})
    status, _, raw = call("POST", f"{base}api/jobs?{query}", body, {"Content-Type": "application/octet-stream"})
    return status, json.loads(raw)


def job(base: str, job_id: str) -> dict:
    status, _, raw = call("GET", f"{base}api/jobs/{job_id}")
    assert status == 200
    return json.loads(raw)


@pytest.fixture
def wait_finished(wait_until):
    """``wait_finished(base, job_id)``: poll the job until it is done or failed; its document."""

    def wait(base: str, job_id: str) -> dict:
        return wait_until(lambda: (doc := job(base, job_id))["state"] in ("done", "failed") and doc)

    return wait


def test_info_reports_models_and_limits(serve_factory):
    running = serve_factory(max_upload_bytes=123_456, max_pixels=7_000, scale=2)
    status, _, raw = call("GET", running.url + "api/info")
    info = json.loads(raw)
    assert status == 200
    assert info["default_model"] == "fake" and info["default_scale"] == 2
    assert info["models"] == [{"name": "fake", "native_scale": 4, "device": "cpu", "scales": [2, 3, 4], "fidelity": None}]
    assert (info["max_upload_bytes"], info["max_pixels"]) == (123_456, 7_000)


def test_page_and_static_files_are_served(serve_factory):
    running = serve_factory()
    status, headers, page = call("GET", running.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="file"' in page and b"/static/app.js" in page
    assert b"http://" not in page and b"https://" not in page  # nothing fetched from elsewhere
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, _ = call("GET", f"{running.url}static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
    assert call("GET", running.url + "static/..%2Fserver.py")[0] == 404
    assert call("GET", running.url + "static/missing.js")[0] == 404


def test_good_upload_gives_the_model_output_at_4x(serve_factory, png_bytes, wait_finished):
    running = serve_factory()
    body = png_bytes(24, 16, seed=1)
    status, doc = post_image(running.url, body, "photo.png")
    assert status == 202 and doc["state"] in ("queued", "running", "done")
    done = wait_finished(running.url, doc["id"])
    assert done["state"] == "done", done
    assert (done["input_size"], done["output_size"]) == ([24, 16], [96, 64])
    assert done["download_name"] == "photo_x4.png"

    status, headers, result = call("GET", running.url + done["result_url"].lstrip("/") + "?download=1")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert 'attachment; filename="photo_x4.png"' in headers["Content-Disposition"]
    got = np.asarray(Image.open(io.BytesIO(result)).convert("RGB")).astype(np.int16)
    # Independent check: the stand-in is a plain bicubic ×4 of the 8-bit input.
    source = np.asarray(Image.open(io.BytesIO(body))).astype(np.float32) / 255.0
    expected = F.interpolate(torch.from_numpy(source).permute(2, 0, 1)[None], scale_factor=4, mode="bicubic",
                             align_corners=False).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - np.round(expected * 255)).max() <= 1

    status, _, before = call("GET", running.url + done["before_url"].lstrip("/"))
    assert status == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(before)).convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(body)).convert("RGB")))


def test_scale_2_and_alpha_survive(serve_factory, png_bytes, wait_finished):
    running = serve_factory()
    status, doc = post_image(running.url, png_bytes(10, 6, mode="RGBA"), "logo.png", scale=2)
    assert status == 202
    done = wait_finished(running.url, doc["id"])
    assert done["output_size"] == [20, 12] and done["download_name"] == "logo_x2.png"
    result = Image.open(io.BytesIO(call("GET", running.url + done["result_url"].lstrip("/"))[2]))
    assert (result.size, result.mode) == ((20, 12), "RGBA")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"this is not an image\n", "not an image (format not recognised)"), (b"", "empty file (0 bytes)")],
)
def test_bad_upload_is_refused_with_one_line_and_leaves_nothing(serve_factory, body, fragment):
    running = serve_factory()
    status, doc = post_image(running.url, body, "notes.png")
    assert status == 400
    assert doc == {"error": f"notes.png: {fragment}"}
    assert json.loads(call("GET", running.url + "api/jobs")[2]) == {"jobs": []}
    assert list(running.server.app.work_dir.iterdir()) == []
    assert running.pipe.calls == []


def test_oversize_upload_is_refused_with_413(serve_factory, png_bytes):
    running = serve_factory(max_upload_bytes=1000)
    status, doc = post_image(running.url, png_bytes(64, 64), "big.png")
    assert status == 413
    assert doc["error"].startswith("big.png: ") and "exceeds the upload limit" in doc["error"]
    assert list(running.server.app.work_dir.iterdir()) == []


def test_huge_declared_upload_is_refused_without_reading_it(serve_factory):
    running = serve_factory(max_upload_bytes=1000)
    host, port = running.server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.putrequest("POST", "/api/jobs?name=huge.tif")
    connection.putheader("Content-Length", str(10 * 2**30))  # 10 GiB announced, never sent
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert response.getheader("Connection") == "close"
    assert "huge.tif: 10,737,418,240 bytes exceeds the upload limit of 1,000 bytes" in json.loads(response.read())["error"]
    connection.close()


def test_pixel_limit_is_the_same_as_the_cli(serve_factory, png_bytes):
    running = serve_factory(max_pixels=100)
    status, doc = post_image(running.url, png_bytes(20, 20), "wide.png")
    assert status == 413
    assert doc["error"] == "wide.png: 20×20 = 400 pixels exceeds the limit of 100 (the server's --max-pixels)"


def test_planner_refusal_happens_at_upload(serve_factory, png_bytes):
    running = serve_factory()
    running.pipe.max_output_pixels = 40 * 40  # 20×20 → 80×80 does not fit
    status, doc = post_image(running.url, png_bytes(20, 20), "p.png")
    assert status == 413 and doc["error"].startswith("p.png: too large for this device: 80×80 output")


def test_unknown_scale_or_model_is_refused(serve_factory, png_bytes):
    running = serve_factory()
    assert post_image(running.url, png_bytes(8, 8), scale=5)[0] == 400
    assert post_image(running.url, png_bytes(8, 8), scale="x")[0] == 400
    status, doc = post_image(running.url, png_bytes(8, 8), model="other")
    assert status == 400 and "unknown model 'other'" in doc["error"]


def test_truncated_file_fails_its_job_and_the_worker_goes_on(serve_factory, png_bytes, wait_finished):
    running = serve_factory()
    body = png_bytes(64, 64, seed=3)
    status, bad = post_image(running.url, body[: len(body) // 2], "cut.png")
    assert status == 202  # the header is fine; the pixels are not
    status, good = post_image(running.url, png_bytes(8, 8), "ok.png")
    failed = wait_finished(running.url, bad["id"])
    assert failed["state"] == "failed"
    assert failed["error"].startswith("cut.png: truncated or corrupt image data")
    assert "result_url" not in failed
    assert call("GET", f"{running.url}api/jobs/{bad['id']}/result.png")[0] == 404
    assert wait_finished(running.url, good["id"])["state"] == "done"


def test_two_jobs_queue_and_run_one_at_a_time(serve_factory, png_bytes, wait_until, wait_finished):
    running = serve_factory(delay_s=0.4)
    _, first = post_image(running.url, png_bytes(12, 8, seed=1), "a.png")
    _, second = post_image(running.url, png_bytes(12, 8, seed=2), "b.png")
    # The first is ahead of the second whether or not it has started yet.
    waiting = job(running.url, second["id"])
    assert waiting["state"] == "queued" and waiting["position"] == 1
    wait_until(lambda: job(running.url, first["id"])["state"] == "running")
    assert job(running.url, second["id"])["state"] == "queued"
    a, b = wait_finished(running.url, first["id"]), wait_finished(running.url, second["id"])
    assert a["state"] == b["state"] == "done"
    assert a["finished"] <= b["started"]
    assert running.pipe.max_active == 1 and len(running.pipe.calls) == 2
    # The second job's estimate comes from the first job's measured speed (same size → ≈ its time).
    assert b["expected_s"] == pytest.approx(a["finished"] - a["started"], rel=0.5)


def test_full_queue_answers_503(serve_factory, png_bytes, wait_until):
    running = serve_factory(delay_s=0.5, max_pending=1)
    _, first = post_image(running.url, png_bytes(8, 8), "a.png")
    wait_until(lambda: job(running.url, first["id"])["state"] == "running")
    assert post_image(running.url, png_bytes(8, 8), "b.png")[0] == 202
    status, doc = post_image(running.url, png_bytes(8, 8), "c.png")
    assert status == 503 and "already has 1 jobs waiting" in doc["error"]
    assert doc["error"].startswith("model 'fake'")


def test_delete_cancels_a_waiting_job_but_not_a_running_one(serve_factory, png_bytes, wait_until, wait_finished):
    running = serve_factory(delay_s=0.5)
    _, first = post_image(running.url, png_bytes(8, 8), "a.png")
    _, second = post_image(running.url, png_bytes(8, 8), "b.png")
    wait_until(lambda: job(running.url, first["id"])["state"] == "running")
    status, _, raw = call("DELETE", f"{running.url}api/jobs/{first['id']}")
    assert status == 409 and json.loads(raw)["error"] == "a.png: is running; it cannot be removed now"
    assert call("DELETE", f"{running.url}api/jobs/{second['id']}")[0] == 204
    assert wait_finished(running.url, first["id"])["state"] == "done"
    assert len(running.pipe.calls) == 1  # the cancelled job never reached the model


def test_cross_origin_post_is_refused(serve_factory, png_bytes):
    running = serve_factory()
    status, _, raw = call("POST", running.url + "api/jobs?name=x.png", png_bytes(8, 8),
                          {"Origin": "http://evil.example"})
    assert status == 403 and json.loads(raw)["error"] == "requests from http://evil.example are not accepted"
    host = running.url.removeprefix("http://").rstrip("/")
    same = call("POST", running.url + "api/jobs?name=x.png", png_bytes(8, 8), {"Origin": f"http://{host}"})
    assert same[0] == 202


def test_delete_and_eviction_remove_files(serve_factory, png_bytes, wait_finished, wait_until):
    running = serve_factory(keep_jobs=1)
    ids = []
    for name in ("a.png", "b.png"):
        ids.append(post_image(running.url, png_bytes(8, 8), name)[1]["id"])
        wait_finished(running.url, ids[-1])
    first_folder = running.server.app.work_dir / ids[0]
    # Two finished jobs, one kept: the oldest is forgotten (with its files) as soon as the second
    # finishes, not only at the next upload.
    wait_until(lambda: not first_folder.exists())  # the worker evicts right after marking b done
    assert call("GET", f"{running.url}api/jobs/{ids[0]}")[0] == 404
    # A finished job is deleted on request, with its files.
    assert call("DELETE", f"{running.url}api/jobs/{ids[1]}")[0] == 204
    assert call("GET", f"{running.url}api/jobs/{ids[1]}")[0] == 404
    ids.append(post_image(running.url, png_bytes(8, 8), "c.png")[1]["id"])
    wait_finished(running.url, ids[2])
    assert call("DELETE", f"{running.url}api/jobs/{ids[2]}")[0] == 204
    assert call("GET", f"{running.url}api/jobs/{ids[2]}")[0] == 404
    assert list(running.server.app.work_dir.iterdir()) == []


def test_non_ascii_name_downloads_under_its_name(serve_factory, png_bytes, wait_finished):
    running = serve_factory()
    _, doc = post_image(running.url, png_bytes(8, 8), "фото 1.png")
    done = wait_finished(running.url, doc["id"])
    assert done["name"] == "фото 1.png" and done["download_name"] == "фото 1_x4.png"
    headers = call("GET", running.url + done["result_url"].lstrip("/") + "?download=1")[1]
    assert "filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE%201_x4.png" in headers["Content-Disposition"]


def test_close_removes_the_temporary_folder(serve_factory, png_bytes, wait_finished):
    running = serve_factory()
    _, doc = post_image(running.url, png_bytes(8, 8), "a.png")
    wait_finished(running.url, doc["id"])
    work_dir = running.server.app.work_dir
    assert work_dir.is_dir()
    running.server.shutdown()
    running.server.server_close()
    assert not work_dir.exists()


def test_clean_name():
    assert clean_name("../../etc/passwd") == "passwd"
    assert clean_name("C:\\Users\\me\\a b.jpg") == "a b.jpg"
    assert clean_name("bad\x00\nname.png") == "badname.png"
    assert clean_name(None) == clean_name("") == "upload"


def test_port_in_use_is_one_line(monkeypatch):
    from doubles import InterpolationPipeline
    from typer.testing import CliRunner

    import op4ksr.api
    from op4ksr.cli import app

    monkeypatch.setattr(op4ksr.api, "load_model", lambda model=None, **kw: InterpolationPipeline())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    assert f"error: cannot listen on 127.0.0.1:{port}: " in result.output
    assert result.output.strip().count("\n") == 0


def test_help_says_local_only():
    from typer.testing import CliRunner

    from op4ksr.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # help is wrapped to the terminal width
    assert "127.0.0.1" in text and "no authentication" in text


def test_real_tiny_model_end_to_end(serve_factory, tiny_pipeline, png_bytes, wait_until):
    """The real (randomly initialised) pipeline behind the server: shape and file contract."""
    running = serve_factory(pipe=tiny_pipeline, label="tiny")
    assert json.loads(call("GET", running.url + "api/info")[2])["default_model"] == "tiny"
    _, doc = post_image(running.url, png_bytes(16, 12), "t.png")
    done = wait_until(lambda: (d := job(running.url, doc["id"]))["state"] in ("done", "failed") and d, timeout=120)
    assert done["state"] == "done", done
    scale = tiny_pipeline.scale
    result = Image.open(io.BytesIO(call("GET", running.url + done["result_url"].lstrip("/"))[2]))
    assert result.format == "PNG" and result.size == (16 * scale, 12 * scale)


def test_cli_serves_and_cleans_up_on_sigterm(tiny_model_dir, tmp_path, png_bytes, wait_until):
    """The real command in its own process: serves the page, and `kill` removes its temp folder."""
    import os
    import signal
    import subprocess
    import sys

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "op4ksr", "serve", "--model", str(tiny_model_dir), "--port", "0", "--scale", "2"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        banner = process.stderr.readline()
        assert banner.startswith("op4ksr: serving tiny-model on http://127.0.0.1:"), banner
        base = banner.split(" on ", 1)[1].split()[0]
        info = json.loads(call("GET", base + "api/info")[2])
        assert info["default_scale"] == 2 and info["models"][0]["name"] == "tiny-model"
        _, doc = post_image(base, png_bytes(8, 8), "x.png")
        wait_until(lambda: job(base, doc["id"])["state"] == "done", timeout=120)
        assert [p.name[:13] for p in temp.iterdir()] == ["op4ksr-serve-"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest = process.communicate(timeout=90)[1]  # generous: a loaded 2-core CI machine
        except subprocess.TimeoutExpired:
            process.kill()
            rest = process.communicate()[1]
            pytest.fail(f"op4ksr serve did not stop within 90 s of SIGTERM; stderr:\n{rest[-3000:]}")
    assert process.returncode == 0, rest
    assert "done: x.png 8×8 → 16×16" in rest
    assert list(temp.iterdir()) == []


def test_scale_beyond_the_model_is_refused_at_start():
    from doubles import InterpolationPipeline

    from op4ksr.api import Upscaler
    from op4ksr.serve import ServeConfig, make_server

    with pytest.raises(ValueError, match="scale must be an integer from 2 to the model's native ×2, got 4"):
        make_server({"x2": Upscaler(InterpolationPipeline(scale=2))}, ServeConfig(port=0, scale=4))


def test_fidelity_is_checked_and_refused_for_models_without_compensation(serve_factory, png_bytes):
    running = serve_factory()
    status, doc = post_image(running.url, png_bytes(8, 8), fidelity="2")
    assert status == 400 and "fidelity" in doc["error"]
    status, doc = post_image(running.url, png_bytes(8, 8), fidelity="0.5")
    assert status == 400 and "has no fidelity knob" in doc["error"]
    info = json.loads(call("GET", running.url + "api/info")[2])
    assert info["models"][0]["fidelity"] is None
