"""Time to first data on screen: the dashboard on a store of 1,000 runs (target: under 3 s).

    python benchmarks/dashboard_load.py [--runs 1000] [--steps 1000] [--no-browser] [--json OUT]

Writes its figures as JSON (default benchmarks/results/dashboard_load.json).

The store is the loader benchmark's (benchmarks/load_runs.py `build_store`, cached under ~/.cache/scaling-lab/
and shared with it): `--runs` runs x `--steps` steps of train/loss, tokens and flops, val/loss every 10th step
(3.1M metric rows by default), runs/params/tags written through MlflowClient and metric rows by SQL.

Timed, in this order, in a process whose caches start empty:
- server side, through Streamlit's AppTest (the script run a browser would wait for): the Home page's first
  render, which loads every run (`load_runs`, cache miss); the switch to the Runs page (the 1,000-row table and
  the learning curves of the 5 picked runs, read for those runs only); a widget change on it (another metric);
- in the browser, unless --no-browser or no Chromium: `lab-dashboard` on a free port (a fresh server: it starts
  reading the store's runs as it starts, app/serve.py), opened as soon as it answers its health check, as a user
  opening the printed URL would; headless Chromium opens Home, timed until the run count is on screen (the
  headline figure: time to first data), then the Runs page until plotly has drawn the 5 picked runs' curves, then
  a reload of it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests" / "app")]
from load_runs import build_store  # noqa: E402  (the loader benchmark's store, reused rather than copied)
from tracking.record import Metric  # noqa: E402

TARGET_S = 3.0


def store_path(cache: Path, runs: int, steps: int) -> Path:
    """The same file benchmarks/load_runs.py builds and caches for these sizes."""
    return cache / f"bench_load_runs_r{runs}_s{steps}.db"


def server_side(uri: str) -> dict[str, float]:
    from streamlit.testing.v1 import AppTest

    os.environ["LAB_TRACKING_URI"] = uri
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=300)
    t0, c0 = time.perf_counter(), time.process_time()
    at.run()
    home, home_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    at.switch_page("views/runs.py").run()
    runs_page = time.perf_counter() - t0
    charts = len(at.get("plotly_chart"))
    t0 = time.perf_counter()
    at.selectbox(key="runs_metric").select(Metric.TRAIN_LOSS).run()
    widget = time.perf_counter() - t0
    if at.exception or charts != 1:
        raise RuntimeError(f"the Runs page did not render its chart: {[e.message for e in at.exception]}")
    return {"apptest_home_first_render_s": home, "apptest_home_first_render_cpu_s": home_cpu,
            "apptest_runs_page_s": runs_page,
            "apptest_widget_change_s": widget, "time_to_first_data_apptest_s": home + runs_page}


def browser_side(uri: str, runs: int) -> dict[str, float]:
    from cdp import APP_IDLE, CHARTS_DRAWN, RUN_COUNT, Chromium, find_chromium

    chromium = find_chromium()
    if chromium is None:
        print("no chromium on PATH: browser timing skipped (apt-get install -y chromium)")
        return {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "lab-dashboard"), "--tracking-uri", uri,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with Chromium(chromium) as browser:
            t0 = time.perf_counter()
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for(f"{RUN_COUNT} == '{runs}'", timeout=300)
            home = time.perf_counter() - t0
            browser.wait_for(APP_IDLE, timeout=300)
            t0 = time.perf_counter()
            browser.open(f"http://127.0.0.1:{port}/Runs")
            browser.wait_for(f"{CHARTS_DRAWN} >= 5", timeout=300)
            curves = time.perf_counter() - t0
            browser.wait_for(APP_IDLE, timeout=300)
            t0 = time.perf_counter()
            browser.send("Page.reload")
            browser.wait_for(f"{CHARTS_DRAWN} == 0", timeout=60)
            browser.wait_for(f"{CHARTS_DRAWN} >= 5", timeout=300)
            reload = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"browser_home_first_data_s": home, "browser_runs_page_curves_s": curves,
            "browser_runs_page_reload_s": reload}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
                        / "scaling-lab")
    parser.add_argument("--no-browser", action="store_true", help="time the server side only")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "dashboard_load.json",
                        help="write the figures here (default benchmarks/results/dashboard_load.json)")
    args = parser.parse_args()

    store = store_path(args.cache, args.runs, args.steps)
    build_s = 0.0
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {store} ...", flush=True)
        t0 = time.perf_counter()
        build_store(store, args.runs, args.steps)
        build_s = time.perf_counter() - t0
    uri = f"sqlite:///{store}"

    figures: dict[str, object] = {"runs": args.runs, "steps": args.steps, "store": str(store),
                                  "store_build_s": round(build_s, 1), "target_s": TARGET_S}
    figures.update({k: round(v, 3) for k, v in server_side(uri).items()})
    if not args.no_browser:
        figures.update({k: round(v, 3) for k, v in browser_side(uri, args.runs).items()})
    first = figures.get("browser_home_first_data_s", figures["apptest_home_first_render_s"])
    figures["time_to_first_data_s"] = first
    figures["meets_target"] = first < TARGET_S
    figures["load_average_1min"] = round(os.getloadavg()[0], 2)  # shared machine: context for the figures
    print(f"store: {args.runs} runs x {args.steps} steps ({store}); load average {figures['load_average_1min']}")
    print(f"AppTest: Home first render {figures['apptest_home_first_render_s']:.2f} s "
          f"(CPU {figures['apptest_home_first_render_cpu_s']:.2f} s; loads every run), Runs page "
          f"{figures['apptest_runs_page_s']:.2f} s, widget change {figures['apptest_widget_change_s']:.2f} s")
    if "browser_home_first_data_s" in figures:
        print(f"Chromium, fresh server: Home shows the run count {figures['browser_home_first_data_s']:.2f} s after "
              f"opening; Runs page curves drawn in {figures['browser_runs_page_curves_s']:.2f} s "
              f"(reload {figures['browser_runs_page_reload_s']:.2f} s)")
    print(f"time to first data on screen {first:.2f} s (target < {TARGET_S} s: "
          f"{'met' if figures['meets_target'] else 'MISSED'})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
