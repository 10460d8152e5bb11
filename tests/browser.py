"""A real headless Chromium for the page tests, driven by Playwright: the system `chromium` (Playwright's
own browser downloads are never used), one fresh browser per page, and the helpers that tell whether a
screenshot shows a figure as its file is."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Root in CI needs --no-sandbox; the machine has no GPU and no network beyond localhost, so nothing
# may wait on either (QUIC, updates, sync, first-run pages).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 1600}  # CSS pixels at device scale 1: one screenshot pixel per CSS pixel
TIMEOUT_MS = 60_000  # any one wait: 2 cores shared with the servers under test
expect.set_options(timeout=TIMEOUT_MS)


def find_chromium() -> str | None:
    """The Chromium executable ($CHROMIUM, else the first on PATH), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def require_chromium(needed_for: str) -> str:
    """The Chromium executable. Without one the test skips here, but fails in CI (CI=true), where
    `.ci/run` installs it: a page test must never pass there unrun."""
    chromium = find_chromium()
    if chromium is None:
        reason = f"no chromium on PATH (apt-get install chromium; .ci/run installs it): {needed_for}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium


@contextlib.contextmanager
def chromium_page(executable: str) -> Iterator[Page]:
    """A fresh headless Chromium (its own profile, closed afterwards) and one page in it."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, accept_downloads=True)
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()  # the browser and its renderer, GPU and zygote processes


def show(element: Locator) -> dict[str, float]:
    """Scroll `element` to the middle of the viewport, let the page repaint, and return where it is
    drawn (CSS pixels: x, y, width, height), ready for a screenshot of the viewport."""
    element.evaluate("""async (element) => {
        element.scrollIntoView({block: 'center'});
        await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
    }""")
    box = element.bounding_box()
    assert box is not None, f"{element} is not drawn"
    return dict(box)


# ---------------------------------------------------------------------------------------------
# Is a figure drawn on screen as its file is?


def open_image(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data))


# Measured: a figure drawn whole gives r >= 0.989 and a mean difference <= 1.6 (browser and PIL scale
# a little differently); one drawn only in part (a corrupted PNG) r <= 0.70 and >= 15; broken ~0.1 and ~100.
MIN_DRAWN_CORRELATION = 0.95
MAX_DRAWN_MEAN_DIFFERENCE = 8.0  # grey levels out of 255


def drawn_likeness(screenshot: Path, rect: dict[str, float], figure: bytes) -> tuple[float, float]:
    """How the screenshot inside `rect` matches the figure (PNG bytes) scaled to it: the Pearson correlation
    of their grey levels (4x4 blocks averaged, so sub-pixel placement does not matter) and the mean
    absolute difference of grey levels."""
    import numpy as np

    box = tuple(round(rect[key]) for key in ("x", "y")) + (round(rect["x"] + rect["width"]), round(rect["y"] + rect["height"]))
    drawn = open_image(screenshot.read_bytes()).convert("L").crop(box)
    expected = open_image(figure).convert("L").resize(drawn.size)
    blocks = [np.asarray(image.reduce(4), dtype=np.float64).ravel() for image in (drawn, expected)]
    difference = np.abs(np.asarray(drawn, dtype=np.float64) - np.asarray(expected, dtype=np.float64)).mean()
    return float(np.corrcoef(*blocks)[0, 1]), float(difference)
