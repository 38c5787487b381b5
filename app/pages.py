"""The dashboard's pages, in navigation order: their scripts (relative to app/Home.py), titles and URL paths.

`st.page_link` and `AppTest.switch_page` name a page by its `path`; its URL is `/<url>` (deep links add
`?sweep=ID` or `?runs=ID,ID`).
"""

from __future__ import annotations

from typing import NamedTuple


class Page(NamedTuple):
    path: str
    title: str
    url: str
    default: bool = False


HOME = Page("views/home.py", "Home", "home", default=True)
RUNS = Page("views/runs.py", "Runs", "Runs")
LOSS_LAWS = Page("views/loss_laws.py", "Loss laws", "Loss_laws")
HYPERPARAMETERS = Page("views/hyperparameters.py", "Hyperparameters", "Hyperparameters")
CRITICAL_BATCH_SIZE = Page("views/critical_batch_size.py", "Critical batch size", "Critical_batch_size")
SCHEDULES = Page("views/schedules.py", "Schedules", "Schedules")
FORECASTS = Page("views/forecasts.py", "Forecasts", "Forecasts")
EXPORT = Page("views/export.py", "Export", "Export")
PAGES = (HOME, RUNS, LOSS_LAWS, HYPERPARAMETERS, CRITICAL_BATCH_SIZE, SCHEDULES, FORECASTS, EXPORT)
