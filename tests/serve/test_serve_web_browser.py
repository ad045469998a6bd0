"""The web demo end to end in headless Chromium (Debian's, driven by Playwright).

Skipped, with the reason, only when /usr/bin/chromium or the playwright package is missing
(`.ci/install-browser.sh` and `pip install -e '.[web-test]'` provide them).
"""

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import FORCE, image_bytes

from stamp.inference import StampPredictor
from stamp.outputs.files import overlay_masks
from stamp.serve.app import create_app
from stamp.serve.server import serve_in_thread
from stamp.serve.settings import ServeSettings

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (install it with .ci/install-browser.sh)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing (pip install -e '.[web-test]')"
)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(tiny_model, tiny_processor):
    app = create_app(StampPredictor(tiny_model, tiny_processor), ServeSettings(web=True, batch_wait_ms=0))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def page(site, tmp_path):
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        try:
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(site)
            page.wait_for_selector("#samples button", state="attached")
            yield page
            assert errors == [], errors
        finally:
            context.close()


def _decode_png(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))) > 127


def _canvas_pixels(page) -> np.ndarray:
    w, h, data = page.evaluate(
        """() => { const c = document.getElementById('canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   return [c.width, c.height, Array.from(d)]; }"""
    )
    return np.array(data, dtype=np.uint8).reshape(h, w, 4)[..., :3]


def _rgb(page, selector: str, prop: str) -> str:
    return page.eval_on_selector(selector, f"e => getComputedStyle(e).{prop}")


def test_pick_a_sample_ask_and_see_coloured_masks(page, site):
    samples = httpx.get(f"{site}/v1/samples").json()["samples"]
    assert page.locator("#samples button").count() == len(samples) >= 3
    page.click("#samples button >> nth=0")
    page.wait_for_function("() => !document.getElementById('run').disabled")
    prompt = page.input_value("#prompt")
    assert prompt == samples[0]["prompts"][0]  # the sample's own example prompt
    assert page.locator("#examples button").count() >= 3
    page.check("#force")
    page.click("#run")
    page.wait_for_selector("#status[data-state='done']", timeout=60_000)

    # What the API says for the same request (greedy decoding: the same answer).
    png = httpx.get(f"{site}{samples[0]['url']}").content
    files = {"image": ("s.png", png, "image/png")}
    want = httpx.post(
        f"{site}/v1/segment", files=files, data={"prompt": prompt, "answer_prefix": FORCE, "return_png": "1"}
    ).json()
    n = len(want["masks"])
    assert n >= 1
    assert page.inner_text("#answer").startswith("Sure, it is") and page.locator(".seg-chip").count() == n
    assert f"{n} mask(s)" in page.inner_text("#status")

    # Colours: the chip, the phrase it belongs to, the legend swatch and the overlay all agree.
    orange = "rgb(230, 159, 0)"
    assert _rgb(page, ".seg-chip[data-mask='0']", "backgroundColor") == orange
    start, end = want["masks"][0]["span"]
    assert page.inner_text(".phrase[data-mask='0']") == want["text"][start:end] == "it"
    assert _rgb(page, ".phrase[data-mask='0']", "borderBottomColor") == orange
    items = page.locator("#legend .mask-item")
    assert items.count() == n and items.nth(0).get_attribute("data-color") == "#e69f00"
    assert _rgb(page, "#legend .mask-item[data-mask='0'] .swatch", "backgroundColor") == orange

    # Downloads: each mask PNG is the API's mask; the JSON link is offered.
    masks = []
    for k in range(n):
        link = page.locator(f"#legend .mask-item[data-mask='{k}'] a.download-mask")
        assert link.get_attribute("download") == f"mask_{k}.png"
        masks.append(_decode_png(link.get_attribute("href")))
        assert np.array_equal(masks[-1], _decode_png("data:image/png;base64," + want["masks"][k]["png"]))
    assert page.is_visible("#download-json")

    # The canvas shows the overlay stamp.outputs draws for the CLI (up to rounding).
    canvas = _canvas_pixels(page).astype(int)
    expected = np.asarray(overlay_masks(Image.open(io.BytesIO(png)), masks)).astype(int)
    assert canvas.shape == expected.shape
    assert np.abs(canvas - expected).max() <= 1
    if masks[0].any():
        assert (canvas == np.array([230, 159, 0])).all(-1).any()  # the outline in the phrase's colour


def test_upload_an_image_and_errors_are_shown(page, tmp_path):
    path = tmp_path / "upload.png"
    path.write_bytes(image_bytes(160, 120, seed=3))
    page.set_input_files("#file", str(path))
    page.wait_for_function("() => document.getElementById('status').textContent.includes('160x120')")
    page.fill("#prompt", "Where is <|im_end|>?")
    page.click("#run")
    page.wait_for_selector("#status[data-state='error']")
    assert "reserved_token" in page.inner_text("#status")
    page.fill("#prompt", "Please segment the square.")
    page.check("#force")
    page.click("#run")
    page.wait_for_selector("#status[data-state='done']", timeout=60_000)
    assert page.locator("#legend .mask-item").count() >= 1
    assert _canvas_pixels(page).shape == (120, 160, 3)
