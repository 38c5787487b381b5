"""Extrapolation check: fit a loss law on the cheaper runs, predict the larger ones, report the error.

A law is only useful if it predicts runs larger than those it was fitted on; this holds out every run with
C >= C_threshold (FLOPs; C = 6·N·D when the frame has no C column) and compares predicted with actual loss.

With several points per run (learning curves as points, `groups="run_id"`) the split is by run: a run whose
largest C reaches the threshold is held out whole, so none of its early points, which carry that model's size,
informs the fit that is meant to extrapolate to it. Its points below the threshold are in neither set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from analysis.fitting import FitResult
from analysis.laws.loss import fit_loss, predict_loss, with_derived_columns
from analysis.validate import PointsError, check_points


@dataclass(frozen=True)
class HoldoutReport:
    """Fit on C < C_threshold, error on C >= C_threshold.

    frame: the held-out rows with columns N, D, C, loss, predicted, rel_error = (predicted − loss)/loss
    (and predicted_lo / predicted_hi, percentile 95% from the bootstrap draws, when the fit has draws).
    """

    fit: FitResult
    frame: pl.DataFrame
    C_threshold: float
    n_train: int
    n_test: int
    mean_abs_rel_error: float
    max_abs_rel_error: float
    n_unused: int = 0
    """Points of held-out runs below the threshold (split by run only): neither fitted on nor predicted."""

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures of the check."""
        return {"form": self.fit.form, "C_threshold": self.C_threshold, "n_train": self.n_train,
                "n_test": self.n_test, "n_unused": self.n_unused, "mean_abs_rel_error": self.mean_abs_rel_error,
                "max_abs_rel_error": self.max_abs_rel_error}


def _prediction_interval(fit: FitResult, test: pl.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    draws = fit.param_draws()
    if not draws or fit.predictor is None:
        return None
    inputs = {c: test[c].cast(pl.Float64).to_numpy() for c in ("N", "D", "C")}
    preds = []
    for j in range(next(iter(draws.values())).size):
        params = {name: float(v[j]) for name, v in draws.items()}
        preds.append(fit.predictor(params, *(inputs[c] for c in fit.inputs)))
    stacked = np.stack(preds)
    lo, hi = np.percentile(stacked, [2.5, 97.5], axis=0)
    return lo, hi


def holdout_check(df: pl.DataFrame, form: str, C_threshold: float, bootstrap: int = 0, delta: float = 1e-3,
                  seed: int = 0, **fit_kwargs: Any) -> HoldoutReport:
    """Fit `form` on rows with C < C_threshold and report the relative error of its predictions on the rest.

    Extra keyword arguments go to `analysis.laws.loss.fit_loss` (exclude_top_loss, bounds, starts, ...).
    """
    df = with_derived_columns(df)
    check_points(df, ["N", "C", "loss"])
    groups = fit_kwargs.get("groups")
    if groups is not None:  # several points per run: hold out whole runs (module docstring)
        held_out = (pl.col("C").max().over(groups) >= C_threshold)
        train = df.filter(~held_out)
        test = df.filter(held_out & (pl.col("C") >= C_threshold))
    else:
        train = df.filter(pl.col("C") < C_threshold)
        test = df.filter(pl.col("C") >= C_threshold)
    if test.height == 0:
        raise PointsError(f"no run has C >= {C_threshold:g} FLOPs (largest C is {df['C'].max():g}); "
                          "lower C_threshold so some runs are held out")
    if train.height == 0:
        raise PointsError(f"no run has C < {C_threshold:g} FLOPs (smallest C is {df['C'].min():g}); "
                          "raise C_threshold so some runs remain to fit on")
    fit = fit_loss(train, form=form, bootstrap=bootstrap, delta=delta, seed=seed, **fit_kwargs)
    predicted = predict_loss(fit, N=test["N"].to_numpy(), D=test["D"].to_numpy() if "D" in test.columns else None,
                             C=test["C"].to_numpy())
    actual = test["loss"].cast(pl.Float64).to_numpy()
    rel = (predicted - actual) / actual
    frame = test.select([c for c in ("N", "D", "C", "loss") if c in test.columns]).with_columns(
        predicted=pl.Series(predicted), rel_error=pl.Series(rel))
    interval = _prediction_interval(fit, test)
    if interval is not None:
        frame = frame.with_columns(predicted_lo=pl.Series(interval[0]), predicted_hi=pl.Series(interval[1]))
    return HoldoutReport(fit=fit, frame=frame, C_threshold=float(C_threshold), n_train=train.height,
                         n_test=test.height, mean_abs_rel_error=float(np.mean(np.abs(rel))),
                         max_abs_rel_error=float(np.max(np.abs(rel))),
                         n_unused=df.height - train.height - test.height)
