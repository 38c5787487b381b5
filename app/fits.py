"""Cached fits for the dashboard pages: each law is fitted once per (points, settings).

`st.cache_data` hashes the polars point frames it is given, so a widget change that leaves the points and the
settings alone reuses the fit; the results are frozen dataclasses from `analysis.laws`.

The loss law is fitted in two stages, because its bootstrap can take seconds where the point estimate takes a
fraction of one: a resample whose optimum lies along a nearly flat valley (a form the points barely determine)
runs thousands of L-BFGS iterations, and every refit must converge for its interval to be right. The point
estimate is computed in the script run; the bootstrap, warm-started from it, runs in a worker thread whose
Future is cached per (points, settings), so a widget change shows the new law at once and its intervals when
they are done, and a second change back finds them finished.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import polars as pl
import streamlit as st

from analysis.extrapolate import HoldoutReport, holdout_check
from analysis.fitting import FitResult
from analysis.laws import fit_loss
from analysis.laws.cbs import CbsFit, fit_cbs_curve, local_cbs
from analysis.laws.hparams import HparamsResult, fit_hparams, landscape_cells
from analysis.laws.isoflop import IsoflopResult, fit_isoflop
from analysis.points import recorded_reference_B
from analysis.validate import PointsError


BOOTSTRAPS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loss-bootstrap")
"""One worker: bootstraps queue rather than share the CPU with each other and with the pages' script runs."""


@st.cache_data(show_spinner="Fitting the loss law…", max_entries=32)
def loss_point(points: pl.DataFrame, form: str, exclude_top_loss: int) -> FitResult:
    """`fit_loss` without a bootstrap: the law's point estimate (no intervals)."""
    return fit_loss(points, form=form, bootstrap=0, exclude_top_loss=exclude_top_loss)


@st.cache_resource(show_spinner=False, max_entries=32)
def loss_fit_job(points: pl.DataFrame, form: str, bootstrap: int, exclude_top_loss: int, by_run: bool
                 ) -> Future[FitResult]:
    """The full fit (`fit_loss` with its bootstrap, warm-started from `loss_point`'s optimum) in the worker
    thread; by_run resamples whole runs (several validation points per run). Raises as loss_point does."""
    point = loss_point(points, form, exclude_top_loss)
    groups = "run_id" if by_run and "run_id" in points.columns else None
    return BOOTSTRAPS.submit(fit_loss, points, form=form, bootstrap=bootstrap, exclude_top_loss=exclude_top_loss,
                             groups=groups, optimum=point)


def loss_fit(points: pl.DataFrame, form: str, bootstrap: int, exclude_top_loss: int, by_run: bool) -> FitResult:
    """The full fit, waiting for its bootstrap (the same job the Fit tab started, so it runs once)."""
    return loss_fit_job(points, form, bootstrap, exclude_top_loss, by_run).result()


@st.cache_data(show_spinner="Checking the extrapolation…", max_entries=32)
def holdout(points: pl.DataFrame, form: str, C_threshold: float, bootstrap: int, by_run: bool = False
            ) -> HoldoutReport:
    """`holdout_check`; by_run (several validation points per run) holds out and resamples whole runs."""
    groups = "run_id" if by_run and "run_id" in points.columns else None
    return holdout_check(points, form, C_threshold, bootstrap=bootstrap, groups=groups)


@st.cache_data(show_spinner="Fitting IsoFLOP profiles…", max_entries=32)
def isoflop_fit(points: pl.DataFrame, bootstrap: int, rel_tol: float) -> IsoflopResult:
    return fit_isoflop(points, bootstrap=bootstrap, rel_tol=rel_tol)


@st.cache_data(show_spinner="Fitting lr* and B*…", max_entries=32)
def hparams_fit(points: pl.DataFrame, method: str, tolerance: float, bootstrap: int) -> HparamsResult:
    return fit_hparams(points, method=method, tolerance=tolerance, bootstrap=bootstrap)


@st.cache_data(max_entries=32)
def cells(points: pl.DataFrame, tolerance: float) -> pl.DataFrame:
    return landscape_cells(points, tolerance=tolerance)


@st.cache_data(show_spinner="Fitting the CBS curve…", max_entries=32)
def cbs_fit(branches: pl.DataFrame, tolerance: float, bootstrap: int) -> tuple[pl.DataFrame, CbsFit | None, str]:
    """(local CBS per checkpoint, the CBS(D) fit or None, why there is no fit). Each checkpoint is compared with
    its branch at the reference run's batch when the branches record one (column B_ref), else at its smallest B."""
    reference_B = recorded_reference_B(branches["B_ref"]) if "B_ref" in branches.columns else None
    local = local_cbs(branches.select("checkpoint_tokens", "B", "loss", *(["ref_loss"] if "ref_loss" in branches.columns
                                                                         else [])),
                      tolerance=tolerance, reference_B=reference_B)
    try:
        return local, fit_cbs_curve(local, bootstrap=bootstrap), ""
    except PointsError as err:
        return local, None, str(err)


@st.cache_data(show_spinner="Reading the runs' lr and loss curves…", max_entries=16)
def schedule_store_curves(uri: str, runs: pl.DataFrame, fit_runs: tuple[str, ...], metric: str
                          ) -> tuple[dict, dict[str, str], list[str]]:
    """`analysis.cli_schedule.store_curves` (what lab-fit schedule --tracking-uri reads, its default smoothing and
    thinning): (curves, run names, what it said about skipped runs)."""
    from analysis.cli_schedule import store_curves

    notes: list[str] = []
    curves, names = store_curves(uri, runs, list(fit_runs), metric, say=lambda message, warn=False: notes.append(
        message) if warn else None)
    return curves, names, notes


@st.cache_data(show_spinner="Fitting the schedule law…", max_entries=16)
def schedule_fit(curves: dict, fit_runs: tuple[str, ...], names: dict[str, str], form: str, bootstrap: int):
    """`analysis.cli_schedule.fit_curves` with lab-fit schedule's defaults (delta, seed, skip fraction): (fit, one
    row per run with its errors, the observed/predicted frame, the fitted curves)."""
    from analysis.cli_schedule import fit_curves

    return fit_curves(curves, list(fit_runs), names, form, bootstrap, delta=1e-3, seed=0)


@st.cache_data(show_spinner="Choosing the schedule…", max_entries=16)
def schedule_choice(_fit, fit_key: str, steps: int, peak_lr: float, warmup: int):
    """`analysis.laws.schedule_choose.choose_schedule` (lab-fit schedule --choose-steps); fit_key identifies the
    fit (the fit itself is not hashed)."""
    from analysis.laws.schedule_choose import choose_schedule

    return choose_schedule(_fit, steps, peak_lr, warmup)
