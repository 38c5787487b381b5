"""Learning curves as (N, D, loss) points: which validations of a run may stand for a run trained to D tokens.

A loss law L(N, D) is the final loss of a run planned and trained for D tokens. A validation at D' < D of a longer
run is such a point only if the run's learning rate up to D' is the one a run planned for D' would have followed,
i.e. if the LR at a token count does not depend on the planned length. By `optim.schedule` (lab/schedules.py):

- ``constant``; ``inverse_sqrt`` with an absolute warmup (``optim.warmup_tokens``): the LR at D' is the same
  whatever the run's length, so every validation past the warmup qualifies ("schedule-free" runs). With a warmup
  that is a fraction of the run (``optim.warmup_fraction``) a run planned for D' would have warmed up over a
  shorter span; ``min_fraction`` keeps the points where that difference is small.
- ``cosine``, ``linear``: at D' the LR is still far above where a run planned for D' would have decayed it, so
  the point overstates that run's loss (Hoffmann et al. 2022, §3.1 and Fig. A1: a cosine cycle longer than the
  run costs loss; their approach 1 trains one cosine cycle per horizon for this reason). Final point only.
- ``wsd``, ``power``: before the final decay the LR has not cooled down, so a point there is the loss of a run
  without its cooldown, above that of a run planned for D' (Hägele et al. 2024). The points that qualify are the
  ends of decays: the run's own final point, and the final points of decay branches (runs resumed from a
  stable-phase checkpoint that decay over a short window), each branch being a run of its own. Final point only.
- no ``optim.schedule`` recorded: unknown, final point only.

``curve_points`` makes that choice explicit (``mode``) and marks every point ``final`` or ``intermediate``.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from tracking.record import compute

from analysis.validate import PointsError

Mode = Literal["final", "schedule-free", "all"]
MODES: tuple[str, ...] = ("final", "schedule-free", "all")
VAL_LOSS = "val/loss"
# Schedules whose LR at a token count does not depend on the planned run length (see the module docstring).
SCHEDULE_FREE = ("constant",)
SCHEDULE_FREE_WITH_ABSOLUTE_WARMUP = ("inverse_sqrt",)
SCHEDULE, WARMUP_TOKENS, WARMUP_FRACTION, PLANNED_D = ("param.optim.schedule", "param.optim.warmup_tokens",
                                                       "param.optim.warmup_fraction", "param.D")
MIN_FRACTION = 0.25
"""Default smallest D'/D of an intermediate point: two octaves of D per run, and early points (the initial
transient, a warmup that was a fraction of the run) left out."""

POINTS_SCHEMA = {
    "run_id": pl.String, "run_name": pl.String, "N": pl.Float64, "N_total": pl.Float64, "D": pl.Float64,
    "C": pl.Float64, "B": pl.Float64, "lr": pl.Float64, "loss": pl.Float64, "step": pl.Int64,
    "fraction": pl.Float64, "point": pl.String, "schedule": pl.String,
}
"""The frame `curve_points` returns: design §4 columns, the run and step a point comes from, fraction = D of the
point / D of the run's final point, point = "final" | "intermediate", schedule = the run's optim.schedule."""


class CurvePointsError(PointsError):
    """Intermediate points were asked of runs whose schedule does not allow them; the message names them."""


def _number(runs: pl.DataFrame, column: str) -> pl.Expr:
    """A param column as Float64 (an all-"None" param stays a String column in the runs frame)."""
    if column not in runs.columns:
        return pl.lit(None, dtype=pl.Float64)
    return pl.col(column).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def run_schedules(runs: pl.DataFrame) -> pl.DataFrame:
    """Per run: schedule, warmup_end (tokens, null when unknown) and schedule_free (may intermediate points of it
    stand for runs trained to their D?), from the params lab-train records (optim.schedule, optim.warmup_*)."""
    schedule = pl.col(SCHEDULE).cast(pl.String) if SCHEDULE in runs.columns else pl.lit(None, dtype=pl.String)
    absolute = _number(runs, WARMUP_TOKENS)
    planned = pl.coalesce(_number(runs, PLANNED_D), pl.col("D").cast(pl.Float64))
    return runs.select(
        "run_id",
        schedule.alias("schedule"),
        pl.coalesce(absolute, _number(runs, WARMUP_FRACTION) * planned).alias("warmup_end"),
        (schedule.is_in(SCHEDULE_FREE)
         | (schedule.is_in(SCHEDULE_FREE_WITH_ABSOLUTE_WARMUP) & absolute.is_not_null())).fill_null(False)
        .alias("schedule_free"),
    )


def check_schedule_free(runs: pl.DataFrame) -> None:
    """Raise CurvePointsError naming the runs whose schedule does not let intermediate points stand for runs
    trained to that D (module docstring); a no-op when every run is schedule-free."""
    bad = runs.join(run_schedules(runs).filter(~pl.col("schedule_free")), on="run_id")
    if bad.height == 0:
        return
    counts = dict(bad.group_by("schedule").len().sort("schedule", nulls_last=True).iter_rows())
    names = bad["run_name"].to_list() if "run_name" in bad.columns else bad["run_id"].to_list()
    described = ", ".join(f"{n} {s if s is not None else 'without an optim.schedule param'}"
                          for s, n in counts.items())
    raise CurvePointsError(
        f"{bad.height} of {runs.height} runs have an LR schedule whose intermediate validations do not stand for "
        f"runs trained to that D ({described}; e.g. {names[:3]}): mid-run, a cosine, linear, wsd or power "
        "schedule has not decayed the LR as a run planned for that D would have (Hoffmann et al. 2022; Hägele et "
        "al. 2024), so those points overstate its loss. Select only constant-LR runs (or inverse_sqrt with "
        "optim.warmup_tokens), fit final points ('final'; decay branches of wsd runs are runs with final points), "
        "or force every point ('all')")


def curve_points(runs: pl.DataFrame, curves: pl.DataFrame | None = None, mode: Mode = "schedule-free", *,
                 min_fraction: float = MIN_FRACTION, min_D: float | None = None) -> pl.DataFrame:
    """(N, D, loss) points from the runs' validation curves, each marked `final` or `intermediate`.

    runs: the `analysis.load.load_runs` frame of the runs to use (filter status first: every run given is used).
    curves: their `load_curves` frame with metric val/loss (other metrics are ignored); not needed for "final".
    mode:
      - "final": one point per run, its last validation (from `runs`: D, C, loss = final_val_loss).
      - "schedule-free": every run's final point and its validations at D' >= max(min_fraction·D, min_D) past
        the warmup. Every run must have a schedule that allows it (module docstring), else CurvePointsError names
        the others: mixing them would mix losses with and without a cooldown at the same D.
      - "all": every validation of every run with D' >= max(min_fraction·D, min_D), whatever its schedule (forced:
        mid-run points of decaying schedules overstate the loss of a run trained to that D).
    Points at one step logged twice keep the latest row; NaN losses and points lacking N, D, C or loss are
    dropped. D is the `tokens` metric at the validation step (the run's D for its final point when tokens were
    not logged); C the `flops` metric there, else 6·N·D. Fit them with groups="run_id": points of one run are not
    independent, so the bootstrap must resample runs. Schema: POINTS_SCHEMA.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction={min_fraction} must be in [0, 1] (a fraction of the run's D)")
    missing = [c for c in ("run_id", "N", "D", "C", "loss") if c not in runs.columns]
    if missing:
        raise ValueError(f"runs lacks columns {missing}: pass the frame of analysis.load.load_runs")
    schedules = run_schedules(runs)
    if mode == "final":
        return _finals(runs, schedules)
    if mode == "schedule-free":
        check_schedule_free(runs)
    if curves is None:
        raise ValueError(f"mode={mode!r} needs the runs' curves: load_curves(uri, run_ids=..., metrics=['val/loss'])")
    val = (curves.filter(pl.col("metric") == VAL_LOSS).join(runs.select("run_id"), on="run_id", how="semi")
           .sort("run_id", "step", "timestamp", "value")
           .unique(["run_id", "step"], keep="last", maintain_order=True))  # a replayed step counts once
    last = val.group_by("run_id").agg(pl.col("step").max().alias("last_step"))
    info = runs.select("run_id", *[c for c in ("run_name", "N", "N_total", "B", "lr") if c in runs.columns],
                       pl.col("D").alias("run_D")).join(schedules, on="run_id")
    points = (val.join(last, on="run_id").join(info, on="run_id")
              .with_columns(final=pl.col("step") == pl.col("last_step"))
              .with_columns(D=pl.when(pl.col("final")).then(pl.coalesce("tokens", "run_D")).otherwise("tokens")))
    final_D = points.filter(pl.col("final")).select("run_id", pl.col("D").alias("final_D"))
    points = points.join(final_D, on="run_id", how="left").with_columns(fraction=pl.col("D") / pl.col("final_D"))
    # "all" is forced: no schedule test, no warmup cut; in "schedule-free" every run passed check_schedule_free.
    allowed = pl.lit(True) if mode == "all" else pl.col("D") > pl.col("warmup_end").fill_null(0.0)
    floor = pl.max_horizontal(pl.col("final_D") * min_fraction, pl.lit(min_D or 0.0))
    keep = pl.col("final") | (allowed & (pl.col("D") >= floor))
    points = points.filter(keep & pl.col("value").is_not_nan() & pl.col("D").is_not_null() & (pl.col("D") > 0))
    points = points.with_columns(
        loss=pl.col("value"),
        C=compute(pl.col("N"), pl.col("D")),
        point=pl.when(pl.col("final")).then(pl.lit("final")).otherwise(pl.lit("intermediate")),
    )
    return _conform(points).sort("run_id", "D")


def _finals(runs: pl.DataFrame, schedules: pl.DataFrame) -> pl.DataFrame:
    finals = runs.join(schedules, on="run_id").filter(pl.col("loss").is_not_nan())
    if "steps" in finals.columns:
        finals = finals.with_columns(step=pl.col("steps"))
    return _conform(finals.with_columns(fraction=pl.lit(1.0), point=pl.lit("final")))


def _conform(df: pl.DataFrame) -> pl.DataFrame:
    df = df.select([(pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c)
                    for c, t in POINTS_SCHEMA.items()])
    return df.drop_nulls(["N", "D", "C", "loss"])  # a law cannot use them; the caller names incomplete runs


def summarize(points: pl.DataFrame) -> str:
    """One line: how many points of each kind from how many runs, for progress messages and captions."""
    if points.height == 0:
        return "no points"
    counts = dict(points.group_by("point").len().iter_rows())
    return (f"{points.height} points from {points['run_id'].n_unique()} runs ({counts.get('final', 0)} final, "
            f"{counts.get('intermediate', 0)} intermediate)")
