"""Widget-change timing on the dashboard's law pages (target: under 2 s per change on a demo-like store).

    python benchmarks/dashboard_widgets.py [--tracking-uri URI] [--repeats 3] [--json OUT]

Without --tracking-uri it trains the dashboard tests' store (tests/app/conftest.py: 16 tiny runs, a grid sweep, an
lr x B sweep, one diverged run; ~1 min) into a temporary directory. Through Streamlit's AppTest (the script run a
browser waits for), in one session whose caches start empty: the Loss laws page's first render (its Fit tab only:
lazy tabs), then single widget changes as a user makes them, each timed: the plot's x axis (no refit: the fit is
cached), the law's form (one refit), the bootstrap count back and forth (the second is a cache hit), the switch to
the Held-out tab (its check only), and on Hyperparameters the plateau tolerance (one refit). The loss law's
bootstrap runs in a worker thread (app/fits.py): a change's time is its script run, which shows the new point
estimate; `*_intervals_s` is the time from the change until its rerun shows the intervals. Each repeat starts
with empty caches; the figures are medians over the repeats, as JSON (default
benchmarks/results/dashboard_widgets.json) with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0
PENDING = "bootstrap resamples…"  # the Loss laws page's caption while intervals are computed


def timed(action) -> float:
    t0 = time.perf_counter()
    at = action()
    if at.exception:
        raise RuntimeError(f"the page raised: {[e.message for e in at.exception]}")
    return time.perf_counter() - t0


def pending(at) -> bool:
    return any(PENDING in c.value for c in at.caption)


def settled(at, since: float) -> float:
    """Seconds from `since` until a rerun of the page no longer waits for intervals (polled as often as the page
    polls: a rerun takes the GIL from the worker thread)."""
    from app.ui import JOB_POLL_S

    while pending(at):
        time.sleep(JOB_POLL_S / 2)
        at.run()
    return time.perf_counter() - since


def measure(uri: str) -> dict[str, float]:
    from streamlit.testing.v1 import AppTest

    from app import pages

    os.environ["LAB_TRACKING_URI"] = uri
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=300).run()
    t0 = time.perf_counter()
    out = {"loss_laws_first_render_s": timed(lambda: at.switch_page(pages.LOSS_LAWS.path).run())}
    out["loss_laws_first_intervals_s"] = settled(at, t0)
    out["loss_x_axis_s"] = timed(lambda: at.radio(key="loss_x_3").set_value("N").run())
    for key, change in (("loss_form", lambda: at.selectbox(key="loss_form").select("L(N)").run()),
                        ("loss_bootstrap", lambda: at.number_input(key="loss_bootstrap").set_value(100).run()),
                        ("loss_bootstrap_back", lambda: at.number_input(key="loss_bootstrap").set_value(200).run())):
        t0 = time.perf_counter()
        out[f"{key}_s"] = timed(change)
        out[f"{key}_intervals_s"] = settled(at, t0)

    def holdout_tab():
        at.session_state["loss_tab"] = "Held-out check"
        return at.run()

    out["loss_holdout_tab_s"] = timed(holdout_tab)
    out["hparams_first_render_s"] = timed(lambda: at.switch_page(pages.HYPERPARAMETERS.path).run())
    out["hparams_tolerance_s"] = timed(lambda: at.number_input(key="hp_tolerance").set_value(0.01).run())
    return out


def session(uri: str) -> dict[str, float]:
    """One repeat in a process of its own, so that it starts with empty caches and no bootstrap running."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--tracking-uri", uri, "--one-session"], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="store to time on (default: train the dashboard tests' store)")
    parser.add_argument("--repeats", type=int, default=3, help="sessions timed, each with empty caches (median)")
    parser.add_argument("--one-session", action="store_true", help=argparse.SUPPRESS)  # a repeat's own process
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "dashboard_widgets.json")
    args = parser.parse_args()
    uri = args.tracking_uri
    if uri is None:
        sys.path.insert(0, str(ROOT / "tests" / "app"))
        from conftest import train_store

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        folder = Path(tempfile.mkdtemp(prefix="dashboard_widgets_"))
        print(f"training the dashboard tests' store into {folder} ...", flush=True)
        uri = train_store(folder)
    figures: dict[str, object] = {"store": uri, "target_s": TARGET_S}
    if args.one_session:
        print(json.dumps(measure(uri)))
        return
    runs = [session(uri) for _ in range(args.repeats)]
    timings = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    figures.update(timings, repeats=args.repeats, each=[{k: round(v, 3) for k, v in r.items()} for r in runs])
    changes = {k: v for k, v in timings.items() if "first" not in k and "intervals" not in k}
    figures["slowest_change_s"] = max(changes.values())
    figures["meets_target"] = figures["slowest_change_s"] < TARGET_S
    figures["load_average_1min"] = round(os.getloadavg()[0], 2)
    for key, value in timings.items():
        print(f"{key:28s} {value:7.2f} s")
    print(f"slowest widget change {figures['slowest_change_s']:.2f} s (target < {TARGET_S} s: "
          f"{'met' if figures['meets_target'] else 'MISSED'}); load average {figures['load_average_1min']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
