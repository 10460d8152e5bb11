"""A real headless Chromium driven over its DevTools protocol (a websocket): open a page, run
JavaScript in it, take screenshots. Only the system `chromium` and `websockets` are needed."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conftest import stop

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
START_TIMEOUT_SECONDS = 60
VIEWPORT = (1280, 1600)  # CSS pixels at device scale 1: one screenshot pixel per CSS pixel


def find_chromium() -> str | None:
    """The Chromium executable ($CHROMIUM, else the first on PATH), or None."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class Page:
    """One browser tab: DevTools commands over its websocket."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one DevTools command and return its result (events arriving meanwhile are dropped)."""
        command_id = next(self._ids)
        self._connection.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._connection.recv(timeout=60))
            if message.get("id") == command_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_seconds: float = 60) -> Any:
        """Poll `expression` until it is truthy; return its value, or raise TimeoutError."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.25)
        raise TimeoutError(f"{expression!r} still falsy after {timeout_seconds}s")

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose `paths` in the file input at `selector`, as a user would (its change event fires)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(Path(path).resolve()) for path in paths])

    def allow_downloads(self, folder: Path) -> None:
        """Save what the page downloads into `folder`, under the names the server gives."""
        self.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(Path(folder).resolve()))

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport, written to `path`."""
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path


@contextlib.contextmanager
def chromium_page(executable: str) -> Iterator[Page]:
    """A fresh headless Chromium (its own profile, torn down afterwards) and its one tab."""
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        browser = subprocess.Popen(
            [
                executable, "--headless", "--no-sandbox",  # no sandbox: CI runs as root
                "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",  # Chromium picks the port
                f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"  # Chromium writes its port here when ready
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not (port_file.exists() and port_file.read_text().strip()):
                if browser.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{executable} did not start (exit {browser.poll()})")
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                tab = next(target for target in json.load(response) if target["type"] == "page")
            with connect(tab["webSocketDebuggerUrl"], max_size=None) as connection:
                page = Page(connection)
                page.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1, mobile=False,
                )
                yield page
        finally:
            stop(browser)  # the browser and its renderer, GPU and zygote processes


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
