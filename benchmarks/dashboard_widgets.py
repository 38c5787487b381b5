"""Widget-change timing on the dashboard's law pages (target: under 2 s per change on a demo-like store).

    python benchmarks/dashboard_widgets.py [--tracking-uri URI] [--json OUT]

Without --tracking-uri it trains the dashboard tests' store (tests/app/conftest.py: 16 tiny runs, a grid sweep, an
lr x B sweep, one diverged run; ~1 min) into a temporary directory. Through Streamlit's AppTest (the script run a
browser waits for), in one session whose caches start empty: the Loss laws page's first render (its Fit tab only:
lazy tabs), then single widget changes as a user makes them, each timed: the plot's x axis (no refit: the fit is
cached), the law's form (one refit), the bootstrap count back and forth (the second is a cache hit), the switch to
the Held-out tab (its check only), and on Hyperparameters the plateau tolerance (one refit). Figures as JSON
(default benchmarks/results/dashboard_widgets.json) with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0


def timed(action) -> float:
    t0 = time.perf_counter()
    at = action()
    if at.exception:
        raise RuntimeError(f"the page raised: {[e.message for e in at.exception]}")
    return time.perf_counter() - t0


def measure(uri: str) -> dict[str, float]:
    from streamlit.testing.v1 import AppTest

    from app import pages

    os.environ["LAB_TRACKING_URI"] = uri
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=300).run()
    out = {"loss_laws_first_render_s": timed(lambda: at.switch_page(pages.LOSS_LAWS.path).run())}
    out["loss_x_axis_s"] = timed(lambda: at.radio(key="loss_x_3").set_value("N").run())
    out["loss_form_s"] = timed(lambda: at.selectbox(key="loss_form").select("L(N)").run())
    out["loss_bootstrap_s"] = timed(lambda: at.number_input(key="loss_bootstrap").set_value(100).run())
    out["loss_bootstrap_back_s"] = timed(lambda: at.number_input(key="loss_bootstrap").set_value(200).run())

    def holdout_tab():
        at.session_state["loss_tab"] = "Held-out check"
        return at.run()

    out["loss_holdout_tab_s"] = timed(holdout_tab)
    out["hparams_first_render_s"] = timed(lambda: at.switch_page(pages.HYPERPARAMETERS.path).run())
    out["hparams_tolerance_s"] = timed(lambda: at.number_input(key="hp_tolerance").set_value(0.01).run())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="store to time on (default: train the dashboard tests' store)")
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
    timings = {k: round(v, 3) for k, v in measure(uri).items()}
    figures.update(timings)
    changes = {k: v for k, v in timings.items() if "first_render" not in k}
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
