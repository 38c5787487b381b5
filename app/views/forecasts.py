"""Forecasts: the forecasts recorded in the store (`lab-fit forecast`, runs tagged `Tag.FORECAST`), each with its
law, target, predictions with 95% intervals and leave-one-out sensitivity, and, where a run at the target has
landed, forecast against realised and the error (`analysis.cli_forecast.compare`, what `lab-fit forecast --check`
prints). The page reads only; "Tag the forecasts with their checks" writes what --check writes
(`tracking.forecasts.record_check`)."""

from __future__ import annotations

import polars as pl
import streamlit as st

from analysis.cli_forecast import REL_TOL, compare
from analysis.points import training_runs
from app import data, ui
from tracking.forecasts import record_check

uri, all_runs = ui.store()
st.title("Forecasts")
ui.begin_exports("forecasts")
st.caption("Record one before paying for the run: `lab-fit forecast --tracking-uri URI --sweep S --law "
           "loss|isoflop|hparams --target-N N --target-D D` (or `--target-C C`); check it here when the run lands.")

experiments = tuple(sorted(all_runs["experiment_id"].drop_nulls().unique().to_list())) if all_runs.height else ()
recorded = data.forecasts(uri, experiments)
if not recorded:
    st.info("No forecast recorded in this store yet (runs tagged by `lab-fit forecast`).")
    st.stop()
landed_runs = training_runs(all_runs).filter(pl.col("status") == "FINISHED")
rel_tol = st.number_input("A run has landed at the target when its N and D (or C) are within", 0.001, 1.0, REL_TOL,
                          step=0.01, format="%.3f", key="fc_rel_tol", help="lab-fit forecast --check --rel-tol")
names = dict(zip(all_runs["run_id"].to_list(), all_runs["run_name"].to_list()))

summary, details, checks = [], [], []
for f in sorted(recorded, key=lambda f: f["run_id"]):
    found = compare(f, landed_runs, rel_tol)
    rows = []
    for q, p in f["predictions"].items():
        error = found["error"].get(q) if found else None
        within = found["within_ci95"].get(q) if found else None
        rows.append({"quantity": q, "forecast": p["value"], "95% low": p["lo"], "95% high": p["hi"],
                     "realised": found["realised"].get(q) if found else None, "error %": None if error is None
                     else 100 * error, "in 95% CI": within})
    details.append((f, found, pl.DataFrame(rows, schema_overrides={"realised": pl.Float64, "error %": pl.Float64,
                                                                   "95% low": pl.Float64, "95% high": pl.Float64,
                                                                   "in 95% CI": pl.Boolean})))
    errors = ", ".join(f"{q} {100 * e:+.3g}%" for q, e in found["error"].items()) if found else ""
    summary.append({"forecast run": f["run_id"], "law": f["law"], "target": f["target_label"],
                    "fitted runs": len(f.get("runs", [])),
                    "landed run": names.get(found["landed_run"], found["landed_run"]) if found
                    else "no run at the target yet", "error (realised / forecast − 1)": errors,
                    "tagged with a check": f.get("checked_run") or ""})
    if found:
        checks.append((f["run_id"], found))

st.subheader(f"{len(recorded)} forecasts, {len(checks)} with a run at their target")
table = pl.DataFrame(summary)
ui.table(table)
ui.register("forecasts", tables={"forecasts": table}, provenance={"store": uri, "run_ids": [f["run_id"] for f in
                                                                                            recorded]})
if checks and st.button("Tag the forecasts with their checks", key="fc_record",
                        help="What lab-fit forecast --check writes: the landed run, realised values and errors"):
    for run_id, found in checks:
        record_check(uri, run_id, found["landed_run"], found["realised"], found["error"])
    data.forecasts.clear()
    st.rerun()

for f, found, rows in details:
    title = f"{f['law']} at {f['target_label']} — {f['run_id'][:8]}"
    with st.expander(title, expanded=len(details) == 1 or found is not None):
        extra = f", method {f['method']}" if f.get("method") else ""
        st.caption(f"Fitted on {len(f.get('runs', []))} runs (digest `{f['runs_digest'][:12]}`), "
                   f"{f.get('bootstrap', '?')} bootstrap resamples{extra}. "
                   + (f"Landed run: `{names.get(found['landed_run'], found['landed_run'])}` "
                      f"({found['landed_run'][:8]})." if found else "No run has landed at the target yet."))
        ui.table(rows)
        for s in f.get("sensitivity") or []:
            st.markdown(f"Sensitivity: the forecast refitted leaving one **{s['left_out']}** out")
            ui.table(pl.DataFrame(s["summary"], strict=False, infer_schema_length=None))
        if found and any(w is False for w in found["within_ci95"].values()):
            st.warning("The realised value lies outside the forecast's 95% interval: the law, or its interval, "
                       "did not hold at this target")
