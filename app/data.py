"""Cached store access for the dashboard: every query of the tracking store goes through here.

Streamlit reruns a page's script on each widget change; `st.cache_data` keeps the runs frame and the curves of
the selected runs keyed by their arguments, so a widget change that does not change what is read queries
nothing. Runs are read once per store (all experiments; filtering happens in memory), curves only for the runs
a page shows (a store of 1,000 runs x 1,000 steps holds millions of metric rows). "Reload data" in the sidebar
clears these caches.

Tidy frames are those of `analysis.load`; the point frames handed to the laws use the columns of design §4.
This module imports no fitting code (scipy takes seconds to import): Home and Runs show data without it;
the fits live in app/fits.py.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import streamlit as st

from analysis.load import load_curves, load_runs, load_table
from analysis.load.frames import CURVE_COLUMNS
from analysis import points
from analysis.points import POINT_COLUMNS, Points
from tracking.record import Metric

STORE_TTL_S = 600  # a store being written by a sweep changes; the sidebar's "Reload data" refreshes sooner
METRICS = (Metric.VAL_LOSS, Metric.TRAIN_LOSS, Metric.VAL_BPB, Metric.LR, Metric.GRAD_NORM, Metric.B_SIMPLE,
           Metric.BATCH_TOKENS, Metric.TOKENS_PER_S, Metric.MFU)
"""Per-step metrics that lab-train records (design §5), offered for learning curves."""


@st.cache_data(ttl=STORE_TTL_S, show_spinner="Loading runs…")
def runs(uri: str) -> pl.DataFrame:
    """Every active run of the store (one row per run; schema of `analysis.load.load_runs`)."""
    return load_runs(uri)


@st.cache_data(ttl=STORE_TTL_S, show_spinner="Loading curves…", max_entries=64)
def curves(uri: str, run_ids: tuple[str, ...], metrics: tuple[str, ...]) -> pl.DataFrame:
    """The metric histories of the given runs only (schema of `analysis.load.load_curves`)."""
    if not run_ids:  # nothing selected: no query (an empty IN () list is not valid SQL)
        return pl.DataFrame(schema=CURVE_COLUMNS)
    return load_curves(uri, run_ids=list(run_ids), metrics=list(metrics))


@st.cache_data(show_spinner="Reading table…", max_entries=16)
def _table(path: str, mtime_ns: int, required: tuple[str, ...]) -> pl.DataFrame:
    return load_table(path, required=required)


def table(path: str, required: tuple[str, ...]) -> pl.DataFrame:
    """A CSV/Parquet table of points (re-read when the file changes)."""
    p = Path(path).expanduser()
    mtime = p.stat().st_mtime_ns if p.is_file() else 0  # a missing file: load_table names it in its error
    return _table(str(p), mtime, required)


def clear_store_caches() -> None:
    runs.clear()
    curves.clear()
    forecasts.clear()


# --- points for the laws: analysis.points, the stage lab-fit uses too -----------------------------------------

def law_points(runs_frame: pl.DataFrame, law: str) -> Points:
    """The points of `law` among the runs shown (analysis.points.law_points: the selection lab-fit makes)."""
    return points.law_points(runs_frame, law)


def final_points(runs_frame: pl.DataFrame) -> pl.DataFrame:
    """One point per finished run trained from scratch, of a loss-law design: N, D, C = 6·N·D, B, lr, final L."""
    return law_points(runs_frame, "loss").frame


def validation_points(uri: str, chosen: Points, mode: str = "all") -> pl.DataFrame:
    """One point per validation of each run of `chosen` (`analysis.points.validation_points`): D = tokens seen
    then, C = 6·N·D then, L = val/loss then, `point` = final | intermediate. mode "all" forces every point
    (mid-run points of a decaying schedule overstate the loss a run of that length would reach; offered for
    ladders too small to fit on final points alone)."""
    done = chosen.runs.drop_nulls(["N"])
    val = curves(uri, tuple(done["run_id"].to_list()), (Metric.VAL_LOSS,))
    # min_fraction=0: every validation, as the page's "every validation point" promises.
    found = points.validation_points(done, val, mode, min_fraction=0.0)
    sweeps = done.select("run_id", "sweep")
    return found.join(sweeps, on="run_id", how="left").select(*POINT_COLUMNS, "point")


def hparam_points(runs_frame: pl.DataFrame) -> pl.DataFrame:
    """Points of the hyperparameter laws: N, D, lr, B (tokens) and final loss of lr x B runs."""
    return law_points(runs_frame, "hparams").frame


def branch_points(runs_frame: pl.DataFrame) -> pl.DataFrame:
    """CBS branch runs (analysis.points): checkpoint_tokens (of the reference checkpoint they branch from), B
    (tokens), final loss, B_ref (the reference run's batch, tokens) and the reference run's id."""
    return law_points(runs_frame, "cbs").frame


@st.cache_data(ttl=STORE_TTL_S, show_spinner="Loading forecasts…")
def forecasts(uri: str, experiment_ids: tuple[str, ...]) -> list[dict]:
    """The forecasts recorded in these experiments (`tracking.forecasts.load_forecasts`, as lab-fit forecast
    --check reads them): payload, run_id, experiment_id, checked_run."""
    from tracking.forecasts import load_forecasts  # imports mlflow (~3 s): only on the Forecasts page

    return load_forecasts(uri, list(experiment_ids)) if experiment_ids else []
