"""Hyperparameters: the lr × B landscape of each (N, D) cell with its optimum and plateau, the laws lr*(N, D)
and B*(D) (Step Law form) and lr*(C), B*(C) (DeepSeek form) with bands, and a calculator for a target run: lr*, B*
and the full recipe (analysis.recipe: batch, steps, warmup, batch warmup as lab-train overrides, with intervals)."""

from __future__ import annotations

import polars as pl
import streamlit as st

from analysis import plots, report
from analysis.laws.hparams import PLATEAU_TOLERANCE, predict_hparams
from analysis.points import DEFAULT_GRANULARITY, run_settings
from analysis.recipe import DEFAULT_SEQ_LEN, recipe
from analysis.validate import PointsError
from app import fits, selection, ui


def edge_cells(points: pl.DataFrame, cells: pl.DataFrame) -> list[str]:
    """Cells whose optimal lr or B is the smallest or largest value swept in that cell."""
    found = []
    lr_col, B_col = ("lr_opt", "B_opt") if "lr_opt" in cells.columns else ("lr_best", "B_best")
    for row in cells.iter_rows(named=True):
        cell = points.filter((pl.col("N") == row["N"]) & (pl.col("D") == row["D"]))
        for column, value in (("lr", row.get(lr_col)), ("B", row.get(B_col))):
            span = cell[column].unique()
            if value is not None and span.len() > 1 and not span.min() * 1.001 < value < span.max() * 0.999:
                found.append(f"N={row['N']:.3g}, D={row['D']:.3g}: {column}* = {value:.3g}")
    return found


uri, all_runs = ui.store()
runs = ui.run_filters(all_runs)
st.title("Hyperparameters")
ui.begin_exports("hyperparameters")  # what an earlier run of this page registered may no longer be what it shows

source = ui.source_picker("hp", ("N", "D", "lr", "B", "loss"), "landscape.csv")
chosen = selection.pick(runs, "hparams", "hp") if source == "store" else None
chosen_runs = chosen
points = chosen.points.frame if chosen else ui.read_table(source, ("N", "D", "lr", "B", "loss"))
c1, c2, c3 = st.columns(3)
tolerance = c1.number_input("Plateau: within this fraction of the best loss", 0.0001, 0.5, PLATEAU_TOLERANCE,
                            step=0.0005, format="%.4f", key="hp_tolerance")
method = c2.selectbox("Optimum per cell", ["auto", "convex", "plateau", "joint"], key="hp_method",
                      help="auto: the method whose laws predict held-out cells best")
bootstrap = int(c3.number_input("Bootstrap", 0, 4000, 200, step=100, key="hp_bootstrap"))
if chosen is not None:
    selection.show_feed(chosen)
provenance = ui.provenance(uri, chosen, source)
if points.height == 0:
    st.info("No finished runs with N, D, lr, B and a final loss pass the filters.")
    st.stop()

fit = None
try:
    fit = fits.hparams_fit(points, method, tolerance, bootstrap)
except PointsError as err:
    st.warning(f"No lr*/B* laws: {err}")
cells = fit.cells if fit is not None else fits.cells(points, tolerance)

st.subheader("Landscape per (N, D) cell")
labels = [f"N={n:.3g}, D={d:.3g} ({k} configs)" for n, d, k in cells.select("N", "D", "n_configs").iter_rows()]
index = max(range(len(labels)), key=lambda i: cells["n_configs"][i])
chosen = st.selectbox("Cell", range(len(labels)), index=index, format_func=labels.__getitem__, key="hp_cell")
cell = cells.row(chosen, named=True)
configs = points.filter((pl.col("N") == cell["N"]) & (pl.col("D") == cell["D"]))
fig_heat = plots.lr_batch_heatmap(configs, cell)
ui.chart(fig_heat, key="hp_heatmap")
st.caption(f"Optimum ({cell['source']}): lr = {ui.fmt(cell.get('lr_opt', cell['lr_convex']))}, "
           f"B = {ui.fmt(cell.get('B_opt', cell['B_convex']))} tokens; plateau of {cell['n_plateau']} configs, "
           f"lr {ui.fmt(cell['lr_plateau_min'])}–{ui.fmt(cell['lr_plateau_max'])}, "
           f"B {ui.fmt(cell['B_plateau_min'])}–{ui.fmt(cell['B_plateau_max'])}")
ui.table(cells)
edge = edge_cells(points, cells)
if edge:
    st.warning(f"The optimum lies on the edge of the grid swept in {len(edge)} cells ({'; '.join(edge[:4])}): the "
               "true optimum may lie beyond it; extend the lr or B range there")
settings = {"method": method, "tolerance": tolerance, "bootstrap": bootstrap}
ui.register("hyperparameters", figures={"lr_batch_heatmap": fig_heat}, tables={"cells": cells},
            provenance={**provenance, "settings": settings})

if fit is not None:
    st.subheader(f"Laws across cells (method: {fit.method})")
    ui.show_law(fit.lr, "lr*(N, D) = coef·N^exp_N·D^exp_D")
    ui.show_law(fit.batch, "B*(D) = coef·D^exp_D (tokens)")
    fig_laws = plots.hparam_laws(fit)
    ui.chart(fig_laws, key="hp_laws")
    with st.expander("DeepSeek form lr*(C), B*(C) and the leave-one-cell-out comparison"):
        ui.show_law(fit.deepseek_lr, "lr*(C) = coef·C^exp_C")
        ui.show_law(fit.deepseek_batch, "B*(C) = coef·C^exp_C (tokens)")
        ui.table(fit.loo)
    ui.register("hyperparameters", laws={"hparams": fit.to_dict()}, figures={"hparam_laws": fig_laws},
                provenance={**provenance, "settings": settings})

    st.subheader("Calculator")
    by = st.radio("Target given by", ["N and D", "C"], horizontal=True, key="hp_calc_by")
    k1, k2 = st.columns(2)
    if by == "N and D":
        N = k1.number_input("N (non-embedding parameters)", 1.0, value=float(f"{cells['N'].max() * 10:.1e}"),
                            format="%.3e", key="hp_calc_N")
        D = k2.number_input("D (tokens)", 1.0, value=float(f"{cells['D'].max() * 10:.1e}"), format="%.3e",
                            key="hp_calc_D")
        pred = predict_hparams(fit, N=N, D=D)
    else:
        C = k1.number_input("C = 6·N·D (FLOPs)", 1.0, value=float(f"{cells['C'].max() * 100:.1e}"), format="%.3e",
                            key="hp_calc_C")
        pred = predict_hparams(fit, C=C)
    if by == "N and D":
        ui.warn_extrapolation(N, float(cells["N"].max()), "N")
        ui.warn_extrapolation(D, float(cells["D"].max()), "D")
    else:
        ui.warn_extrapolation(C, float(cells["C"].max()), "C")
    m1, m2 = st.columns(2)
    m1.metric(f"lr* ({pred.form} form)", ui.fmt(pred.lr))
    m1.caption(f"lr* = {ui.interval(pred.lr, pred.lr_ci95)}")
    m2.metric(f"B* ({pred.form} form, tokens)", ui.fmt(pred.B))
    m2.caption(f"B* = {ui.interval(pred.B, pred.B_ci95)} tokens")

    st.markdown("**Recipe at the target** (as `lab-fit hparams --target-*` prints it)")
    fitted_runs = chosen_runs.points.runs if chosen_runs is not None else None
    seq_recorded, gran_recorded = run_settings(fitted_runs) if fitted_runs is not None else (None, None)
    r1, r2, r3, r4 = st.columns(4)
    seq_len = int(r1.number_input("seq_len", 1, 1 << 20, seq_recorded or DEFAULT_SEQ_LEN, key="hp_recipe_seq_len",
                                  help="Default: the fitted runs' seq_len"))
    granularity = int(r2.number_input("Granularity (micro_batch · devices)", 1, 1 << 16,
                                      gran_recorded or DEFAULT_GRANULARITY, key="hp_recipe_gran",
                                      help="Default: the fitted runs' micro_batch · devices · nodes"))
    ratio = float(r3.number_input("Tokens per parameter (target C only)", 0.1, 1e5, 20.0, key="hp_recipe_ratio",
                                  disabled=by == "N and D"))
    batch_warmup = r4.checkbox("Batch warmup (linear ramp)", True, key="hp_recipe_ramp")
    if seq_recorded is None or gran_recorded is None:
        st.caption("seq_len / granularity are lab-fit's defaults here (the fitted runs record none, or several): "
                   "set them to the planned run's")
    target = {"N": N, "D": D} if by == "N and D" else {"C": C}
    try:
        plan = recipe(fit, seq_len, granularity=granularity, tokens_per_param=ratio, batch_warmup=batch_warmup,
                      **target)
    except ValueError as err:
        st.warning(f"No recipe: {err}")
    else:
        table_text, _, _ = report.recipe_table(plan).rpartition("\nlab-train ")  # the overrides: in the next box
        st.code(table_text, language=None)
        st.code("lab-train " + " ".join(plan.to_overrides()), language="bash")
