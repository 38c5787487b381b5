"""Schedules: fit a schedule-aware loss-curve law (Multi-Power Law, LR-annealing law: analysis.laws.schedule) to a
few runs of one model size under different LR schedules, see observed against predicted curves (held-out runs
included), the parameters with intervals and each run's errors, and choose the schedule that minimises the
predicted final loss, compared with cosine and WSD and downloadable as the table lab-train runs
(optim.schedule=table). The same functions as `lab-fit schedule` (analysis.cli_schedule) do the work."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import streamlit as st

from analysis import plots
from analysis.cli_input import CliError
from analysis.cli_schedule import FORMULAS, METRICS, choice_settings
from analysis.laws import schedule_forms as sf
from analysis.laws.schedule import SCHEMA, ScheduleInputError, curves_from_frame
from analysis.laws.schedule_choose import comparisons, write_lr_table
from analysis.lineage import mixed_data_warning
from analysis.points import schedule_of, schedule_runs, training_runs
from app import fits, ui
from tracking.record import Design, Metric, Role, Tag

# lab-sweep's config for a design is conf/sweep/<design>.yaml, so the command names the design.
HOW_TO_STUDY = ("No runs of one model size and one batch size under different LR schedules pass the filters, and "
                "a fit to a mix of sizes or batch sizes is no schedule law. Run a schedule study (runs tagged design "
                f"`{Design.SCHEDULES}`, each with its `{Tag.SCHEDULE_NAME}` and role `{Role.FIT}` or `{Role.HELD_OUT}`):"
                f"\n\n    lab-sweep sweep={Design.SCHEDULES} ...\n\nor pick runs by hand below.")
FIT_DEFAULT = 3  # a table's first three runs: the papers fit three (cosine, constant and a two-stage drop)
MAX_RUNS = 24  # curves read and drawn at once

uri, all_runs = ui.store()
runs = ui.run_filters(all_runs)
st.title("Schedules")
ui.begin_exports("schedules")
st.caption("Runs of **one model at one batch size** under different LR schedules: the law takes each run's LR "
           "sequence as its only input (`lab-fit schedule`). Fit it on a few, read how well it predicts the others.")


def _label(run_id: str, names: dict[str, str], schedules: dict[str, str]) -> str:
    return f"{names.get(run_id, run_id)} ({schedules.get(run_id) or '?'}, {run_id[:6]})"


source = ui.source_picker("sched", SCHEMA, "curves.csv")
notes: list[str] = []
try:
    if source == "store":
        done = training_runs(runs).filter((pl.col("status") == "FINISHED") & pl.col("N").is_not_null())
        if done.height == 0:
            st.info("No finished runs with a model size pass the filters.")
            st.stop()
        default = schedule_runs(done)  # the schedule study, else one (N, B) group of >= 2 schedules (analysis.points)
        if default is None:
            st.info(HOW_TO_STUDY)
        else:
            st.caption(f"Default: {default.note} (N = {ui.fmt(default.N)}, B = {ui.fmt(default.B)} tokens).")
        counts = done.group_by("N").len().sort(["len", "N"], descending=[True, False])
        sizes = counts["N"].to_list()
        N = st.selectbox("Model size N (one model: the law describes one)", sizes, key="sched_N",
                         index=sizes.index(default.N) if default is not None else 0,
                         format_func=lambda n: f"{n:.4g} ({counts.filter(pl.col('N') == n)['len'][0]} runs)")
        of_size = done.filter(pl.col("N") == N).sort("start_time", nulls_last=True)
        names = dict(zip(of_size["run_id"].to_list(), of_size["run_name"].to_list()))
        schedules = dict(zip(of_size["run_id"].to_list(), schedule_of(of_size).to_list()))
        ids = of_size["run_id"].to_list()
        # Another size picked by hand: its runs are offered, and the user says which to fit (no guess at a mix).
        mine = default is not None and N == default.N
        shown = st.multiselect("Runs (their lr and loss curves are read)", ids, key="sched_runs",
                               default=[*default.fit, *default.held_out][:MAX_RUNS] if mine else ids[:12],
                               format_func=lambda r: _label(r, names, schedules), max_selections=MAX_RUNS)
        fit_ids = st.multiselect("Fit the law on", shown, key="sched_fit",
                                 default=[r for r in default.fit if r in shown] if mine else [],
                                 format_func=lambda r: _label(r, names, schedules))
        metric = st.radio("Loss curve", METRICS, index=METRICS.index(Metric.VAL_LOSS),
                          horizontal=True, key="sched_metric")
        if not fit_ids:
            st.info("Pick the runs to fit the law on (three schedules: e.g. cosine, constant, a two-stage drop).")
            st.stop()
        picked = of_size.filter(pl.col("run_id").is_in(shown))
        if picked["B"].n_unique() > 1:
            st.warning(f"These runs train at {picked['B'].n_unique()} batch sizes {sorted(picked['B'].unique())}: "
                       "the law describes one model at one batch size (the LR sequence is its only input); pick "
                       "runs of one batch size")
        if (mixed := mixed_data_warning(picked)) is not None:
            st.warning(mixed.removeprefix("warning: "))
        curves, names, notes = fits.schedule_store_curves(uri, picked, tuple(fit_ids), metric)
        provenance = {"store": uri, "filters": ui.current_filters(), "run_ids": sorted(shown),
                      "settings": {"N": N, "metric": metric, "fit_runs": fit_ids}}
    else:
        metric = None
        curves = curves_from_frame(ui.read_table(source, SCHEMA))
        names = {r: r for r in curves}
        ids = list(curves)
        fit_ids = st.multiselect("Fit the law on", ids, default=ids[:FIT_DEFAULT], key="sched_fit")
        if not fit_ids:
            st.info("Pick the runs to fit the law on.")
            st.stop()
        provenance = {"store": None, "table": source, "run_ids": ids, "settings": {"fit_runs": fit_ids}}
    c1, c2 = st.columns(2)
    form = c1.selectbox("Law", sf.FORMS, key="sched_form", help="Multi-Power Law (Luo et al. 2025, 7 parameters) or "
                        "the LR-annealing law (Tissue et al. 2024, 4 parameters)")
    bootstrap = int(c2.number_input("Bootstrap (resamples of runs)", 0, 4000, 200, step=100, key="sched_bootstrap"))
    fit, rows, predictions, fitted = fits.schedule_fit(curves, tuple(fit_ids), names, form, bootstrap)
except (CliError, ScheduleInputError) as err:
    st.warning(f"No schedule law: {err}")
    st.stop()
for note in notes:
    st.caption(note)
provenance["settings"] = {**provenance["settings"], "form": form, "bootstrap": bootstrap}

st.subheader("Observed vs predicted")
fig_curves = plots.schedule_curves(predictions, names)
ui.chart(fig_curves, key="sched_curves")
errors = pl.DataFrame(rows).select(
    "run_name", "fitted", "steps", "points", "final_loss", "predicted_final",
    (100 * pl.col("mean_rel_error")).alias("mean rel err %"), (100 * pl.col("max_rel_error")).alias("max rel err %"),
    (100 * (pl.col("predicted_final") / pl.col("final_loss") - 1)).alias("final rel err %"), "run_id")
ui.table(errors)
ui.show_law(fit, f"{form}: {FORMULAS[form]}")
ui.register("schedules", laws={"schedule": {**fit.to_dict(), "formula": FORMULAS[form], "metric": metric,
                                            "runs": rows}},
            figures={"schedule_curves": fig_curves}, tables={"schedule_errors": errors, "schedule_predictions":
                                                              predictions}, provenance=provenance)

st.subheader("Choose a schedule")
peak_default, warmup_default = choice_settings(fit, fitted[0])
k1, k2, k3 = st.columns(3)
steps = int(k1.number_input("Total steps", 2, 10_000_000, int(fitted[0].lr.size), key="sched_steps",
                            help="Default: the first fitted run's"))
peak = float(k2.number_input("Peak lr", 0.0, 10.0, float(peak_default), format="%.3e", key="sched_peak",
                             help="Default: the fitted runs' peak"))
warmup = int(k3.number_input("Warmup steps", 0, 10_000_000, int(warmup_default), key="sched_warmup",
                             help="Default: the first fitted run's warmup"))
try:
    choice = fits.schedule_choice(fit, repr((fit.form, fit.params, fit.fit_runs)), steps, peak, warmup)
except ValueError as err:
    st.warning(f"No schedule: {err}")
    st.stop()
finals = pl.DataFrame({"schedule": list(choice.predicted_final), "predicted final loss":
                       list(choice.predicted_final.values())})
m = st.columns(len(choice.predicted_final))
for col, (name, value) in zip(m, choice.predicted_final.items()):
    col.metric(f"{name}: predicted final loss", ui.fmt(value))
lowest = float(predictions["loss"].min())
odd = {k: v for k, v in choice.predicted_final.items() if not (v == v and v > 0.5 * lowest)}
if odd:
    st.warning(f"Predicted final losses {', '.join(f'{k} {ui.fmt(v)}' for k, v in odd.items())} lie far below the "
               f"lowest loss measured ({ui.fmt(lowest)}) or are undefined: the law is extrapolating beyond what its "
               "runs support (see the parameters at a bound); fit on more, longer runs before trusting the choice")
fig_choice = plots.schedule_choice(choice.lr(), comparisons(steps, peak, warmup), choice.predicted_final)
ui.chart(fig_choice, key="sched_choice")
knots = pl.DataFrame({"fraction": choice.fractions, "lr_multiplier": choice.multipliers})
with tempfile.TemporaryDirectory() as folder:  # the file lab-fit schedule --table-out writes
    table_bytes = write_lr_table(choice, Path(folder) / "chosen.csv").read_bytes()
st.download_button("Chosen schedule table (CSV, for lab-train)", table_bytes, "chosen_schedule.csv", "text/csv",
                   key="sched_table", on_click="ignore")
st.code(f"lab-train optim.schedule=table optim.table=chosen_schedule.csv optim.lr={peak:g}", language="bash")
ui.table(knots)
ui.register("schedules", laws={"schedule_choice": choice.to_dict()}, figures={"schedule_choice": fig_choice},
            tables={"schedule_table": knots, "schedule_finals": finals}, provenance=provenance)
