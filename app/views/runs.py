"""Runs: filter by experiment, sweep, tag and status; learning curves of a whole sweep or of the runs picked,
coloured by a param and smoothed; compare them. Deep links: `?sweep=ID` opens on a sweep, `?runs=ID,ID` on runs.

Curves are read only for the runs plotted (never for the whole store), so a store of 1,000 runs stays
responsive; the runs table itself comes from one cached load of the store's latest metrics.
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from analysis import plots
from analysis.points import SWEEP, branch_runs
from app import data, ui
from tracking.record import Metric

PICK = "runs picked below"
MAX_PLOTTED = 50

uri, all_runs = ui.store()
runs = ui.run_filters(all_runs)

st.title("Runs")
ui.table(ui.run_table(runs), height=300)
ui.register("runs", tables={"runs": ui.run_table(runs)}, provenance={"store": uri, "filters": ui.current_filters()})

# Sweeps most recent first; sweeps of runs trained from scratch before those of CBS branches (a few points each)
# and before sweeps whose runs all failed.
branch_ids = set(branch_runs(runs)["run_id"].to_list())
order = (runs.drop_nulls(SWEEP).with_columns(branch=pl.col("run_id").is_in(list(branch_ids)),
                                                failed=pl.col("status") != "FINISHED")
         .group_by(SWEEP).agg(pl.col("branch").all(), pl.col("failed").all(), pl.col("start_time").max())
         .sort(["branch", "failed", "start_time"], descending=[False, False, True], nulls_last=True))
sweeps = order[SWEEP].to_list()
linked_runs = [r for r in (st.query_params.get("runs") or "").split(",") if r in set(runs["run_id"].to_list())]
linked_sweep = st.query_params.get("sweep")
options = [*sweeps, PICK]
index = options.index(linked_sweep) if linked_sweep in options else (len(sweeps) if linked_runs or not sweeps else 0)
sweep = st.selectbox("Plot", options, index=index, key="runs_sweep",
                     format_func=lambda s: s if s == PICK else f"all runs of sweep {s}")
labels = ui.run_labels(runs)
if sweep == PICK:
    default = linked_runs or ui.default_runs(runs)
    st.query_params.pop("sweep", None)
else:
    default = runs.filter(pl.col(SWEEP) == sweep).sort("run_name")["run_id"].head(MAX_PLOTTED).to_list()
    if sweep != options[0] or linked_sweep:  # a deep link to what is shown; the default needs none
        st.query_params["sweep"] = sweep
picker_key = f"runs_picked_{'picked' if sweep == PICK else sweep}"  # one picker per sweep: its own default
picked = st.multiselect("Runs to plot and compare (curves are loaded for these only)", list(labels),
                        default=default, format_func=labels.get, key=picker_key,
                        max_selections=MAX_PLOTTED)
if sweep == PICK and picked:
    st.query_params["runs"] = ",".join(picked)
c1, c2, c3, c4, c5, c6 = st.columns([2, 2, 2, 2, 1, 1])
metric = c1.selectbox("Metric", data.METRICS, key="runs_metric")
x = c2.radio("Against", list(plots.CURVE_X), horizontal=True, key="runs_x",
             format_func={"tokens": "tokens D", "C": "C = 6·N·D", "step": "steps S"}.get)
numeric = [c for c, t in runs.schema.items() if t.is_numeric() and c not in ("steps",)]
color_options = ["run"] + [c for c in ("N", "D", "C", "B", "lr") if c in numeric] + sorted(
    c for c in runs.columns if c.startswith("param.") and runs[c].cast(pl.Float64, strict=False).null_count()
    < runs.height)
color_by = c3.selectbox("Colour by", color_options, index=1 if len(color_options) > 1 else 0, key="runs_color")
smoothing = c4.slider("Smoothing", 0.0, 0.99, 0.0, 0.01, key="runs_smoothing",
                      help="Exponential moving average of the values (debiased), as TensorBoard's slider")
log_x = c5.checkbox("log x", value=True, key="runs_log_x")
log_y = c6.checkbox("log y", value=metric in (Metric.VAL_LOSS, Metric.TRAIN_LOSS, Metric.B_SIMPLE), key="runs_log_y")

if not picked:
    st.info("Pick runs above to see their learning curves.")
    st.stop()
curves = data.curves(uri, tuple(picked), (metric,))
if curves.filter(pl.col("metric") == metric).height == 0:
    st.warning(f"None of the picked runs recorded `{metric}`.")
else:
    fig = plots.learning_curves(curves, runs, metric=metric, x=x, log_x=log_x, log_y=log_y,
                                color_by=None if color_by == "run" else color_by, smoothing=smoothing)
    ui.chart(fig, key="runs_curves")
    ui.register("runs", figures={"learning_curves": fig},
                provenance={"store": uri, "filters": ui.current_filters(), "run_ids": sorted(picked)})

st.subheader("Compare")
chosen = runs.filter(pl.col("run_id").is_in(picked))
params = [c for c in chosen.columns if c.startswith("param.")]
differ = [c for c in params if chosen[c].n_unique() > 1]
st.caption(f"{len(differ)} of {len(params)} params differ between the picked runs")
ui.table(chosen.select("run_name", "status", "N", "D", "C", "B", "lr", "loss", "best_val_loss", *differ))
