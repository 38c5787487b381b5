"""`lab-dashboard` end to end: the real server on a free port, opened in headless Chromium over DevTools.

Skips (printing why) when Debian's `chromium` is missing; with LAB_REQUIRE_SERVICES=1 (CI, where .ci/run
installs it) a missing browser fails instead.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import parse, streamlit_command
from cdp import APP_IDLE, CHARTS_DRAWN, RUN_COUNT, Chromium, find_chromium

LAB_DASHBOARD = str(Path(sys.executable).parent / "lab-dashboard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on `port`, from /proc/net/tcp (state 0A = LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = "chromium not installed (apt-get install -y chromium); browser test not run"
        print(reason)
        if os.environ.get("LAB_REQUIRE_SERVICES") == "1":
            pytest.fail(f"required service unavailable (LAB_REQUIRE_SERVICES=1): {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def dashboard(store_uri, tmp_path_factory):
    """lab-dashboard serving the trained store; yields its base URL, stops the server after."""
    port = free_port()
    log = tmp_path_factory.mktemp("dashboard") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([LAB_DASHBOARD, "--tracking-uri", store_uri, "--port", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"lab-dashboard did not come up on port {port}:\n{log.read_text()}")
                time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_cli_binds_localhost_unless_told():
    assert parse([]).address == "127.0.0.1"
    command = streamlit_command(8600, parse(["--address", "0.0.0.0"]).address)
    assert command[command.index("--server.address") + 1] == "0.0.0.0"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert command[command.index("--server.headless") + 1] == "true"
    with pytest.raises(SystemExit):
        parse(["--port", "0"])


def test_streamlit_config_matches_lab_dashboard_flags():
    """`streamlit run app/Home.py` from the repo root reads .streamlit/config.toml: the flags lab-dashboard passes."""
    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text())
    command = streamlit_command(8501, "127.0.0.1")
    for flag in ("server.address", "server.port", "server.headless", "server.fileWatcherType",
                 "browser.gatherUsageStats", "global.developmentMode", "client.toolbarMode"):
        section, key = flag.split(".")
        assert str(config[section][key]).lower() == command[command.index(f"--{flag}") + 1], flag


def test_cli_opens_the_store_training_wrote_to(monkeypatch):
    monkeypatch.delenv("LAB_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert parse([]).tracking_uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")  # what tracking=server trains into
    assert parse([]).tracking_uri == "http://tracking:5000"
    monkeypatch.setenv("LAB_TRACKING_URI", "sqlite:///other.db")  # the dashboard's own variable wins
    assert parse([]).tracking_uri == "sqlite:///other.db"
    assert parse(["--tracking-uri", "sqlite:///given.db"]).tracking_uri == "sqlite:///given.db"


def test_dashboard_serves_charts_in_chromium(dashboard, chromium, tmp_path):
    assert listening_addresses(dashboard) == {"127.0.0.1"}, "the dashboard must bind to loopback only by default"
    with Chromium(chromium) as browser:
        browser.open(f"http://127.0.0.1:{dashboard}/Runs")
        seconds = browser.wait_for(f"{CHARTS_DRAWN} >= 9", timeout=120)  # the 9 runs of sweep lr_batch
        browser.wait_for(APP_IDLE, timeout=60)
        title = browser.evaluate("document.querySelector('.gtitle') && document.querySelector('.gtitle').textContent")
        png = browser.screenshot()
    shot = tmp_path / "runs_page.png"
    shot.write_bytes(png)
    print(f"Runs page: charts drawn {seconds:.1f} s after opening; screenshot {shot}")
    assert title == "val/loss against D (tokens seen), coloured by N"
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.shape == (1000, 1400)
    assert pixels.var() > 200, f"screenshot looks blank (pixel variance {pixels.var():.1f})"
    assert (pixels < 200).mean() > 0.02, "too few dark pixels: no text or chart drawn"


@pytest.mark.parametrize("url", ["Loss_laws", "Hyperparameters", "Critical_batch_size", "Schedules"])
def test_every_law_page_draws_its_charts_in_chromium(dashboard, chromium, tmp_path, url):
    """Each law page, opened by its URL with no widget touched, draws charts and shows no exception."""
    with Chromium(chromium) as browser:
        browser.open(f"http://127.0.0.1:{dashboard}/{url}")
        seconds = browser.wait_for(f"{CHARTS_DRAWN} >= 1", timeout=180)
        browser.wait_for(APP_IDLE, timeout=120)
        errors = browser.evaluate("document.querySelectorAll('[data-testid=\"stException\"]').length")
        png = browser.screenshot()
    shot = tmp_path / f"{url}.png"
    shot.write_bytes(png)
    print(f"{url}: charts drawn {seconds:.1f} s after opening; screenshot {shot}")
    assert errors == 0
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.var() > 200, f"screenshot looks blank (pixel variance {pixels.var():.1f})"


def test_first_page_view_is_served_from_the_runs_read_at_start(store_uri, chromium, tmp_path):
    """lab-dashboard reads the store while the browser loads: with the store moved away once that read is done,
    Home still shows every run (read at the first page view, it would show 'MLflow store not found')."""
    import sqlite3

    from analysis.load import load_runs

    store = tmp_path / "mlflow.db"
    with sqlite3.connect(store_uri.removeprefix("sqlite:///")) as source, sqlite3.connect(store) as copy:
        source.backup(copy)  # the store is in WAL mode: copying its file alone can miss the latest runs
    expected = load_runs(f"sqlite:///{store}").height
    assert expected > 0
    port, log = free_port(), tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([LAB_DASHBOARD, "--tracking-uri", f"sqlite:///{store}", "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while "ahead of the first page view" not in log.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lab-dashboard did not read the store at start:\n{log.read_text()}")
            time.sleep(0.2)
        assert f"{expected} runs read from sqlite:///{store}" in log.read_text()
        store.rename(tmp_path / "moved.db")
        with Chromium(chromium) as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for(f"{RUN_COUNT} == '{expected}'", timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_png_export_through_kaleido(chromium):
    """PNG export needs kaleido (not a declared dependency yet) and a Chromium; HTML export needs neither."""
    pytest.importorskip("kaleido", reason="kaleido not installed: the Export page offers HTML only")
    import plotly.graph_objects as go

    from app import export

    assert export.png_support() == (True, "")
    fig = go.Figure(go.Scatter(x=[1, 10, 100], y=[3.0, 2.5, 2.2], mode="lines+markers"))
    png = export.figure_png(fig, width=400, height=300)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (800, 600)  # scale 2
    assert np.asarray(image.convert("L"), dtype=float).var() > 50
