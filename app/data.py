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
from analysis.runs import REFERENCE_B, from_scratch

STORE_TTL_S = 600  # a store being written by a sweep changes; the sidebar's "Reload data" refreshes sooner
METRICS = ("val/loss", "train/loss", "val/bpb", "lr", "grad_norm", "noise/b_simple", "batch_tokens",
           "throughput/tokens_per_s", "mfu")
"""Per-step metrics that lab-train records (design §5), offered for learning curves."""
POINT_COLUMNS = ("run_id", "run_name", "N", "D", "C", "B", "lr", "loss")


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


# --- points for the laws --------------------------------------------------------------------------------------

def finished(runs_frame: pl.DataFrame) -> pl.DataFrame:
    """Finished runs with a final validation loss: the ones a law may be fitted to."""
    return runs_frame.filter((pl.col("status") == "FINISHED") & pl.col("loss").is_not_null()
                             & pl.col("loss").is_not_nan())


def final_points(runs_frame: pl.DataFrame) -> pl.DataFrame:
    """One point per finished run trained from scratch (CBS branches are not points: analysis.runs): N, D, C, B,
    lr and its final validation loss L (nats/token)."""
    return from_scratch(finished(runs_frame)).select(POINT_COLUMNS).drop_nulls(["N", "D", "C", "loss"])


def validation_points(uri: str, runs_frame: pl.DataFrame, mode: str = "all") -> pl.DataFrame:
    """One point per validation of each finished run (`analysis.laws.curve_points`): D = tokens seen then, C =
    FLOPs spent then (6·N·D when no `flops` was recorded), L = val/loss then, `point` = final | intermediate.
    mode "all" forces every point (mid-run points of a decaying schedule overstate the loss a run of that length
    would reach; offered for ladders too small to fit on final points alone); "schedule-free" refuses runs whose
    schedule does not allow it (CurvePointsError, a ValueError naming them)."""
    from analysis.laws.curve_points import curve_points  # lazily: analysis.laws imports scipy (see above)

    done = from_scratch(finished(runs_frame)).drop_nulls(["N"])
    val = curves(uri, tuple(done["run_id"].to_list()), ("val/loss",))
    # min_fraction=0: every validation, as the page's "every validation point" promises.
    return curve_points(done, val, mode, min_fraction=0.0).select(*POINT_COLUMNS, "point")


def hparam_points(runs_frame: pl.DataFrame) -> pl.DataFrame:
    """Finished runs with N, D, lr, B (tokens) and final loss: the input of `fit_hparams`."""
    return final_points(runs_frame).drop_nulls(["lr", "B"])


def branch_column(frame: pl.DataFrame, name: str) -> str | None:
    """The column holding a CBS branch field (`checkpoint_tokens`, `ref_loss`): bare, or as a tag/param."""
    for column in (name, f"tag.{name}", f"param.{name}"):
        if column in frame.columns:
            return column
    return next((c for c in frame.columns if c.endswith(f".{name}")), None)


def branch_points(runs_frame: pl.DataFrame) -> pl.DataFrame:
    """CBS branch runs of the store: runs carrying a `checkpoint_tokens` tag or param (the tokens of the
    reference checkpoint they branched from), with B (tokens) and final loss; `ref_loss` and `B_ref` (the
    reference run's batch, tokens) too when recorded."""
    column = branch_column(runs_frame, "checkpoint_tokens")
    if column is None:
        return pl.DataFrame(schema={"checkpoint_tokens": pl.Float64, "B": pl.Float64, "loss": pl.Float64})
    ref = branch_column(runs_frame, "ref_loss")
    extra = [pl.col(ref).cast(pl.Float64, strict=False).alias("ref_loss")] if ref else []
    if REFERENCE_B in runs_frame.columns:  # the reference's batch, recorded by every branch
        extra.append(pl.col(REFERENCE_B).cast(pl.Float64, strict=False).alias("B_ref"))
    return (finished(runs_frame)
            .select(pl.col(column).cast(pl.Float64, strict=False).alias("checkpoint_tokens"), "B", "loss", *extra)
            .drop_nulls())
