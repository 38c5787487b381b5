"""`lab-fit schedule`: fit a schedule-aware loss-curve law to a few runs of one model and predict every run's curve.

    lab-fit schedule --input curves.csv --fit-runs cosine constant two-stage --predict-out pred.csv --out fit.json
    lab-fit schedule --tracking-uri sqlite:///mlflow.db --sweep schedules --fit-runs RUN1 RUN2 RUN3 --form annealing
    lab-fit schedule --tracking-uri sqlite:///mlflow.db --sweep sched      (a schedule study: fits its role=fit runs)

Laws: `analysis.laws.schedule` (Multi-Power Law, Luo et al. 2025; LR-annealing law, Tissue et al. 2024).

Inputs. A table (CSV/Parquet) with columns run_id, step, lr, loss: lr on every optimizer step from 0, loss where
measured and empty elsewhere (the loss at step t follows the update of step t). Or the FINISHED runs of an MLflow
store (--experiment, --sweep), read with `analysis.load.load_curves`; --fit-runs takes run ids or run names, and
defaults to the role=fit runs of a schedule study (lab-sweep sweep=schedule_study, sweeps.schedule_study). lab-train
logs metrics at step s = updates done, so the store's `lr` at s is the lr of optimizer step s − 1, `val/loss` at s
belongs to step s − 1, and `train/loss` at s (the forward pass before update s) to step s − 2 (the first dropped).
`train/loss` is noisy, so it is smoothed: a centred mean over --smooth recorded steps (shrinking at the ends),
dropping points whose window holds an lr jump, one step changing the lr by more than 5% of the peak (a step drop
would otherwise be blurred into the steps before it; a cosine changes by < 4% a step even over 40 steps); both
metrics are then thinned to at most --points points per run, evenly spaced, last included. From either input,
losses in the first --skip-fraction (10%) of each run's steps, the initial transient, are left out, and the law is
fitted to at most --points points per run: a denser run (a table's raw per-step loss) is reduced to the means of
the losses around evenly spaced points (analysis.laws.schedule.thin_curve), so its noise averages out and the fit
costs the same whatever the cadence; errors and --predict-out cover every measured point after the skip.

The laws describe one model at one batch size: the lr sequence is their only input. Runs with a batch-size schedule
(param batch.schedule other than constant) change the gradient noise along the run, which the laws do not model: a
fitted run with one is refused, other runs with one are skipped and named on stderr; so are runs of another N.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from analysis import report
from analysis.cli_input import CliError, Progress, store_runs
from analysis.laws import schedule_forms as sf
from analysis.laws.schedule import (SCHEMA, Curve, ScheduleFit, curves_from_frame, fit_schedule, predict_curve,
                                    relative_errors, select_runs, thin_curve)
from analysis.laws.schedule_choose import ScheduleChoice, choose_schedule, write_lr_table
from analysis.load import load_curves, load_table
from analysis.points import schedule_points, schedule_runs
from tracking.record import Design, Metric

BATCH_SCHEDULE = "param.batch.schedule"
FORMULAS = {sf.MULTI_POWER: "L(t) = L0 + A·(S1+S_W)^-alpha - B·Σ_k (η_k-1 − η_k)·(1 − (C·η_k^-gamma·S_k(t) + 1)^-beta)",
            sf.ANNEALING: "L(t) = L0 + A·S1^-alpha − C·S2 (S2: momentum-smoothed lr decrease)"}
METRICS = (Metric.TRAIN_LOSS, Metric.VAL_LOSS)
SKIP_FRACTION = 0.1
"""Losses in each run's first 10% of steps are left out: there the loss falls from its initial value (ln V) faster
than any power of the LR area (on lab-train runs of 600-1,000 steps the first points miss by 18-100% and raise the
fitted runs' mean error); the laws describe the curve after that transient."""
POINTS = 200
"""At most this many points per run are fitted (--points): window means of a denser curve (thin_curve)."""
LR_JUMP = 0.05
"""train/loss smoothing: a one-step lr change above this fraction of the peak is a jump no window may straddle."""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `lab-fit schedule` on the subparsers of analysis.cli."""
    p = sub.add_parser("schedule", parents=[common], help="loss curve of any lr schedule from a few runs")
    p.add_argument("--fit-runs", nargs="+", metavar="RUN", help="runs to fit (ids or names); from a store, default: "
                   "the role=fit runs of a schedule study (lab-sweep sweep=schedule_study)")
    p.add_argument("--form", choices=sf.FORMS, default=sf.MULTI_POWER)
    p.add_argument("--metric", choices=METRICS, default=Metric.VAL_LOSS, help="store: the loss curve to fit")
    p.add_argument("--smooth", type=int, default=25, metavar="W", help="store, train/loss: centred mean over W steps")
    p.add_argument("--points", type=int, default=POINTS, help="at most this many points per run (a table's denser "
                   "runs: each kept point the mean of the losses around it)")
    p.add_argument("--skip-fraction", type=float, default=SKIP_FRACTION, metavar="F",
                   help="leave out each run's losses in its first F of steps (the initial transient)")
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log loss")
    p.add_argument("--predict-out", metavar="P.csv", help="write run_id, step, loss, predicted, fitted")
    p.add_argument("--choose-steps", type=int, metavar="S", help="choose the schedule of S steps minimising the "
                   "predicted final loss (compared with cosine and WSD)")
    p.add_argument("--peak-lr", type=float, help="choice: peak lr (default: the fitted runs' peak)")
    p.add_argument("--warmup", type=int, metavar="STEPS", help="choice: warmup steps (default: the first fitted run's)")
    p.add_argument("--table-out", metavar="T.csv", help="choice: write it for lab-train optim.schedule=table "
                   "optim.table=T.csv (with optim.lr = --peak-lr and the same number of steps)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    if args.table_out and not args.choose_steps:
        raise CliError("--table-out writes the chosen schedule: give --choose-steps S (the run's optimizer steps) too")
    for flag, path in (("--predict-out", args.predict_out), ("--table-out", args.table_out)):
        if path is not None and not Path(path).parent.is_dir():
            raise CliError(f"{flag} {path}: directory {Path(path).parent} does not exist; create it or choose "
                           "another path")
    if args.input is not None:
        if not args.fit_runs:
            raise CliError("--input: name the runs to fit with --fit-runs (run ids of the table), e.g. the papers' "
                           "three: cosine, constant and a two-stage drop")
        say(f"reading {args.input}")
        curves = curves_from_frame(load_table(args.input, required=SCHEMA))
        names = {r: r for r in curves}
    else:
        say(f"loading runs from {args.tracking_uri}")
        runs = store_runs(args)
        if not args.fit_runs:
            args.fit_runs = study_fit_runs(runs, say)
        curves, names = store_curves(args.tracking_uri, runs, args.fit_runs, args.metric, args.smooth, args.points,
                                     say)
    say(f"fitting the {args.form} law to {len(args.fit_runs)} runs by multi-start L-BFGS-B, then {args.bootstrap} "
        "bootstrap resamples of runs")
    fit, rows, predictions, fitted = fit_curves(curves, args.fit_runs, names, args.form, args.bootstrap, args.delta,
                                                args.seed, args.skip_fraction, args.points)
    print(schedule_report(fit, rows), flush=True)
    if args.predict_out is not None:
        predictions.write_csv(args.predict_out)
        say(f"wrote {args.predict_out}")
    choice = _choose(args, fit, fitted[0], say) if args.choose_steps else None
    return {**fit.to_dict(), "formula": FORMULAS[fit.form], "metric": None if args.input else args.metric,
            "runs": rows, "choice": choice.to_dict() if choice else None}


def fit_curves(curves: dict[str, Curve], fit_runs: list[str], names: dict[str, str], form: str, bootstrap: int,
               delta: float, seed: int, skip_fraction: float = SKIP_FRACTION, points: int | None = POINTS
               ) -> tuple[ScheduleFit, list[dict[str, Any]], pl.DataFrame, list[Curve]]:
    """Fit `form` to the `fit_runs` (ids or names) among `curves`, each run's first skip_fraction left out and at
    most `points` points of each (analysis.laws.schedule.thin_curve: window means of a denser curve), and predict
    every measured point of every run after its skip_fraction: (fit, one row per run with its mean and worst
    relative error, the --predict-out frame run_id, step, loss, predicted, fitted, the fitted curves). What
    lab-fit schedule and the dashboard both run."""
    if points is not None and points < 10:
        raise CliError(f"--points {points}: give at least 10 points per run (default 200)")
    curves = {r: _skip_start(c, skip_fraction) for r, c in curves.items()}
    fitted = select_runs(curves, [_resolve(r, names) for r in fit_runs])
    if points is not None:
        fitted = [thin_curve(c, points, LR_JUMP) for c in fitted]
    fit = fit_schedule(fitted, form, bootstrap=bootstrap, delta=delta, seed=seed)
    rows, predictions = [], []
    for run_id, curve in curves.items():
        predicted = predict_curve(fit, curve.lr, curve.steps)
        mean, worst = relative_errors(predicted, curve.loss)
        is_fit = run_id in fit.fit_runs
        rows.append({"run_id": run_id, "run_name": names.get(run_id, run_id), "fitted": is_fit,
                     "steps": int(curve.lr.size), "points": int(curve.steps.size), "final_loss": float(curve.loss[-1]),
                     "predicted_final": float(predicted[-1]), "mean_rel_error": mean, "max_rel_error": worst})
        predictions.append(pl.DataFrame({"run_id": run_id, "step": curve.steps, "loss": curve.loss,
                                         "predicted": predicted, "fitted": is_fit}))
    return fit, rows, pl.concat(predictions), fitted


def choice_settings(fit: ScheduleFit, first: Curve, peak_lr: float | None = None, warmup: int | None = None
                    ) -> tuple[float, int]:
    """(peak lr, warmup steps) of a schedule choice: as given, else the fitted runs' peak and the first fitted
    run's warmup (lab: step k of a warmup of W steps has lr (k+1)/W·peak)."""
    at_peak = int(np.argmax(first.lr >= first.lr.max()))
    return peak_lr or fit.lr_ref, warmup if warmup is not None else (at_peak + 1 if at_peak else 0)


def _choose(args: argparse.Namespace, fit: ScheduleFit, first: Curve, say: Progress) -> ScheduleChoice:
    peak, warmup = choice_settings(fit, first, args.peak_lr, args.warmup)
    say(f"choosing the schedule of {args.choose_steps} steps (peak lr {peak:g}, warmup {warmup} steps) that "
        "minimises the predicted final loss")
    try:
        choice = choose_schedule(fit, args.choose_steps, peak, warmup)
    except ValueError as err:
        raise CliError(f"--choose-steps/--peak-lr/--warmup: {err}") from err
    print("\n" + report.table(["schedule", "predicted final loss"], list(choice.predicted_final.items()),
                              f"schedules of {choice.steps} steps, peak lr {peak:g}, warmup {warmup}"))
    print(report.table(["fraction of tokens", "lr multiplier"], list(zip(choice.fractions, choice.multipliers)),
                       "chosen schedule"), flush=True)
    if args.table_out:
        write_lr_table(choice, args.table_out)
        say(f"wrote {args.table_out}: lab-train optim.schedule=table optim.table={args.table_out} optim.lr={peak:g}")
    return choice


def _skip_start(curve: Curve, fraction: float) -> Curve:
    if not 0 <= fraction < 1:
        raise CliError(f"--skip-fraction {fraction:g} must be in [0, 1): the fraction of each run's steps left out")
    keep = curve.steps >= fraction * curve.lr.size
    if not keep.any():
        raise CliError(f"run {curve.run_id!r} has no loss after the first {fraction:g} of its {curve.lr.size} steps; "
                       "lower --skip-fraction or measure the loss later in the run")
    return Curve(curve.run_id, curve.lr, curve.steps[keep], curve.loss[keep])


def schedule_report(fit: ScheduleFit, rows: list[dict[str, Any]]) -> str:
    params = report.table(["param", "estimate", "SE", "95% interval", ""],
                          [[k, v, fit.stderr.get(k), report.bracket(*fit.ci95.get(k, (None, None))),
                            "AT BOUND" if k in fit.at_bound else ""] for k, v in fit.params.items()],
                          f"{fit.form}: {FORMULAS[fit.form]}  ({fit.n_points} points, {fit.n_resamples} resamples)")
    runs = report.table(["run", "fitted", "steps", "final loss", "predicted", "mean rel err %", "max rel err %"],
                        [[r["run_name"], "yes" if r["fitted"] else "no", r["steps"], r["final_loss"],
                          r["predicted_final"], 100 * r["mean_rel_error"], 100 * r["max_rel_error"]] for r in rows])
    return params + "\n\n" + runs


def study_fit_runs(runs: pl.DataFrame, say: Progress) -> list[str]:
    """Without --fit-runs: the role=fit runs of the selection's schedule study, as the dashboard's Schedules page
    takes them (analysis.points.schedule_runs)."""
    chosen = schedule_runs(runs)
    if chosen is None or chosen.sweep is None:
        raise CliError("no --fit-runs given and the selection holds no finished schedule-study runs of role fit "
                       f"(design {Design.SCHEDULES}); name the runs to fit with --fit-runs, or run lab-sweep "
                       f"sweep={Design.SCHEDULES} and pass its sweep id with --sweep")
    study = schedule_points(runs)
    if len(study.sweeps) > 1:
        raise CliError(f"the selection holds the schedule studies {study.sweeps}; choose one with --sweep")
    names = dict(zip(study.frame["run_id"].to_list(), study.frame["run_name"].to_list()))
    held = [names[r] for r in chosen.held_out]
    say(f"fitting the study's role=fit runs {[names[r] for r in chosen.fit]}"
        f"{'; predicting ' + str(held) if held else ''}")
    return list(chosen.fit)


def _resolve(run: str, names: dict[str, str]) -> str:
    if run in names:
        return run
    ids = [i for i, n in names.items() if n == run]
    if len(ids) > 1:
        raise CliError(f"run name {run!r} names {len(ids)} runs {ids[:5]}; give a run id instead")
    return ids[0] if ids else run  # an unknown id is reported by select_runs with the runs available


def store_curves(uri: str, runs: pl.DataFrame, fit_runs: list[str], metric: str = Metric.VAL_LOSS,
                 smooth: int = 25, points: int = POINTS, say: Progress | None = None
                 ) -> tuple[dict[str, Curve], dict[str, str]]:
    """The lr and loss curves (module docstring) of the FINISHED `runs` of the fitted runs' size and one batch size
    throughout, and run_id -> run_name; refuses fitted runs of several sizes or with a batch-size schedule."""
    say = say or (lambda message, warn=False: None)
    names = dict(zip(runs["run_id"].to_list(), runs["run_name"].to_list()))
    wanted = {_resolve(r, names) for r in fit_runs}
    unknown = sorted(wanted - set(names))
    if unknown:
        raise CliError(f"unknown run ids {unknown}: not FINISHED runs of the selection; it has "
                       f"{sorted(set(names.values()))[:10]}")
    schedule = (runs[BATCH_SCHEDULE].cast(pl.String) if BATCH_SCHEDULE in runs.columns
                else pl.Series([None] * runs.height, dtype=pl.String))
    varying = runs.filter(schedule.is_not_null() & (schedule != "constant"))
    refused = sorted(set(varying["run_id"].to_list()) & wanted)
    if refused:
        raise CliError(f"runs {[names[r] for r in refused]} change the batch size during training (batch.schedule="
                       f"{varying[BATCH_SCHEDULE][0]}); the schedule laws take the lr sequence as their only "
                       "input and assume one batch size throughout; fit runs with batch.schedule=constant")
    N = runs.filter(pl.col("run_id").is_in(list(wanted)))["N"].unique().to_list()
    if len(N) > 1:
        raise CliError(f"the fitted runs have {len(N)} model sizes N = {sorted(N)}; a schedule law describes one "
                       "model: fit runs of one size (narrow with --sweep or --fit-runs)")
    keep = runs.filter(~pl.col("run_id").is_in(varying["run_id"].to_list()))
    if N and N[0] is not None:
        keep = keep.filter(pl.col("N") == N[0])
    skipped = runs.join(keep, on="run_id", how="anti")["run_name"].to_list()
    if skipped:
        say(f"warning: skipping {len(skipped)} runs of another size or with a batch-size schedule: {skipped[:5]}", True)
    rows = load_curves(uri, run_ids=keep["run_id"].to_list(), metrics=[Metric.LR, metric])
    say(f"{metric} and lr of {keep.height} runs")
    return curves_from_frame(pl.concat([_run_table(rows.filter(pl.col("run_id") == r), metric, smooth, points)
                                        for r in keep["run_id"].to_list()])), names


def _run_table(rows: pl.DataFrame, metric: str, smooth: int, points: int) -> pl.DataFrame:
    """One run's tidy table (analysis.laws.schedule schema) from its recorded lr and loss rows."""
    run_id = rows["run_id"][0] if rows.height else ""
    lr = rows.filter(pl.col("metric") == Metric.LR).sort("step").unique("step", keep="last", maintain_order=True)
    table = lr.select(pl.lit(run_id).alias("run_id"), (pl.col("step") - 1).alias("step"), pl.col("value").alias("lr"))
    loss = rows.filter(pl.col("metric") == metric).sort("step").unique("step", keep="last", maintain_order=True)
    step = loss["step"].to_numpy() - 1
    value = loss["value"].to_numpy()
    if metric == Metric.TRAIN_LOSS and value.size:
        step, value = _smoothed(step - 1, value, table, max(1, smooth))
    keep = _thin(step.size, points)
    measured = pl.DataFrame({"step": step[keep].astype(np.int64), "loss": value[keep]})
    return table.join(measured, on="step", how="left").select("run_id", "step", "lr", "loss")


def _smoothed(step: np.ndarray, loss: np.ndarray, lr_table: pl.DataFrame, window: int):
    """Centred mean of the train loss over `window` recorded steps; points whose window holds an lr jump (one step
    changing the lr by more than LR_JUMP of the run's peak, e.g. a step drop or a short warmup) are dropped (module
    docstring). Steps before 0 (the loss before any update) are dropped."""
    ok = step >= 0
    lr = lr_table.sort("step")
    jump = lr.select("step", (pl.col("lr").diff().abs().fill_null(0.0) / pl.col("lr").max()).alias("jump"))
    frame = pl.DataFrame({"step": step[ok], "loss": loss[ok]}).join(jump, on="step", how="left")
    roll = dict(window_size=window, min_samples=1, center=True)
    frame = frame.with_columns(pl.col("loss").rolling_mean(**roll).alias("smooth"),
                               pl.col("jump").fill_null(0.0).rolling_max(**roll).alias("jump"))
    flat = frame.filter(pl.col("jump") <= LR_JUMP)
    return flat["step"].to_numpy(), flat["smooth"].to_numpy()


def _thin(n: int, points: int) -> np.ndarray:
    """At most `points` indices of n, evenly spaced, the last included."""
    if n <= points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, points)).astype(int))
