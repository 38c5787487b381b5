"""The dashboard's server process: `streamlit run app/Home.py`, with the store read while the browser loads.

`lab-dashboard` replaces itself by this module. It starts Streamlit through its own command-line entry point
(the same code as `streamlit run`) and, beside it, a thread that imports the dashboard's modules and reads every
run of the store into the `st.cache_data` cache of `app.data.runs`, which the first page view then finds warm.
Without it, the first visitor waited for those imports and that read after the browser had loaded Streamlit's
front end; with it, the two overlap (benchmarks/dashboard_load.py measures the time to first data).

    python -m app.serve <streamlit run options>      (the store URI comes from $LAB_TRACKING_URI)
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from app import default_uri

log = logging.getLogger("lab-dashboard")
RUNTIME_WAIT_S = 60.0


def warm(uri: str) -> None:
    """Import what the pages import and read the store's runs into the cache the pages read from."""
    from streamlit import runtime

    deadline = time.monotonic() + RUNTIME_WAIT_S
    while not runtime.exists():  # the cache belongs to the server's runtime: fill it once that exists
        if time.monotonic() > deadline:
            log.warning("the Streamlit runtime did not start within %.0f s; the first page view reads the store",
                        RUNTIME_WAIT_S)
            return
        time.sleep(0.05)
    from analysis.load import LoadError
    from app import data, ui  # noqa: F401  (Home's imports: polars, numpy, analysis.load)

    # A cached function called outside a page's script warns that it has no script context, a warning meant for
    # scripts run without a server: here the server is up, and the cache is the one its pages read.
    context_log = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    level = context_log.level
    context_log.setLevel(logging.ERROR)
    try:
        runs = data.runs(uri)
    except LoadError as err:  # the page shows it, with the store box to fix the URI; nothing else to do here
        log.warning("lab-dashboard: could not read %s ahead of the first page view: %s", uri, err)
        return
    finally:
        context_log.setLevel(level)
    print(f"lab-dashboard: {runs.height} runs read from {uri} ahead of the first page view", flush=True)
    import plotly.graph_objects  # noqa: F401  (the Runs page's charts, next on most visits)


def main(argv: list[str] | None = None) -> None:
    from streamlit.web.cli import main as streamlit_main

    threading.Thread(target=warm, args=(default_uri(),), name="warm-store-cache", daemon=True).start()
    streamlit_main(args=["run", *(sys.argv[1:] if argv is None else argv)], prog_name="streamlit")


if __name__ == "__main__":
    main()
