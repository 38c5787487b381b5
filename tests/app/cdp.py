"""Headless Chromium driven over the DevTools protocol (a websocket), for the dashboard's browser test and
benchmarks/dashboard_load.py.

A plain `chromium --headless --screenshot` of a Streamlit page is blank: the page is drawn over a websocket
after load (environment.md). So this starts Debian's `chromium` with a DevTools port, opens the page, polls a
JavaScript condition (e.g. a plotly chart has drawn its traces) and only then captures. Needs only `websockets`
(a Streamlit dependency); no Playwright and no browser download.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")
CHARTS_DRAWN = "document.querySelectorAll('.js-plotly-plot .main-svg .trace').length"
"""Number of plotly traces drawn on the page (0 until Streamlit has delivered and plotly has rendered a chart)."""
APP_IDLE = "!document.querySelector('[data-testid=\"stStatusWidget\"]')"
"""True when Streamlit shows no 'Running…' indicator."""
RUN_COUNT = "(document.querySelector('[data-testid=\"stMetricValue\"]') || {}).textContent"
"""The Home page's first metric, the number of runs in the store: the first data a user sees."""


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class Chromium:
    """One headless Chromium with one page, driven over CDP. Use as a context manager."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000, timeout: float = 30.0):
        # a fresh profile every time; its own session, so that close() can end the helper processes it forks
        self._profile = tempfile.TemporaryDirectory(prefix="lab-chromium-", ignore_cleanup_errors=True)
        self._proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._stack = ExitStack()  # websockets 14+ wants its connection entered as a context manager
        self._id = 0
        try:
            port = self._devtools_port(Path(self._profile.name) / "DevToolsActivePort", timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
                page = next(t for t in json.load(response) if t["type"] == "page")
            self._ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None,
                                                         open_timeout=timeout))
            self.send("Page.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()  # never leave a browser behind when start-up fails
            raise

    def _devtools_port(self, path: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self._proc.returncode} before opening DevTools")
            if path.is_file() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.05)
        raise TimeoutError(f"chromium wrote no {path.name} within {timeout} s")

    def send(self, method: str, **params: object) -> dict:
        """Call a CDP method and return its result (events received meanwhile are dropped)."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> object:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.05) -> float:
        """Seconds until the JavaScript `expression` is truthy; TimeoutError naming it otherwise."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if self.evaluate(expression):
                    return time.monotonic() - start
            except RuntimeError as err:  # the page is navigating: its old context is gone, the new one not ready
                if "navigated" not in str(err) and "context" not in str(err).lower():
                    raise
            time.sleep(poll)
        raise TimeoutError(f"`{expression}` stayed false for {timeout} s")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            try:  # renderer / zygote helpers of this browser outlive it briefly: end its process group
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._profile.cleanup()

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
