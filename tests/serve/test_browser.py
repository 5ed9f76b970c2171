"""The page in a real headless browser: Debian's chromium driven by Playwright.

Skipped when either is missing. Set ``OP4KSR_WRITE_SCREENSHOT=1`` to (re)write docs/serve.png.
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("OP4KSR_CHROMIUM", "/usr/bin/chromium")
# Nothing may be fetched from the network: no updates, no sync, no background requests.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve.png"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not (Path(CHROMIUM).is_file() and shutil.which(CHROMIUM)):
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 760}, device_scale_factor=1)
            page = context.new_page()
            page.set_default_timeout(60_000)  # the machine may be busy; a real failure still ends
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert errors == [], f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def _photo(path: Path, size: tuple[int, int]) -> Path:
    """A smooth colour image with a sharp edge: the slider's two sides look different."""
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BOX)
    image.save(path)
    return path


def test_upload_progress_slider_download(serve_factory, page, tmp_path, wait_until):
    running = serve_factory(delay_s=0.3)
    page.goto(running.url)
    page.wait_for_selector("#scale option", state="attached")
    assert page.input_value("#scale") == "4"
    assert "per file" in page.text_content("#limits")

    w, h = 160, 104
    source = _photo(tmp_path / "astronaut.png", (w, h))
    page.set_input_files("#file", str(source))
    # The job shows up with a progress bar while it waits or runs, then finishes.
    page.wait_for_selector("#jobs li progress")
    page.wait_for_selector("#jobs li[data-state=done]", timeout=20_000)
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_function("document.getElementById('after').complete && document.getElementById('after').naturalWidth > 0")
    page.wait_for_function("document.getElementById('before').complete && document.getElementById('before').naturalWidth > 0")

    # Full resolution: the stage is the output's size, the before layer stretched to it.
    assert page.evaluate("[document.getElementById('after').naturalWidth, document.getElementById('after').naturalHeight]") == [4 * w, 4 * h]
    assert page.evaluate("[document.getElementById('before').naturalWidth, document.getElementById('before').naturalHeight]") == [w, h]
    stage = page.locator("#stage").bounding_box()
    assert (stage["width"], stage["height"]) == (4 * w, 4 * h)
    assert page.evaluate("getComputedStyle(document.getElementById('before')).imageRendering") == "pixelated"

    # The slider moves the split: the after layer is clipped at the chosen percentage.
    assert page.evaluate("document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 50%)"
    page.fill("#slider", "25")
    assert page.evaluate("document.getElementById('after').style.clipPath") == "inset(0px 0px 0px 25%)"
    assert page.evaluate("document.getElementById('divider').style.left") == "25%"
    # Dragging on the image moves it too (3/4 of the way across).
    page.mouse.click(stage["x"] + stage["width"] * 0.75, stage["y"] + stage["height"] / 2)
    assert float(page.input_value("#slider")) == pytest.approx(75, abs=0.5)

    # The download link gives a PNG of 4× the input's size, named after the input.
    link = page.locator("#download")
    assert link.get_attribute("download") == "astronaut_x4.png"
    with urllib.request.urlopen(running.url.rstrip("/") + link.get_attribute("href"), timeout=30) as response:
        body = response.read()
        assert "attachment" in response.headers["Content-Disposition"]
    result = Image.open(io.BytesIO(body))
    assert result.format == "PNG" and result.size == (4 * w, 4 * h)
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "astronaut_x4.png"

    # What the browser shows is the model output right of the split and the input, enlarged
    # pixel by pixel, left of it. Layout may put the stage at a half pixel (text line heights);
    # the browser snaps it to a whole one, so compare at the better of the two roundings.
    page.fill("#slider", "50")
    after = np.asarray(result.convert("RGB")).astype(int)
    before = np.asarray(Image.open(source).convert("RGB").resize((4 * w, 4 * h), Image.Resampling.NEAREST)).astype(int)
    box = page.locator("#stage").bounding_box()
    right, left = np.s_[:, 2 * w + 8 :], np.s_[:, : 2 * w - 8]  # away from the divider line
    errors = []
    for round_y in (np.floor, np.ceil):
        clip = {"x": float(np.floor(box["x"])), "y": float(round_y(box["y"])), "width": 4 * w, "height": 4 * h}
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")).astype(int)
        errors.append((np.abs(shot[right] - after[right]).mean(), np.abs(shot[left] - before[left]).mean()))
    assert min(max(pair) for pair in errors) < 0.5, errors
    assert np.abs(after[left] - before[left]).mean() > 3  # the two layers really differ

    if os.environ.get("OP4KSR_WRITE_SCREENSHOT") == "1":
        page.fill("#slider", "50")
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_rejected_upload_shows_the_reason(serve_factory, page, tmp_path):
    running = serve_factory()
    page.goto(running.url)
    page.wait_for_selector("#scale option", state="attached")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\n", encoding="utf-8")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == "notes.png: not an image (format not recognised)"
    assert page.locator("#jobs li").count() == 0


def test_oversize_file_is_refused_in_the_page(serve_factory, page, tmp_path):
    running = serve_factory(max_upload_bytes=2000)
    page.goto(running.url)
    page.wait_for_selector("#scale option", state="attached")
    big = _photo(tmp_path / "big.png", (96, 64))
    page.set_input_files("#file", str(big))
    page.wait_for_selector("#error:not([hidden])")
    assert "big.png: " in page.text_content("#error") and "exceeds the upload limit" in page.text_content("#error")
    assert running.pipe.calls == []
