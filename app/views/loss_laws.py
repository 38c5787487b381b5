"""Loss laws: points coloured by N with the fitted law, residuals, IsoFLOP profiles, the compute-optimal
frontier N*(C), D*(C) with bands, an extrapolation to a budget the user enters, and a held-out check."""

from __future__ import annotations

import numpy as np
import polars as pl
import streamlit as st

from analysis import plots
from analysis.laws import FORMS, allocation_exponents, compute_optimal
from analysis.laws.isoflop import predict_optimal
from analysis.laws.loglinear import prediction_interval
from analysis.validate import PointsError
from app import data, fits, selection, ui

FINAL, VALIDATION = "final loss of each run", "every validation point"

uri, all_runs = ui.store()
runs = ui.run_filters(all_runs)
st.title("Loss laws")

source = ui.source_picker("loss", ("N", "D", "loss"), "tests/data/chinchilla_points.csv")
c1, c2, c3, c4 = st.columns([2, 3, 1, 1])
if source == "store":
    mode = c1.radio("Points", [FINAL, VALIDATION], key="loss_mode",
                    help="Validation points: every val/loss of every run at the tokens seen then (for ladders too "
                         "small to fit on final losses; a decaying schedule makes early points pessimistic)")
    chosen = selection.pick(runs, "loss", "loss")
    final = chosen.points.frame
    points = final if mode == FINAL else data.validation_points(uri, chosen.points)
else:
    mode, chosen = FINAL, None
    points = final = ui.read_table(source, ("N", "D", "loss"))
form = c2.selectbox("Form", list(FORMS), key="loss_form", format_func=lambda f: f"{f}:  {FORMS[f].formula}")
bootstrap = int(c3.number_input("Bootstrap", 0, 4000, 200, step=100, key="loss_bootstrap"))
exclude = int(c4.number_input("Drop top-loss points", 0, 1000, 0, key="loss_exclude"))
n_runs = points["run_id"].n_unique() if "run_id" in points.columns else points.height
st.caption(f"{points.height} points from {n_runs} "
           f"runs; N from {ui.fmt(points['N'].min())} to {ui.fmt(points['N'].max())}")
if chosen is not None:
    selection.show_feed(chosen)
if points.height == 0:
    st.info("No finished runs with N, D and a validation loss pass the filters.")
    st.stop()
provenance = ui.provenance(uri, chosen, source)
# What the tabs registered for export stays valid while the points and shared settings stay as they are.
ui.begin_page_exports(("loss laws", "isoflop", "held-out check"), (provenance, form, bootstrap, exclude, mode))

tab_fit, tab_iso, tab_holdout = st.tabs(["Fit", "IsoFLOP and frontier", "Held-out check"], key="loss_tab",
                                        on_change="rerun")

if tab_fit.open:  # lazy tabs: a widget change recomputes the open tab only
    with tab_fit:
        ui.begin_exports("loss laws")
        fit = None
        try:  # the point estimate now; its bootstrap in the background (app/fits.py), shown when done
            point = fits.loss_point(points, form, exclude)
            job = fits.loss_fit_job(points, form, bootstrap, exclude, mode == VALIDATION)
            fit = job.result() if job.done() else point
        except (PointsError, RuntimeError) as err:
            st.error(f"Cannot fit {form}: {err}")
        if fit is not None:
            ui.show_law(fit, "Fitted loss law")
            if fit.n_resamples < bootstrap:
                st.caption(f"95% intervals: refitting {bootstrap} bootstrap resamples… they appear here when done")
                ui.rerun_when_done(job)
            if fit.form == "chinchilla":
                alloc = allocation_exponents(fit)
                st.markdown("Compute-optimal allocation N* = G·(C/6)^a, D* = (C/6)^b / G: " + " · ".join(
                    f"**{k}** = {ui.interval(v[0], (v[1], v[2]))}" for k, v in alloc.items()))
        x_options = list(fit.inputs) if fit is not None and len(fit.inputs) == 1 else ["D", "C", "N"]
        x = st.radio("x axis", x_options, horizontal=True, key=f"loss_x_{len(x_options)}")
        fig_points = plots.loss_law(points, fit, x=x)
        ui.chart(fig_points, key="loss_points")
        figures = {"loss_law": fig_points}
        if fit is not None:
            fig_res = plots.residuals(points, fit)
            ui.chart(fig_res, key="loss_residuals")
            figures["residuals"] = fig_res
        if fit is not None and fit.n_resamples == bootstrap:  # exported with its intervals only
            settings = {"form": form, "bootstrap": bootstrap, "exclude_top_loss": exclude, "points": mode}
            ui.register("loss laws", laws={f"loss_law_{fit.form}": fit.to_dict()}, figures=figures,
                        tables={"loss_points": points}, provenance={**provenance, "settings": settings})

if tab_iso.open:  # lazy tabs: a widget change recomputes the open tab only
    with tab_iso:
        rel_tol = st.select_slider("Runs share a budget when their C differ by less than", [0.01, 0.02, 0.05, 0.1,
                                   0.15, 0.2, 0.3], value=0.05, key="iso_tol", format_func=lambda v: f"{v:.0%}")
        ui.begin_exports("isoflop")
        # lab-fit isoflop's points: these runs with the budget an IsoFLOP sweep tagged each with (analysis.points)
        iso_points = final if chosen is None else data.law_points(chosen.points.runs, "isoflop").frame
        if "budget" in iso_points.columns and iso_points["budget"].null_count():
            iso_points = iso_points.drop("budget")
        iso = None
        try:
            iso = fits.isoflop_fit(iso_points, bootstrap, rel_tol)
        except PointsError as err:
            st.warning(f"No IsoFLOP fit: {err}")
        fig_iso = plots.isoflop_profiles(iso_points, iso, rel_tol)
        ui.chart(fig_iso, key="iso_profiles")
        ui.register("isoflop", figures={"isoflop_profiles": fig_iso}, provenance=provenance)
        current = None
        try:  # cached: free when the Fit tab fitted it already
            current = fits.loss_fit(points, form, bootstrap, exclude, mode == VALIDATION)
        except (PointsError, RuntimeError):
            pass  # the Fit tab says why
        chinchilla = current if current is not None and current.form == "chinchilla" else None
        if iso is not None:
            ui.show_law(iso.N_law, "N*(C) from the IsoFLOP minima")
            ui.show_law(iso.D_law, "D*(C) = C / (6·N*)")
            ui.table(iso.budgets)
        if iso is not None or chinchilla is not None:
            c_max = float(final["C"].max())
            target = st.number_input("Extrapolate to a budget C = 6·N·D (FLOPs)", min_value=1.0,
                                     value=float(f"{c_max * 100:.1e}"),
                                     format="%.3e", key="iso_target")
            ui.warn_extrapolation(target, c_max, "budget C")
            cols = st.columns(3)
            if iso is not None:
                a = predict_optimal(iso, target)
                cols[0].metric("N* (IsoFLOP)", ui.fmt(a.N), help=f"95%: {ui.fmt(a.N_ci95[0])}–{ui.fmt(a.N_ci95[1])}")
                cols[0].caption(f"N* = {ui.interval(a.N, a.N_ci95)}")
                cols[1].caption(f"D* = {ui.interval(a.D, a.D_ci95)}; D*/N* = "
                                f"{ui.interval(a.tokens_per_param, a.tokens_per_param_ci95)}")
                ui.warn_tokens_per_param(a.tokens_per_param)
            if chinchilla is not None:
                row = compute_optimal(chinchilla, [target]).row(0, named=True)
                _, lo, hi = (float(v) for v in prediction_interval(chinchilla, row["N_opt"], row["D_opt"]))
                cols[2].metric("Loss at the approach-3 optimum", ui.fmt(row["loss_opt"]))
                cols[2].caption(f"L = {ui.interval(row['loss_opt'], (lo, hi))} at N* = "
                                f"{ui.interval(row['N_opt'], (row['N_opt_lo'], row['N_opt_hi']))}, D* = "
                                f"{ui.interval(row['D_opt'], (row['D_opt_lo'], row['D_opt_hi']))}")
            elif current is not None and current.inputs == ("C",):
                est, lo, hi = (float(v) for v in prediction_interval(current, target))
                cols[2].caption(f"L(C) at the target = {ui.interval(est, (lo, hi))}")
            fig_frontier = plots.compute_frontier(iso, chinchilla, target_C=target)
            ui.chart(fig_frontier, key="iso_frontier")
            ui.register("isoflop", laws={"isoflop": iso.to_dict()} if iso is not None else {},
                        figures={"frontier": fig_frontier, "isoflop_profiles": fig_iso},
                        tables={"isoflop_budgets": iso.budgets} if iso else {},
                        provenance={**provenance, "settings": {"rel_tol": rel_tol, "bootstrap": bootstrap,
                                                               "target_C": target}})

if tab_holdout.open:  # lazy tabs: a widget change recomputes the open tab only
    with tab_holdout:
        ui.begin_exports("held-out check")
        cs = np.unique(points["C"].cast(pl.Float64).to_numpy())
        if cs.size < 3:
            st.info("A held-out check needs points at 3 or more distinct budgets C.")
        else:
            default = cs[int(0.8 * (cs.size - 1))]
            threshold = st.select_slider("Fit on C below, predict C at or above", list(cs), value=default,
                                         key="holdout_C", format_func=lambda v: f"{v:.3g}")
            below = cs[cs < threshold]
            if below.size and below.max() > threshold * (1 - 0.05):
                st.warning(f"C = {below.max():.3g} and {threshold:.3g} differ by less than 5%: one budget is "
                           "likely split between the fit and the held-out runs; move the threshold to a gap "
                           "between budgets")
            try:
                report = fits.holdout(points, form, float(threshold), bootstrap, mode == VALIDATION)
            except (PointsError, RuntimeError) as err:
                st.warning(f"No held-out check: {err}")
            else:
                cols = st.columns(3)
                cols[0].metric("Held-out runs", report.n_test)
                cols[1].metric("Mean |relative error|", f"{report.mean_abs_rel_error:.2%}")
                cols[2].metric("Max |relative error|", f"{report.max_abs_rel_error:.2%}")
                ui.chart(plots.holdout(report.frame, report.C_threshold), key="holdout_fig")
                ui.table(report.frame)
                ui.register("held-out check", laws={"holdout": report.summary()}, tables={"holdout": report.frame},
                            provenance={**provenance, "settings": {"form": form, "C_threshold": float(threshold),
                                                                   "bootstrap": bootstrap}})
