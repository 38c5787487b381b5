"""Home: what the store holds at a glance, and links to the pages that do the work (app/pages.py)."""

from __future__ import annotations

import polars as pl
import streamlit as st

from app import pages, ui

uri, runs = ui.store()

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
st.page_link(pages.RUNS.path, label="Runs: filter, learning curves, compare")
st.page_link(pages.LOSS_LAWS.path, label="Loss laws: L(N, D), IsoFLOP profiles, compute-optimal frontier")
st.page_link(pages.HYPERPARAMETERS.path, label="Hyperparameters: lr × B landscapes, lr*(N, D), B*(D)")
st.page_link(pages.CRITICAL_BATCH_SIZE.path, label="Critical batch size: noise scale, CBS curve, batch warmup")
st.page_link(pages.SCHEDULES.path, label="Schedules: loss curves of any LR schedule, the schedule to train")
st.page_link(pages.FORECASTS.path, label="Forecasts: recorded forecasts against the runs that landed")
st.page_link(pages.EXPORT.path, label="Export: laws as JSON, tables as CSV/Parquet, figures as HTML/PNG")
