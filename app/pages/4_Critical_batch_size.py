"""Critical batch size: the gradient noise scale B_simple over training (recorded by every run), the local CBS
per checkpoint from branch runs with the fitted CBS(D) curve, and the batch-size warmup it proposes."""

from __future__ import annotations

import polars as pl
import streamlit as st

from analysis import plots
from analysis.laws.cbs import CBS_TOLERANCE, propose_batch_warmup
from analysis.validate import PointsError
from app import data, fits, ui

st.set_page_config(page_title="Critical batch size", layout="wide")
uri, all_runs = ui.store_sidebar()
runs = ui.run_filters(all_runs)
st.title("Critical batch size")

st.subheader("Gradient noise scale over training")
labels = ui.run_labels(runs)
picked = st.multiselect("Runs (their noise/b_simple history is loaded for these only)", list(labels),
                        default=ui.default_runs(runs), format_func=labels.get, key="cbs_runs", max_selections=50)
x = st.radio("Against", list(plots.CURVE_X), horizontal=True, key="cbs_x")
noise = data.curves(uri, tuple(picked), ("noise/b_simple",))
if noise.height:
    fig_noise = plots.noise_scale(noise, runs, x=x)
    ui.chart(fig_noise, key="cbs_noise")
    last = (noise.sort("step").group_by("run_id").agg(pl.col("value").last().alias("B_simple_last"),
                                                      pl.col("tokens").last().alias("at_tokens"))
            .join(runs.select("run_id", "run_name", "N", "B"), on="run_id").select(
                "run_name", "N", "B", "at_tokens", "B_simple_last"))
    ui.table(last)
    ui.register("critical batch size", figures={"noise_scale": fig_noise})
else:
    st.info("Pick runs that recorded noise/b_simple.")

st.subheader("Empirical critical batch size (branches from checkpoints)")
branches_in_store = data.branch_points(runs)
st.caption(f"{branches_in_store.height} branch runs in the store (runs tagged with `checkpoint_tokens`)")
source = ui.source_picker("cbs", ("checkpoint_tokens", "B", "loss", "ref_loss optional"), "branches.csv")
branches = branches_in_store if source == "store" else data.table(source, ("checkpoint_tokens", "B", "loss"))
c1, c2 = st.columns(2)
tolerance = c1.number_input("ε: a branch is as good as the reference within", 0.001, 0.5, CBS_TOLERANCE,
                            step=0.005, format="%.3f", key="cbs_tolerance")
bootstrap = int(c2.number_input("Bootstrap", 0, 4000, 200, step=100, key="cbs_bootstrap"))
if branches.height < 2:
    st.info("No branch data: run the CBS branch protocol, or give a table with checkpoint_tokens, B (tokens), "
            "loss (and optionally ref_loss).")
    st.stop()
try:
    local, fit, why = fits.cbs_fit(branches, tolerance, bootstrap)
except PointsError as err:
    st.warning(f"No local CBS: {err}")
    st.stop()
if fit is None:
    st.warning(f"No CBS curve: {why}")
else:
    ui.show_law(fit.power, "Power law CBS(D)" + (" — best by AIC" if fit.best == "power" else ""))
    if fit.saturating is not None:
        ui.show_law(fit.saturating, "Rise then plateau CBS(D)" + (" — best by AIC" if fit.best == "saturating" else ""))

plan, total = None, None
if fit is not None:
    st.subheader("Proposed batch-size warmup")
    k1, k2, k3, k4, k5 = st.columns(5)
    total = k1.number_input("Run length D (tokens)", 1.0, value=float(f"{local['checkpoint_tokens'].max() * 2:.1e}"),
                            format="%.3e", key="cbs_total")
    seq_len = int(k2.number_input("seq_len", 1, 1 << 20, 256, key="cbs_seq_len"))
    granularity = int(k3.number_input("Granularity (micro_batch · devices)", 1, 1 << 16, 8, key="cbs_gran"))
    max_sequences = int(k4.number_input("Largest batch (sequences)", 1, 1 << 20, 1024, key="cbs_max"))
    form = k5.selectbox("Form", ["best", "power", "saturating"] if fit.saturating else ["best", "power"],
                        key="cbs_form")
    try:
        plan = propose_batch_warmup(fit, total, granularity, seq_len, max_sequences,
                                    form=None if form == "best" else form)
    except ValueError as err:
        st.warning(f"No warmup plan: {err}")
    else:
        st.markdown(f"Start at **{plan.start_sequences}** sequences; doubling at "
                    + (", ".join(f"{t:,} tokens → {s}" for t, s in plan.milestones) or "no point before the end"))
        st.code("lab-train " + " ".join(plan.to_overrides()), language="bash")
fig_cbs = plots.cbs(local, fit, plan, total)
ui.chart(fig_cbs, key="cbs_curve")
ui.table(local)
ui.register("critical batch size", laws={"cbs": fit.to_dict()} if fit else {}, figures={"cbs": fig_cbs},
            tables={"local_cbs": local})
