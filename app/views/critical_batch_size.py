"""Critical batch size: the gradient noise scale B_simple over training (recorded by every run), the local CBS
per checkpoint from branch runs with the fitted CBS(D) curve, and the batch-size warmup it proposes."""

from __future__ import annotations

import polars as pl
import streamlit as st

from analysis import plots
from analysis.laws.cbs import CBS_TOLERANCE, propose_batch_warmup
from analysis.validate import PointsError
from tracking.record import Metric, Tag
from analysis.points import DEFAULT_GRANULARITY, cbs_settings
from app import data, fits, selection, ui

uri, all_runs = ui.store()
runs = ui.run_filters(all_runs)
st.title("Critical batch size")
ui.begin_exports("critical batch size")  # what an earlier run of this page registered may no longer be what it shows

st.subheader("Gradient noise scale over training")
labels = ui.run_labels(runs)
picked = st.multiselect("Runs (their noise/b_simple history is loaded for these only)", list(labels),
                        default=ui.default_runs(runs), format_func=labels.get, key="cbs_runs", max_selections=50)
x = st.radio("Against", list(plots.CURVE_X), horizontal=True, key="cbs_x")
noise = data.curves(uri, tuple(picked), (Metric.B_SIMPLE,))
if noise.height:
    fig_noise = plots.noise_scale(noise, runs, x=x)
    ui.chart(fig_noise, key="cbs_noise")
    last = (noise.sort("step").group_by("run_id").agg(pl.col("value").last().alias("B_simple_last"),
                                                      pl.col("tokens").last().alias("at_tokens"))
            .join(runs.select("run_id", "run_name", "N", "B"), on="run_id").select(
                "run_name", "N", "B", "at_tokens", "B_simple_last"))
    ui.table(last)
    ui.register("critical batch size", figures={"noise_scale": fig_noise},
                provenance={"store": uri, "filters": ui.current_filters(), "run_ids": sorted(picked)})
else:
    st.info("Pick runs that recorded noise/b_simple.")

st.subheader("Empirical critical batch size (branches from checkpoints)")
source = ui.source_picker("cbs", ("checkpoint_tokens", "B", "loss", "ref_loss optional"), "branches.csv")
chosen, settings = None, None
if source == "store":
    chosen = selection.pick(runs, "cbs", "cbs")
    branches = chosen.points.frame
    st.caption(f"{branches.height} branch runs (tag `{Tag.BRANCH_OF}`) in the selection")
    selection.show_feed(chosen)
    settings = cbs_settings(all_runs, chosen.points)
else:
    branches = ui.read_table(source, ("checkpoint_tokens", "B", "loss"))
provenance = ui.provenance(uri, chosen, source)
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
    # Defaults read from the runs (the reference run's seq_len, D and micro_batch · devices), as lab-fit cbs does.
    known = settings
    total_default = (known.total_tokens if known and known.total_tokens else local["checkpoint_tokens"].max() * 2)
    seq_default = known.seq_len if known and known.seq_len else 256
    total = k1.number_input("Run length D (tokens)", 1.0, value=float(total_default), format="%.6g", key="cbs_total",
                            help="Default: the reference run's D")
    seq_len = int(k2.number_input("seq_len", 1, 1 << 20, seq_default, key="cbs_seq_len",
                                  help="Default: the reference run's seq_len"))
    granularity = int(k3.number_input("Granularity (micro_batch · devices)", 1, 1 << 16,
                                      known.granularity if known and known.granularity else DEFAULT_GRANULARITY,
                                      key="cbs_gran", help="Default: the reference run's micro_batch · devices"))
    max_sequences = int(k4.number_input("Largest batch (sequences)", 1, 1 << 20,
                                        max(int(branches["B"].max() // seq_len), 1), key="cbs_max",
                                        help="Default: the largest batch measured, as lab-fit cbs"))
    if known is None:
        st.caption("seq_len, granularity and D are defaults here (a table records none of them): set them to your "
                   "run's")
    form = k5.selectbox("Form", ["best", "power", "saturating"] if fit.saturating else ["best", "power"],
                        key="cbs_form")
    try:
        plan = propose_batch_warmup(fit, total, granularity, seq_len, max_sequences,
                                    form=None if form == "best" else form)
    except ValueError as err:
        st.warning(f"No warmup plan: {err}")
    else:
        st.markdown(f"Start at **{plan.start_sequences}** sequences; doubling at "
                    + (", ".join(f"{ui.fmt(t)} tokens → {s}" for t, s in plan.milestones) or "no point before the end"))
        measured = float(local["checkpoint_tokens"].max())
        beyond = [t for t, _ in plan.milestones if t > measured]
        if beyond:
            st.warning(f"{len(beyond)} milestones lie beyond the last checkpoint measured ({ui.fmt(measured)} "
                       "tokens): there the CBS curve is extrapolated")
        st.code("lab-train " + " ".join(plan.to_overrides()), language="bash")
fig_cbs = plots.cbs(local, fit, plan, total)
ui.chart(fig_cbs, key="cbs_curve")
ui.table(local)
ui.register("critical batch size", laws={"cbs": fit.to_dict()} if fit else {}, figures={"cbs": fig_cbs},
            tables={"local_cbs": local}, provenance={**provenance, "settings": {
                "tolerance": tolerance, "bootstrap": bootstrap, "total_tokens": total,
                "reference_B": settings.reference_B if settings else None,
                "seq_len": seq_len if plan else None, "granularity": granularity if plan else None}})
