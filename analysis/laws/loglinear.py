"""Power laws with several inputs, y = coef · Π_i x_i^exp_i, fitted by least squares in log space.

Shared by the allocation (isoflop), hyperparameter (hparams) and critical-batch-size (cbs) laws, which all
regress a log optimum on log scale variables and report intervals from bootstrap draws. The results are
`analysis.fitting.FitResult`s whose params are `coef` and one `exp_<input>` per input (`exp` when there is a
single input, matching `fit_power_law`), with draws in that order so intervals of predictions follow.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from analysis.fitting import FitResult, summarize_draws


class LawFitError(ValueError):
    """The points cannot determine the law (too few, or too few distinct values of an input)."""


def ols_log(log_X: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    """[ln coef, exp_1, ..., exp_p] minimising Σ (ln y − ln coef − Σ_i exp_i ln x_i)²; LawFitError if rank < p+1."""
    log_X = np.atleast_2d(np.asarray(log_X, dtype=float).T).T  # (n, p)
    design = np.column_stack([np.ones(log_X.shape[0]), log_X])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise LawFitError(f"{log_X.shape[0]} points cannot determine {design.shape[1]} log-linear parameters: "
                          "some input takes a single value (or inputs are collinear); vary every input")
    theta, *_ = np.linalg.lstsq(design, np.asarray(log_y, dtype=float), rcond=None)
    return theta


def param_names(inputs: Sequence[str]) -> tuple[str, ...]:
    """("coef", "exp") for one input, ("coef", "exp_N", "exp_D") for several."""
    return ("coef", "exp") if len(inputs) == 1 else ("coef", *(f"exp_{s}" for s in inputs))


def power_predictor(params: dict[str, float], *x: Any) -> np.ndarray:
    exps = [v for k, v in params.items() if k != "coef"]
    out = np.asarray(params["coef"], dtype=float)
    for e, xi in zip(exps, x):
        out = out * np.asarray(xi, dtype=float) ** e
    return out


def loglinear_result(form: str, inputs: Sequence[str], log_X: np.ndarray, log_y: np.ndarray,
                     log_draws: np.ndarray, names: Sequence[str] | None = None) -> FitResult:
    """FitResult for y = coef·Π x_i^exp_i from the full-data OLS and bootstrap draws of [ln coef, exps...].

    names: parameter names, coef first (default `param_names(inputs)`).
    log_draws: (R, 1+p) draws in the fitted parametrisation (NaN rows for failed resamples); they are stored
    with coef exponentiated so that `prediction_interval` can evaluate the law per draw.
    """
    log_X = np.atleast_2d(np.asarray(log_X, dtype=float).T).T
    theta = ols_log(log_X, log_y)
    names = tuple(names) if names is not None else param_names(inputs)
    draws = np.asarray(log_draws, dtype=float).reshape(-1, len(names)).copy()
    draws[:, 0] = np.exp(draws[:, 0])
    stderr, ci95 = summarize_draws(names, draws)
    residuals = np.asarray(log_y, dtype=float) - (theta[0] + log_X @ theta[1:])
    design = np.column_stack([np.ones(log_X.shape[0]), log_X])
    params = {names[0]: float(np.exp(theta[0])), **{n: float(v) for n, v in zip(names[1:], theta[1:])}}
    return FitResult(
        form=form, params=params, stderr=stderr, ci95=ci95, objective=float(np.sum(residuals ** 2)),
        n_points=int(log_X.shape[0]), inputs=tuple(inputs), condition_number=float(np.linalg.cond(design)),
        n_resamples=int(draws.shape[0]), n_failed_resamples=int((~np.isfinite(draws).all(axis=1)).sum()),
        residuals=residuals, draws=draws, predictor=power_predictor)


def prediction_interval(fit: FitResult, *inputs: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, lo, hi) of fit.predict(*inputs), the interval from percentiles of the law over bootstrap draws.

    Works for any FitResult carrying a predictor and draws (in the order of its params); NaN bounds when
    fewer than two resamples succeeded.
    """
    estimate = np.asarray(fit.predict(*inputs), dtype=float)
    names = list(fit.params)
    ok = fit.draws[np.isfinite(fit.draws).all(axis=1)] if fit.draws.size else np.empty((0, len(names)))
    if ok.shape[0] < 2 or fit.predictor is None:
        nan = np.full(estimate.shape, np.nan)
        return estimate, nan, nan.copy()
    values = np.stack([np.asarray(fit.predictor(dict(zip(names, row)), *inputs), dtype=float) for row in ok])
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail], axis=0)
    return estimate, lo, hi


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per-column percentile interval of draws (R, k) ignoring NaN; NaN where fewer than two draws are finite."""
    draws = np.asarray(draws, dtype=float)
    tail = 50.0 * (1.0 - level)
    enough = np.isfinite(draws).sum(axis=0) >= 2
    lo = np.full(draws.shape[1], np.nan)
    hi = np.full(draws.shape[1], np.nan)
    if enough.any():
        lo[enough], hi[enough] = np.nanpercentile(draws[:, enough], [tail, 100.0 - tail], axis=0)
    return lo, hi
