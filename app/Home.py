"""Scaling-law workbench dashboard: the entry point (`lab-dashboard`, or `streamlit run app/Home.py`).

Declares the pages with `st.navigation` (the pages live in app/views/; Streamlit's legacy `pages/` folder is not
used): Home, Runs, Loss laws, Hyperparameters, Critical batch size, Schedules,
Forecasts, Export. Everything is read through
`analysis` (app/data.py) and drawn by `analysis.plots`. The store box in the sidebar is built here, before the
page runs, so every page shares it and it keeps its state across pages (app/ui.py).
"""

from __future__ import annotations

import streamlit as st

from app import ui
from app.pages import PAGES

st.set_page_config(page_title="Scaling-law workbench", layout="wide")
page = st.navigation([st.Page(page.path, title=page.title, url_path=page.url, default=page.default)
                      for page in PAGES])
ui.store_box()
page.run()
