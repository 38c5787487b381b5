"""Where `lab-fit` gets its points: a CSV/Parquet table, or the finished runs of an MLflow store, as final points
or as learning-curve points (`analysis.laws.curve_points`). Errors are CliError: one line naming the fix."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from analysis.laws.curve_points import CurvePointsError, check_schedule_free, summarize
from analysis.lineage import mixed_data_warning
from analysis.load import load_curves, load_runs, load_table
from analysis.points import Points, branch_runs, law_points, training_runs, validation_points
from tracking.record import Metric


DEFAULT_GRANULARITY = 8
"""lab-train's default batch.micro_batch on one device: the batch granularity when no reference run says."""


class CliError(ValueError):
    """Arguments or runs lab-fit cannot use; the message names which and how to fix it."""


@dataclass(frozen=True)
class Progress:
    """Progress lines on stderr, stamped with seconds since the start (stdout carries the tables)."""

    quiet: bool = False
    start: float = field(default_factory=time.perf_counter)

    def __call__(self, message: str, warning: bool = False) -> None:
        if warning or not self.quiet:  # warnings show even with --quiet
            print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)


def store_runs(args: argparse.Namespace) -> pl.DataFrame:
    """FINISHED training runs of the selected experiment and sweep (sweep parent runs dropped)."""
    where = args.tracking_uri + "".join(f" {k}={v!r}" for k, v in (("experiment", args.experiment),
                                                                   ("sweep", args.sweep)) if v)
    try:
        runs = load_runs(args.tracking_uri, args.experiment, {"sweep": args.sweep} if args.sweep else None)
    except Exception as err:  # a tracking server that does not answer raises MlflowException, not ValueError
        from mlflow.exceptions import MlflowException  # mlflow costs ~3 s to import: only on this path

        if isinstance(err, MlflowException):
            raise CliError(f"cannot read runs from {args.tracking_uri}: {err}; check the URI and the server") from err
        raise
    runs = training_runs(runs)
    finished = runs.filter(pl.col("status") == "FINISHED")
    if finished.height == 0:
        found = dict(runs["status"].value_counts().iter_rows()) if runs.height else {}
        raise CliError(f"no FINISHED runs in {where} (runs by status: {found}); check --experiment and --sweep, "
                       "or wait for the runs to finish")
    return finished


def complete(runs: pl.DataFrame, columns: Sequence[str], say: Progress) -> pl.DataFrame:
    """Runs with a value in every column; the others are skipped and named on stderr."""
    ok = runs.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in columns))
    if ok.height == 0:
        raise CliError(f"none of the {runs.height} finished runs records all of {list(columns)}; check that they "
                       "are training runs of lab-train (params N, B_tokens, optim.lr; metrics tokens, val/loss)")
    if ok.height < runs.height:
        names = runs.join(ok, on="run_id", how="anti")["run_name"].to_list()
        say(f"warning: skipping {len(names)} finished runs lacking one of {list(columns)}: {names[:5]}", True)
    return ok


def frame(args: argparse.Namespace, needed: Sequence[str], say: Progress, law: str = "loss") -> pl.DataFrame:
    """Points with the columns a law needs: the --input table, or the store's runs that are points of `law`
    (analysis.points: the same selection as the dashboard's), N_total as N on request; with --curve-points other
    than final, the validation points of those runs (analysis.laws.curve_points)."""
    total = getattr(args, "total_params", False)
    needed = ["N_total" if c == "N" and total else c for c in needed]
    mode = getattr(args, "curve_points", "final")
    if args.input is not None:
        if mode != "final":
            raise CliError(f"--curve-points {mode} reads validation curves from a store: give --tracking-uri "
                           "instead of --input (a table holds one point per row already)")
        say(f"reading {args.input}")
        df = load_table(args.input, required=[c for c in needed if c != "C"])  # C defaults to 6·N·D
    else:
        say(f"loading runs from {args.tracking_uri}")
        runs = store_runs(args)
        if total:
            runs = runs.with_columns(N=pl.col("N_total"))
        chosen = store_points(runs, law, needed, say)
        if (mixed := mixed_data_warning(chosen.runs)) is not None:  # a law across corpora or tokenizations
            say(mixed, True)
        df = chosen.frame if mode == "final" else _curve_frame(args, chosen.runs, mode, say)
        return df
    return df.with_columns(N=pl.col("N_total")) if total else df


def store_points(runs: pl.DataFrame, law: str, needed: Sequence[str], say: Progress) -> Points:
    """The points of `law` among the selected runs (analysis.points), saying on stderr what was left out."""
    chosen = law_points(runs, law, tuple(c for c in needed if c != "C"))
    for note in (*chosen.notes, *chosen.mixed):
        say(f"warning: {note}", True)
    if chosen.frame.height == 0 and runs.height and branch_runs(runs).height == runs.height:
        raise CliError(f"the {runs.height} finished runs selected are all critical-batch-size branches (tag "
                       "branch_of); fit them with lab-fit cbs, or select the sweep of runs trained from scratch")
    if chosen.frame.height == 0:
        raise CliError(f"none of the {runs.height} finished runs selected is a point of the {law} law "
                       f"({'; '.join(chosen.notes) or 'no run records ' + str(list(needed))}); select the sweep "
                       "of runs made for it with --sweep")
    return chosen


def _curve_frame(args: argparse.Namespace, runs: pl.DataFrame, mode: str, say: Progress) -> pl.DataFrame:
    try:
        if mode == "schedule-free":
            check_schedule_free(runs)  # before reading any curve: a refusal costs no query
        say(f"loading the val/loss curves of {runs.height} runs")
        curves = load_curves(args.tracking_uri, args.experiment, run_ids=runs["run_id"].to_list(),
                             metrics=[Metric.VAL_LOSS])
        points = validation_points(runs, curves, mode, min_fraction=args.min_fraction, min_D=args.min_D)
    except CurvePointsError as err:
        raise CliError(f"--curve-points {mode}: {err}") from err
    say(f"curve points ({mode}; D >= {args.min_fraction:g} of each run's D"
        f"{f' and >= {args.min_D:g} tokens' if args.min_D else ''}): {summarize(points)}; the bootstrap "
        "resamples runs")
    return points
