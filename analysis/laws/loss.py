"""Fit loss laws L(N, D), L(N), L(C) to a tidy frame of runs, predict with them, and derive the
compute-optimal allocation (Hoffmann et al. 2022 approach 3).

Tidy frame schema: columns `N` (parameters), `D` (tokens), `C` (FLOPs; C = 6·N·D when absent), `loss`
(nats/token), optionally a group column such as `run_id` for a bootstrap over runs.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import polars as pl

from analysis.fitting import (FitResult, bootstrap as run_bootstrap, bootstrap_batched, huber_log_objective,
                              jacobian_condition, multistart_lbfgsb, params_at_bound, polish, summarize_draws)
from analysis.laws.loss_forms import LossForm, get_form
from analysis.validate import PointsError, check_points

Bounds = tuple[tuple[float, float], ...]


def with_derived_columns(df: pl.DataFrame) -> pl.DataFrame:
    """Add C = 6·N·D (Kaplan et al. 2020, training FLOPs without the attention term) or D = C/(6·N)
    when one of them is missing and the other two are present."""
    cols = set(df.columns)
    if "C" not in cols and {"N", "D"} <= cols:
        df = df.with_columns(C=6.0 * pl.col("N").cast(pl.Float64) * pl.col("D").cast(pl.Float64))
    if "D" not in cols and {"N", "C"} <= cols:
        df = df.with_columns(D=pl.col("C").cast(pl.Float64) / (6.0 * pl.col("N").cast(pl.Float64)))
    return df


def _log_inputs(df: pl.DataFrame, form: LossForm) -> tuple[np.ndarray, ...]:
    return tuple(np.log(df[c].cast(pl.Float64).to_numpy()) for c in form.inputs)


def _predict_params(form_name: str, params: dict[str, float], *inputs: Any) -> np.ndarray:
    """L at the given inputs (in the order of the form's `inputs`) for reported parameters `params`."""
    form = get_form(form_name)
    arrays = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in inputs))
    shape = arrays[0].shape
    logs = tuple(np.log(a.ravel()) for a in arrays)
    theta = form.from_params(np.array([params[n] for n in form.param_names]))
    pred, _ = form.log_predict(theta[None, :], logs)
    return np.exp(pred[0]).reshape(shape)


def fit_loss(df: pl.DataFrame, form: str = "chinchilla", bootstrap: int = 1000, delta: float = 1e-3,
             seed: int = 0, exclude_top_loss: int = 0, *, bounds: Bounds | None = None,
             starts: np.ndarray | None = None, groups: str | None = None, bootstrap_method: str = "batched",
             n_jobs: int | None = None, optimum: FitResult | None = None) -> FitResult:
    """Fit the loss law `form` ("chinchilla", "kaplan", "farseer", "L(N)", "L(C)"; see loss_forms.FORMS).

    Objective: Σ huber(log L_pred − log loss, delta) (summed, Hoffmann et al. 2022 / Besiroglu et al. 2024),
    minimised by multi-start L-BFGS-B with analytic gradients from the form's grid of starts (`starts`
    overrides it, in the fitted parametrisation: see the form's `fit_names`). exclude_top_loss drops that many
    highest-loss rows first (Besiroglu et al. drop 5 of the Chinchilla points). bootstrap: resamples of rows
    (of groups when `groups` names a column), each warm-started from the full-data optimum; 0 skips it.
    bootstrap_method "batched" refits all resamples together in one vectorised L-BFGS (fastest: ~1,000
    resamples of 250 points in seconds); "processes" refits each with scipy's L-BFGS-B in `n_jobs` worker
    processes. Both use the same resamples for the same seed and reach the same optima (to ~1e-6 of f).
    bounds, in the fitted parametrisation, override the form's; parameters ending on a bound are flagged.
    optimum: a fit of these same points, form, delta, exclude_top_loss and bounds (typically with bootstrap=0);
    its optimum is taken as found and only the bootstrap runs, so a caller can show the point estimate while
    the intervals are computed, without searching the starts twice.
    """
    law = get_form(form)
    if bootstrap_method not in ("batched", "processes"):
        raise ValueError(f"bootstrap_method must be 'batched' or 'processes', got {bootstrap_method!r}")
    k = len(law.fit_names)
    df = with_derived_columns(df)
    check_points(df, [*law.inputs, "loss"], min_points=k + 1, n_params=k)
    if exclude_top_loss:
        if df.height - exclude_top_loss < k + 1:
            raise PointsError(f"excluding the {exclude_top_loss} highest-loss rows leaves "
                              f"{df.height - exclude_top_loss} points, fewer than the {k + 1} that form {form!r} "
                              "needs; exclude fewer rows")
        df = df.sort("loss", descending=True).slice(exclude_top_loss)
    bounds = tuple(bounds) if bounds is not None else law.bounds
    if len(bounds) != k:
        raise ValueError(f"form {form!r} has {k} fitted parameters {law.fit_names} but {len(bounds)} bounds were given")
    logs = _log_inputs(df, law)
    log_y = np.log(df["loss"].cast(pl.Float64).to_numpy())
    log_predict = partial(law.log_predict, logs=logs)
    objective = huber_log_objective(log_predict, log_y, delta)
    if optimum is not None:
        if optimum.form != law.name or optimum.n_points != log_y.size:
            raise ValueError(f"optimum is a {optimum.form!r} fit of {optimum.n_points} points, not of these "
                             f"{log_y.size} points with form {law.name!r}")
        x, f = law.from_params(np.array([optimum.params[n] for n in law.param_names])), optimum.objective
    else:
        x_start = law.starts() if starts is None else np.atleast_2d(np.asarray(starts, dtype=float))
        x, f = multistart_lbfgsb(objective, x_start, bounds)

    group_labels = df[groups].to_numpy() if groups is not None else None
    if bootstrap <= 0:
        draws = np.empty((0, k))
    elif bootstrap_method == "batched":
        draws = law.to_params(bootstrap_batched(log_predict, log_y, delta, x, bounds, bootstrap, seed, group_labels))
    else:  # "processes"
        def refit(idx: np.ndarray) -> np.ndarray:
            # A resample with replacement is the full sum with integer weights (row counts).
            weights = np.bincount(idx, minlength=log_y.size).astype(float)
            x_b, _ = polish(huber_log_objective(log_predict, log_y, delta, weights=weights), x, bounds)
            return law.to_params(x_b)

        draws = run_bootstrap(refit, log_y.size, bootstrap, seed, group_labels, n_jobs)
    stderr, ci95 = summarize_draws(law.param_names, draws)
    pred, _ = log_predict(x[None, :])
    flagged = params_at_bound(x, bounds, law.fit_names)
    return FitResult(
        form=law.name, params=dict(zip(law.param_names, map(float, law.to_params(x)))), stderr=stderr, ci95=ci95,
        objective=float(f), n_points=int(log_y.size),
        at_bound=tuple(law.param_names[law.fit_names.index(n)] for n in flagged), inputs=law.inputs, delta=delta,
        condition_number=jacobian_condition(log_predict, x), n_resamples=int(max(bootstrap, 0)),
        n_failed_resamples=int(np.isnan(draws).any(axis=1).sum()) if draws.size else 0,
        residuals=log_y - pred[0], draws=draws, predictor=partial(_predict_params, law.name))


def predict_loss(result: FitResult, N: Any = None, D: Any = None, C: Any = None) -> np.ndarray:
    """Predicted loss (nats/token) of a fitted law at N and D (or C for L(C); C = 6·N·D if only N, D given)."""
    form = get_form(result.form)
    given = {"N": N, "D": D, "C": C}
    if "C" in form.inputs and C is None and N is not None and D is not None:
        given["C"] = 6.0 * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)
    missing = [c for c in form.inputs if given[c] is None]
    if missing:
        raise ValueError(f"form {result.form!r} predicts from {form.inputs}; pass {missing}")
    return _predict_params(result.form, result.params, *(given[c] for c in form.inputs))


def _allocation(E: Any, A: Any, B: Any, alpha: Any, beta: Any) -> tuple[Any, Any, Any]:
    """G, a, b of N_opt(C) = G·(C/6)^a, D_opt(C) = G^-1·(C/6)^b (Hoffmann et al. 2022, eq. 4 and appendix D.2):
    a = β/(α+β), b = α/(α+β), G = (αA/(βB))^(1/(α+β))."""
    s = alpha + beta
    return (alpha * A / (beta * B)) ** (1.0 / s), beta / s, alpha / s


def allocation_exponents(result: FitResult) -> dict[str, tuple[float, float, float]]:
    """(estimate, 2.5%, 97.5%) of G, a and b of the compute-optimal allocation, from a chinchilla fit."""
    _require_chinchilla(result)
    p = result.params
    point = _allocation(p["E"], p["A"], p["B"], p["alpha"], p["beta"])
    d = result.param_draws()
    out = {}
    for name, value, j in zip(("G", "a", "b"), point, range(3)):
        if d:
            lo, hi = np.percentile(_allocation(d["E"], d["A"], d["B"], d["alpha"], d["beta"])[j], [2.5, 97.5])
        else:
            lo = hi = float("nan")
        out[name] = (float(value), float(lo), float(hi))
    return out


def _require_chinchilla(result: FitResult) -> None:
    if result.form != "chinchilla":
        raise ValueError(f"the closed-form compute-optimal allocation needs a 'chinchilla' fit, got {result.form!r}")


def compute_optimal(result: FitResult, C: Any) -> pl.DataFrame:
    """Compute-optimal N and D for budgets C (FLOPs, C = 6·N·D) from a chinchilla fit, with percentile 95%
    intervals from the bootstrap draws, tokens per parameter D_opt/N_opt and the loss at the optimum (its interval:
    each draw's loss at that draw's own optimum)."""
    _require_chinchilla(result)
    C = np.atleast_1d(np.asarray(C, dtype=float))
    if not (np.isfinite(C).all() and (C > 0).all()):
        raise ValueError(f"compute budgets C must be finite and positive, got {C}")

    def optimum(E: Any, A: Any, B: Any, alpha: Any, beta: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        G, a, b = (np.asarray(v, dtype=float)[..., None] for v in _allocation(E, A, B, alpha, beta))
        n_opt, d_opt = G * (C / 6.0) ** a, (C / 6.0) ** b / G
        return n_opt, d_opt, d_opt / n_opt

    p = result.params
    point = [v.ravel() for v in optimum(p["E"], p["A"], p["B"], p["alpha"], p["beta"])]
    p_loss = p["E"] + p["A"] / point[0] ** p["alpha"] + p["B"] / point[1] ** p["beta"]
    d = result.param_draws()
    cols: dict[str, np.ndarray] = {"C": C}
    draws = optimum(d["E"], d["A"], d["B"], d["alpha"], d["beta"]) if d else None
    for j, name in enumerate(("N_opt", "D_opt", "tokens_per_param")):
        cols[name] = point[j]
        lo, hi = (np.percentile(draws[j], [2.5, 97.5], axis=0) if draws is not None
                  else (np.full(C.size, np.nan), np.full(C.size, np.nan)))
        cols[f"{name}_lo"], cols[f"{name}_hi"] = lo, hi
    cols["loss_opt"] = p_loss
    if draws is not None:  # each resample's loss at its own optimum
        E, A, B, alpha, beta = (np.asarray(d[k], dtype=float)[:, None] for k in ("E", "A", "B", "alpha", "beta"))
        loss_draws = E + A / draws[0] ** alpha + B / draws[1] ** beta
        cols["loss_opt_lo"], cols["loss_opt_hi"] = np.percentile(loss_draws, [2.5, 97.5], axis=0)
    else:
        cols["loss_opt_lo"] = cols["loss_opt_hi"] = np.full(C.size, np.nan)
    return pl.DataFrame(cols)
