"""Scaling-law workbench dashboard: the entry page (`lab-dashboard`, or `streamlit run app/Home.py`).

What the store holds at a glance; the pages in app/pages/ do the work: Runs, Loss laws, Hyperparameters,
Critical batch size, Export. Everything is read through `analysis` (app/data.py) and drawn by `analysis.plots`.
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from app import ui

st.set_page_config(page_title="Scaling-law workbench", layout="wide")
uri, runs = ui.store_sidebar()

st.title("Scaling-law workbench")
st.caption(f"Store: `{uri}`")
if runs.height == 0:
    st.info("The store has no runs yet. Train some with `lab-train` or `lab-sweep`, then press *Reload data*.")
    st.stop()

finished = runs.filter(pl.col("status") == "FINISHED").height
cols = st.columns(4)
cols[0].metric("Runs", runs.height)
cols[1].metric("Finished", finished)
cols[2].metric("Experiments", runs["experiment"].n_unique())
cols[3].metric("Sweeps", runs["sweep"].drop_nulls().n_unique())

st.subheader("Runs per experiment and sweep")
summary = (runs.group_by(["experiment", "sweep"]).agg(
    runs=pl.len(), finished=(pl.col("status") == "FINISHED").sum(), failed=(pl.col("status") == "FAILED").sum(),
    N_min=pl.col("N").min(), N_max=pl.col("N").max(), C_max=pl.col("C").max(), best_loss=pl.col("loss").min(),
    last_start=pl.col("start_time").max()).sort("last_start", descending=True, nulls_last=True))
ui.table(summary)

st.subheader("Pages")
st.page_link("pages/1_Runs.py", label="Runs: filter, learning curves, compare")
st.page_link("pages/2_Loss_laws.py", label="Loss laws: L(N, D), IsoFLOP profiles, compute-optimal frontier")
st.page_link("pages/3_Hyperparameters.py", label="Hyperparameters: lr × B landscapes, lr*(N, D), B*(D)")
st.page_link("pages/4_Critical_batch_size.py", label="Critical batch size: noise scale, CBS curve, batch warmup")
st.page_link("pages/5_Export.py", label="Export: laws as JSON, tables as CSV/Parquet, figures as HTML/PNG")
