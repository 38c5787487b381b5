"""Runs: filter by experiment, sweep, tag and status; learning curves of the picked runs; compare them.

Curves are read only for the runs picked here (never for the whole store), so a store of 1,000 runs stays
responsive; the runs table itself comes from one cached load of the store's latest metrics.
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from analysis import plots
from app import data, ui

st.set_page_config(page_title="Runs", layout="wide")
uri, all_runs = ui.store_sidebar()
runs = ui.run_filters(all_runs)

st.title("Runs")
ui.table(ui.run_table(runs), height=300)
ui.register("runs", tables={"runs": ui.run_table(runs)})

labels = ui.run_labels(runs)
picked = st.multiselect("Runs to plot and compare (curves are loaded for these only)", list(labels),
                        default=ui.default_runs(runs), format_func=labels.get, key="runs_picked", max_selections=50)
c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
metric = c1.selectbox("Metric", data.METRICS, key="runs_metric")
x = c2.radio("Against", list(plots.CURVE_X), horizontal=True, key="runs_x",
             format_func={"tokens": "tokens D", "C": "C = 6·N·D", "step": "steps S"}.get)
log_x = c3.checkbox("log x", value=True, key="runs_log_x")
log_y = c4.checkbox("log y", value=metric in ("val/loss", "train/loss", "noise/b_simple"), key="runs_log_y")

if not picked:
    st.info("Pick runs above to see their learning curves.")
    st.stop()
curves = data.curves(uri, tuple(picked), (metric,))
if curves.filter(pl.col("metric") == metric).height == 0:
    st.warning(f"None of the picked runs recorded `{metric}`.")
else:
    fig = plots.learning_curves(curves, runs, metric=metric, x=x, log_x=log_x, log_y=log_y)
    ui.chart(fig, key="runs_curves")
    ui.register("runs", figures={"learning_curves": fig})

st.subheader("Compare")
chosen = runs.filter(pl.col("run_id").is_in(picked))
params = [c for c in chosen.columns if c.startswith("param.")]
differ = [c for c in params if chosen[c].n_unique() > 1]
st.caption(f"{len(differ)} of {len(params)} params differ between the picked runs")
ui.table(chosen.select("run_name", "status", "N", "D", "C", "B", "lr", "loss", "best_val_loss", *differ))
