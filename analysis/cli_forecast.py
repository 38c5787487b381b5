"""`lab-fit forecast`: commit a forecast to the record before the run, and hold it to account after.

    lab-fit forecast --tracking-uri sqlite:///mlflow.db --sweep lrb-1 --law hparams --target-N 1e8 --target-D 2e9
    lab-fit forecast --tracking-uri sqlite:///mlflow.db --sweep grid-1 --law loss --target-N 1e8 --target-D 2e9
    lab-fit forecast --tracking-uri sqlite:///mlflow.db --law isoflop --target-C 1e19
    lab-fit forecast --tracking-uri sqlite:///mlflow.db --check [--forecast RUN_ID] [--rel-tol 0.05]

Recording fits the law to the selected FINISHED runs (as `lab-fit loss|isoflop|hparams` do), predicts at the
target with 95% bootstrap intervals and the leave-one-out sensitivity (`analysis.sensitivity`), and writes an
MLflow run tagged as a forecast into the experiment of those runs (`tracking.forecasts`): the law, the target,
the fitted run ids and their digest, each prediction. Quantities: loss law at (N, D): loss; at C (chinchilla's
compute-optimal allocation): loss, N, D; isoflop at C: N, D; hparams: lr, B (tokens).

--check finds, for every forecast of the experiment (or the one named), a FINISHED training run at its target
(N and D, or C, within --rel-tol), and shows forecast against realised: error = realised / forecast − 1 and
whether the realised value lies in the 95% interval; it tags the forecast with the run and the error.
Forecast runs are never points of a law: the loaders' callers drop runs tagged forecast.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import polars as pl

from analysis import report
from analysis.cli_input import CliError, Progress, frame, store_runs
from analysis.laws.hparams import fit_hparams, predict_hparams
from analysis.laws.isoflop import fit_isoflop, predict_optimal
from analysis.laws.loglinear import prediction_interval
from analysis.serialize import jsonable
from analysis.laws.loss import compute_optimal, fit_loss
from analysis.sensitivity import hparams_sensitivity, isoflop_sensitivity, loss_sensitivity, loss_sensitivity_at
from tracking.forecasts import load_forecasts, record_check, record_forecast, runs_digest
from tracking.record import Tag

LAWS = ("loss", "isoflop", "hparams")
NEEDED = {"loss": ["N", "D", "loss"], "isoflop": ["N", "C", "loss"], "hparams": ["N", "D", "lr", "B", "loss"]}
REL_TOL = 0.05
"""A landed run is at the target when its N and D (or C) are within 5% of it (integer steps and model shapes
rarely hit a target exactly)."""


def _pred(value: Any, lo: Any = None, hi: Any = None) -> dict[str, float | None]:
    f = [None if v is None or not np.isfinite(float(v)) else float(v) for v in (value, lo, hi)]
    return {"value": f[0], "lo": f[1], "hi": f[2]}


def _target(args: argparse.Namespace) -> tuple[dict[str, float], str]:
    nd = args.target_N is not None and args.target_D is not None
    c = args.target_C is not None
    if nd == c or (args.target_N is None) != (args.target_D is None) or (args.law == "isoflop" and not c):
        raise CliError("give --target-N with --target-D, or --target-C alone (isoflop: --target-C), e.g. "
                       "--target-N 1e8 --target-D 2e9")
    target = {"N": args.target_N, "D": args.target_D} if nd else {"C": args.target_C}
    return target, ",".join(f"{k}={v:.4g}" for k, v in target.items())


def _fit(args: argparse.Namespace, df: pl.DataFrame, target: dict[str, float], say: Progress
         ) -> tuple[dict[str, dict], list, dict[str, Any]]:
    """Predictions {quantity: {value, lo, hi}}, sensitivities and what else describes the fit."""
    sens_on = not getattr(args, "no_sensitivity", False)
    say(f"fitting the {args.law} law to {df.height} runs ({args.bootstrap} bootstrap resamples)"
        + (", then its leave-one-out refits" if sens_on else ""))
    if args.law == "hparams":
        res = fit_hparams(df, method=args.method, bootstrap=args.bootstrap, seed=args.seed)
        p = predict_hparams(res, **target)
        sens = [hparams_sensitivity(df, res.method, **target)] if sens_on else []
        return {"lr": _pred(p.lr, *p.lr_ci95), "B": _pred(p.B, *p.B_ci95)}, sens, {"method": res.method}
    if args.law == "isoflop":
        if f"tag.{Tag.BUDGET}" in df.columns:  # planned budget C, as lab-fit isoflop reads it
            budget = df[f"tag.{Tag.BUDGET}"].cast(pl.Float64, strict=False)
            df = df.with_columns(budget=budget) if budget.null_count() == 0 else df
        a = predict_optimal(fit_isoflop(df, bootstrap=args.bootstrap, seed=args.seed), target["C"])
        sens = [isoflop_sensitivity(df, [target["C"]])] if sens_on else []
        return {"N": _pred(a.N, *a.N_ci95), "D": _pred(a.D, *a.D_ci95)}, sens, {}
    kw = {"form": "chinchilla", "seed": args.seed}
    fit = fit_loss(df, bootstrap=args.bootstrap, **kw)
    if "C" in target:
        opt = compute_optimal(fit, [target["C"]]).row(0, named=True)
        preds = {q: _pred(opt[f"{q}_opt"], opt[f"{q}_opt_lo"], opt[f"{q}_opt_hi"]) for q in ("loss", "N", "D")}
        return preds, loss_sensitivity(df, [target["C"]], kw) if sens_on else [], {"params": fit.params}
    est, lo, hi = (float(v) for v in prediction_interval(fit, target["N"], target["D"]))
    sens = loss_sensitivity_at(df, target["N"], target["D"], kw) if sens_on else []
    return {"loss": _pred(est, lo, hi)}, sens, {"params": fit.params}


def _experiment(args: argparse.Namespace, df: pl.DataFrame) -> str:
    """The experiment of the fitted runs (the points frame names runs; their experiments come from the store)."""
    runs = store_runs(args).join(df.select("run_id"), on="run_id", how="semi")
    ids = sorted(set(runs["experiment_id"].to_list()))
    if len(ids) != 1:
        raise CliError(f"the fitted runs span {len(ids)} experiments {ids}; choose one with --experiment, so the "
                       "forecast is recorded beside its runs")
    return ids[0]


def _record(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    if args.law is None:
        raise CliError("give --law loss|isoflop|hparams and a target to record a forecast, or --check")
    target, label = _target(args)
    df = frame(args, NEEDED[args.law], say)
    preds, sens, extra = _fit(args, df, target, say)
    ids = df["run_id"].to_list()
    payload = jsonable({"law": args.law, "target": target, "target_label": label, "predictions": preds,
                        "sensitivity": [s.to_dict() for s in sens], "runs": ids,
                        "runs_digest": runs_digest(ids, df["loss"].to_list()), "bootstrap": args.bootstrap, **extra})
    run_id = record_forecast(args.tracking_uri, _experiment(args, df), payload)
    rows = [[q, report.interval(p["value"], p["lo"], p["hi"])] for q, p in preds.items()]
    print(report.table(["quantity", "forecast [95% CI]"], rows, f"forecast {run_id} ({args.law} at {label}), "
                       f"fitted on {len(ids)} runs"))
    for s in sens:
        print("\n" + report.sensitivity_table(s))
    return {"forecast_run": run_id, **payload}


def _landed(runs: pl.DataFrame, target: dict[str, float], rel_tol: float) -> pl.DataFrame:
    ok = pl.lit(True)
    for k, v in target.items():
        ok = ok & ((pl.col(k) / v - 1).abs() <= rel_tol)
    return runs.filter(ok)


COLUMN = {"loss": "loss", "lr": "lr", "B": "B", "N": "N", "D": "D"}
"""The landed run's frame column that realises each forecast quantity."""


def compare(forecast: dict[str, Any], runs: pl.DataFrame, rel_tol: float = REL_TOL) -> dict[str, Any] | None:
    """A recorded forecast (tracking.forecasts.load_forecasts) against the latest FINISHED run of `runs` landed at
    its target (N and D, or C, within rel_tol) in its experiment: landed_run, and per quantity realised, error =
    realised / forecast - 1 and within_ci95 (None without an interval). None while no run has landed there."""
    landed = _landed(runs.filter(pl.col("experiment_id") == forecast["experiment_id"]), forecast["target"], rel_tol)
    if landed.height == 0:
        return None
    run = landed.sort("end_time").row(-1, named=True)  # the latest to finish
    realised, errors, within = {}, {}, {}
    for q, p in forecast["predictions"].items():
        value = run.get(COLUMN.get(q, q))
        if value is None or p["value"] is None:
            continue
        realised[q], errors[q] = float(value), float(value) / p["value"] - 1.0
        within[q] = None if p["lo"] is None else bool(p["lo"] <= value <= p["hi"])
    return {"landed_run": run["run_id"], "realised": realised, "error": errors, "within_ci95": within}


def _check(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    runs = store_runs(args)
    experiments = sorted(set(runs["experiment_id"].to_list()))
    forecasts = [f for f in load_forecasts(args.tracking_uri, experiments)
                 if args.forecast is None or f["run_id"] == args.forecast]
    if not forecasts:
        raise CliError(f"no forecast runs{' ' + args.forecast if args.forecast else ''} in experiments "
                       f"{experiments}; record one with lab-fit forecast --law ... --target-...")
    rows, out = [], []
    for f in forecasts:
        found = compare(f, runs, args.rel_tol)
        if found is None:
            rows.append([f["run_id"], f["law"], f["target_label"], "no run at the target yet", "", "", "", ""])
            out.append({"forecast_run": f["run_id"], "landed_run": None})
            continue
        for q, value in found["realised"].items():
            p, error, within = f["predictions"][q], found["error"][q], found["within_ci95"][q]
            rows.append([f["run_id"], f["law"], f["target_label"], found["landed_run"], q,
                         report.interval(p["value"], p["lo"], p["hi"]), report.num(value),
                         f"{100 * error:+.3g}%" + ("" if within is None else " (in CI)" if within
                                                   else " (outside CI)")])
        record_check(args.tracking_uri, f["run_id"], found["landed_run"], found["realised"], found["error"])
        out.append({"forecast_run": f["run_id"], **found})
    print(report.table(["forecast run", "law", "target", "landed run", "quantity", "forecast [95% CI]", "realised",
                        "error"], rows, "forecasts against realised runs (error = realised / forecast - 1)"))
    return {"checks": out}


def _run(args: argparse.Namespace, say: Progress) -> dict[str, Any]:
    if args.tracking_uri is None:
        raise CliError("a forecast lives in an MLflow store: give --tracking-uri (e.g. sqlite:///mlflow.db), "
                       "not --input")
    if getattr(args, "log", False):
        raise CliError("--log puts a fitted law onto its sweep's parent run; a forecast is a run of its own: "
                       "drop --log")
    return _check(args, say) if args.check else _record(args, say)


def add_parser(sub: Any, parents: list[argparse.ArgumentParser], positive: Any) -> None:
    """Register `lab-fit forecast` (called from analysis.cli)."""
    fc = sub.add_parser("forecast", parents=parents, help="record a forecast at a target in the store, or --check it")
    fc.add_argument("--law", choices=LAWS, help="the law to forecast with")
    for name in ("N", "D", "C"):
        fc.add_argument(f"--target-{name}", type=positive, metavar=name)
    fc.add_argument("--method", choices=["auto", "convex", "plateau", "joint"], default="auto", help="hparams")
    fc.add_argument("--check", action="store_true", help="compare forecasts with runs landed at their targets")
    fc.add_argument("--forecast", metavar="RUN_ID", help="--check only this forecast run")
    fc.add_argument("--rel-tol", type=positive, default=REL_TOL, help="--check: N, D (or C) within this of the target")
    fc.set_defaults(run=_run)
