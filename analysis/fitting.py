"""Robust multi-start fitting and bootstrap, shared by every law in `analysis.laws`.

The recipe (Hoffmann et al. 2022, appendix D.2; Besiroglu et al. 2024, "Chinchilla Scaling: A replication
attempt"): fit in log space, minimise the SUM of Huber losses of the log residuals (delta = 1e-3 by default),
run L-BFGS-B from a grid (or a Latin hypercube) of starts and keep the best optimum; uncertainty from a
bootstrap over rows (or over groups of rows, e.g. runs), each resample warm-started from the full-data optimum.

Speed: `multistart_lbfgsb` runs all starts together as rows of one array (`analysis.batched_lbfgs`), then
polishes the best few distinct end points with scipy's L-BFGS-B. The polish makes the final optimum obey scipy's
stopping rules, so it matches a plain loop of `scipy.optimize.minimize` over every start (see
benchmarks/fit_speed.py for the check and the speed ratio).
"""

from __future__ import annotations

import html
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import qmc

from analysis.batched_lbfgs import BatchedObjective, batched_lbfgsb
from analysis.validate import check_arrays

Bounds = Sequence[tuple[float, float]]

# scipy's L-BFGS-B defaults, as a plain `minimize(..., method="L-BFGS-B")` uses them. Its ftol test divides by
# max(|f|, 1), so for Huber(δ=1e-3) objectives (f ~ 1e-3) it is an absolute 2.2e-9, about 2e-6 of f: such runs
# stop early on the nearly-L1 objective.
SCIPY_OPTIONS: dict[str, Any] = {"maxiter": 15000, "maxfun": 15000, "ftol": 2.220446049250313e-09, "gtol": 1e-5}
# Settings of the final polish and of every bootstrap refit: tight enough that the optimum is reached to ~1e-9
# of f rather than stopped early (a warm-started resample would otherwise stop at its start).
POLISH_OPTIONS: dict[str, Any] = {"maxiter": 15000, "maxfun": 15000, "ftol": 1e-14, "gtol": 1e-10}


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss per element: r²/2 for |r| <= delta, delta·(|r| - delta/2) beyond (Huber 1964)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_grad(r: np.ndarray, delta: float) -> np.ndarray:
    """d huber(r) / dr = clip(r, -delta, delta)."""
    return np.clip(r, -delta, delta)


LogPredictor = Callable[[np.ndarray], tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]]
"""theta (S, k) -> (log prediction (S, n), vjp) where vjp(w (S, n)) = Σ_n w · ∂pred/∂theta, shape (S, k)."""


def huber_log_objective(log_predict: LogPredictor, log_y: np.ndarray, delta: float,
                        weights: np.ndarray | None = None, chunk_rows: int = 256) -> BatchedObjective:
    """Batched objective Σ_i w_i·huber(pred_i(θ) - log y_i, δ) and its analytic gradient, for (S, k) thetas.

    weights: (n,) for every row of theta, or (R, n), one weight vector per problem (a batched bootstrap); then
    the objective takes `rows`, the problems that the rows of theta belong to (all R when omitted).
    Rows are processed in blocks of `chunk_rows` so the (rows, n) temporaries stay in cache (~2x faster for
    thousands of starts than one (S, n) pass).
    """

    def block(theta: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        pred, vjp = log_predict(theta)
        r = pred - log_y
        psi = np.clip(r, -delta, delta)  # huber'(r)
        h = (r - 0.5 * psi) * psi  # equals huber(r, delta) in both branches
        if w is not None:
            h *= w
            psi = psi * w
        f = h.sum(axis=1)
        return np.where(np.isfinite(f), f, np.inf), vjp(psi)

    def fun_and_grad(theta: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        w = weights
        if weights is not None and weights.ndim == 2:  # one weight vector per row: pick the rows evaluated
            w = weights if rows is None else weights[rows]
            if w.shape[0] != theta.shape[0]:
                raise ValueError(f"{w.shape[0]} weight rows for {theta.shape[0]} parameter rows; pass `rows`")
        per_row = w is not None and w.ndim == 2
        parts = [block(theta[i:i + chunk_rows], w[i:i + chunk_rows] if per_row else w)
                 for i in range(0, theta.shape[0], chunk_rows)]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return fun_and_grad


def grid_starts(axes: Sequence[Sequence[float]]) -> np.ndarray:
    """All combinations of the given per-parameter values, shape (prod(len(axis)), k)."""
    return np.array(list(itertools.product(*axes)), dtype=float)


def latin_hypercube_starts(bounds: Bounds, n: int, seed: int = 0) -> np.ndarray:
    """n Latin-hypercube starts within finite `bounds`, shape (n, k)."""
    lo, hi = np.array(bounds, dtype=float).T
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError(f"Latin hypercube starts need finite bounds, got {list(bounds)}; give finite (lo, hi)")
    return qmc.scale(qmc.LatinHypercube(d=len(lo), seed=seed).random(n), lo, hi)


def _scipy_lbfgsb(fun_and_grad: BatchedObjective, x0: np.ndarray, bounds: Bounds,
                  options: dict[str, Any] | None = None) -> tuple[np.ndarray, float]:
    def single(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = fun_and_grad(x[None, :])
        return float(f[0]), g[0]

    res = minimize(single, x0, jac=True, method="L-BFGS-B", bounds=list(bounds), options=options or SCIPY_OPTIONS)
    return res.x, float(res.fun)


def polish(fun_and_grad: BatchedObjective, x0: np.ndarray, bounds: Bounds, restarts: int = 2,
           options: dict[str, Any] | None = None) -> tuple[np.ndarray, float]:
    """scipy L-BFGS-B from x0 with POLISH_OPTIONS, restarted from its end point (fresh curvature memory)
    while that still improves the objective."""
    options = options or POLISH_OPTIONS
    x, f = _scipy_lbfgsb(fun_and_grad, x0, bounds, options)
    for _ in range(restarts):
        x2, f2 = _scipy_lbfgsb(fun_and_grad, x, bounds, options)
        if not f2 < f:
            break
        x, f = x2, f2
    return x, f


def _distinct_best(x: np.ndarray, f: np.ndarray, n: int, tol: float = 1e-3) -> np.ndarray:
    """Indices of the n lowest objectives whose end points differ (inf-norm > tol) from every one kept."""
    kept: list[int] = []
    for i in np.argsort(f):
        if not np.isfinite(f[i]) or len(kept) >= n:
            break
        if all(np.abs(x[i] - x[j]).max() > tol for j in kept):
            kept.append(int(i))
    return np.array(kept, dtype=int)


def multistart_lbfgsb(fun_and_grad_batched: BatchedObjective, starts: np.ndarray, bounds: Bounds,
                      halve_every: int | None = 1, n_keep: int = 64, n_polish: int = 4) -> tuple[np.ndarray, float]:
    """Best optimum over all starts; returns (x_best (k,), f_best).

    fun_and_grad_batched(theta (S, k)) -> (f (S,), grad (S, k)) evaluates every row at once.
    1. batched projected L-BFGS from every start, all rows in one array, with successive halving: every
       `halve_every` iterations the worse half of the running rows (by objective) stop, until `n_keep` rows
       remain, which run on to scipy's default stopping rules (`halve_every=None`: no halving, every start
       runs to convergence: exhaustive and ~10x slower);
    2. the `n_polish` lowest distinct end points go through scipy's L-BFGS-B with POLISH_OPTIONS (tight
       tolerances, restarted while it improves); the lowest wins.
    Halving trusts that the basin of the global optimum is among the better half of rows after a few
    iterations; on the Chinchilla grid (4,500 starts) ~250 starts reach the optimum and the best of them ranks
    first after one iteration. benchmarks/fit_speed.py checks the result against a loop over every start.
    """
    lo, hi = np.array(bounds, dtype=float).T
    batch = batched_lbfgsb(fun_and_grad_batched, np.asarray(starts, dtype=float), lo, hi,
                           halve_every=halve_every, min_active=n_keep)
    best = _distinct_best(batch.x, batch.f, n_polish)
    if best.size == 0:
        raise RuntimeError("every start gave a non-finite objective; check the data and the bounds")
    polished = [polish(fun_and_grad_batched, batch.x[i], bounds) for i in best]
    x_best, f_best = min(polished, key=lambda p: p[1])
    return x_best, f_best


def _resample_indices(n_rows: int, n_resamples: int, seed: int, groups: np.ndarray | None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n_rows, n_rows) for _ in range(n_resamples)]
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(labels.size)]
    return [np.concatenate([members[g] for g in rng.integers(0, labels.size, labels.size)])
            for _ in range(n_resamples)]


def _fit_chunk(fit: Callable[[np.ndarray], np.ndarray], chunk: list[np.ndarray]) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for idx in chunk:
        try:
            out.append(np.asarray(fit(idx), dtype=float))
        except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError):
            out.append(None)  # a degenerate resample (e.g. too few distinct points) counts as failed: NaN row
    return out


def bootstrap(fit: Callable[[np.ndarray], np.ndarray], n_rows: int, n_resamples: int = 1000, seed: int = 0,
              groups: np.ndarray | None = None, n_jobs: int | None = None) -> np.ndarray:
    """Refit on resampled rows; returns draws (n_resamples, k), a NaN row where a resample failed.

    fit(indices) refits on the rows `indices` (drawn with replacement) and returns the parameter vector.
    groups: one label per row; whole groups (e.g. runs) are resampled instead of rows. The resample indices
    are drawn here from `seed`, so draws do not depend on n_jobs. n_jobs: worker processes (joblib/loky, one
    thread each; `fit` is sent once per worker); None uses every core available to this process.
    """
    if n_resamples <= 0:
        return np.empty((0, 0))
    samples = _resample_indices(n_rows, n_resamples, seed, groups)
    n_jobs = len(os.sched_getaffinity(0)) if n_jobs is None else max(1, n_jobs)
    n_jobs = min(n_jobs, n_resamples)
    if n_jobs == 1:
        results = _fit_chunk(fit, samples)
    else:
        from joblib import Parallel, delayed, parallel_config

        chunks = [samples[i::n_jobs] for i in range(n_jobs)]
        with parallel_config(backend="loky", inner_max_num_threads=1):
            parts = Parallel(n_jobs=n_jobs)(delayed(_fit_chunk)(fit, c) for c in chunks)
        results = [None] * n_resamples
        for i, part in enumerate(parts):
            results[i::n_jobs] = part
    k = next((r.size for r in results if r is not None), 0)
    draws = np.full((n_resamples, k), np.nan)
    for i, r in enumerate(results):
        if r is not None:
            draws[i] = r
    return draws


def resample_weights(n_rows: int, n_resamples: int = 1000, seed: int = 0,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """Row counts (n_resamples, n_rows) of the resamples that `bootstrap` with the same seed and groups draws."""
    samples = _resample_indices(n_rows, n_resamples, seed, groups)
    return np.stack([np.bincount(idx, minlength=n_rows) for idx in samples]).astype(float)


def bootstrap_batched(log_predict: LogPredictor, log_y: np.ndarray, delta: float, x0: np.ndarray, bounds: Bounds,
                      n_resamples: int = 1000, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Draws (n_resamples, k) of a Huber-log fit, every resample one row of a batched L-BFGS warm-started at x0.

    The same resamples as `bootstrap(..., seed, groups)` (a resample is the full sum with integer row weights),
    but all refitted together in this process: for ~250 points and 1,000 resamples about as much work as a
    few hundred objective evaluations of one start each, instead of 1,000 scipy runs. Tolerances are those of
    POLISH_OPTIONS, so a warm-started resample is not stopped at its start. Rows that end with a non-finite
    objective are NaN.
    """
    if n_resamples <= 0:
        return np.empty((0, np.size(x0)))
    weights = resample_weights(log_y.size, n_resamples, seed, groups)
    objective = huber_log_objective(log_predict, log_y, delta, weights=weights)
    lo, hi = np.array(bounds, dtype=float).T
    x = np.tile(np.asarray(x0, dtype=float), (n_resamples, 1))
    for _ in range(2):  # a restart with fresh curvature memory, as `polish` does, finishes the slow rows
        res = batched_lbfgsb(objective, x, lo, hi, max_iter=POLISH_OPTIONS["maxiter"], ftol=POLISH_OPTIONS["ftol"],
                             gtol=POLISH_OPTIONS["gtol"], pass_rows=True)
        x = res.x
    draws = res.x.copy()
    draws[~np.isfinite(res.f)] = np.nan
    return draws


def summarize_draws(names: Sequence[str], draws: np.ndarray) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Bootstrap standard errors (std, ddof=1) and percentile 95% intervals per parameter, ignoring NaN rows."""
    ok = draws[np.isfinite(draws).all(axis=1)] if draws.size else draws
    if ok.shape[0] < 2:
        nan = float("nan")
        return {n: nan for n in names}, {n: (nan, nan) for n in names}
    se = ok.std(axis=0, ddof=1)
    lo, hi = np.percentile(ok, [2.5, 97.5], axis=0)
    return ({n: float(s) for n, s in zip(names, se)},
            {n: (float(a), float(b)) for n, a, b in zip(names, lo, hi)})


def params_at_bound(x: np.ndarray, bounds: Bounds, names: Sequence[str], rtol: float = 1e-6) -> tuple[str, ...]:
    """Names of the parameters whose optimum lies on (within rtol of the range of) a finite bound."""
    flagged = []
    for name, xi, (lo, hi) in zip(names, x, bounds):
        scale = rtol * max(1.0, abs(hi - lo) if np.isfinite(hi - lo) else abs(xi))
        if (np.isfinite(lo) and xi - lo <= scale) or (np.isfinite(hi) and hi - xi <= scale):
            flagged.append(name)
    return tuple(flagged)


def jacobian_condition(log_predict: LogPredictor, x: np.ndarray, rel_step: float = 1e-6) -> float:
    """Condition number of the Jacobian of the log prediction at x (central differences in each parameter).

    Large values (> ~1e8) mean some parameter combination is barely determined by the data.
    """
    cols = []
    for j in range(x.size):
        h = rel_step * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        pred, _ = log_predict(np.stack([xp, xm]))
        cols.append((pred[0] - pred[1]) / (2 * h))
    return float(np.linalg.cond(np.stack(cols, axis=1)))


@dataclass(frozen=True)
class FitResult:
    """A fitted law: point estimates, bootstrap errors and intervals, and diagnostics.

    params/stderr/ci95 are in the law's reported parametrisation (e.g. E, A, B, alpha, beta). `draws` holds
    the bootstrap parameter vectors in the order of `params` (for intervals of derived quantities);
    `residuals` are log(observed) - log(predicted) at the optimum; `condition_number` is that of the Jacobian
    of the log prediction in the fitted parametrisation; `at_bound` names parameters stuck on a bound
    (the optimum is then not interior, and its interval is not trustworthy).
    """

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    objective: float
    n_points: int
    at_bound: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    delta: float | None = None
    condition_number: float = float("nan")
    n_resamples: int = 0
    n_failed_resamples: int = 0
    residuals: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False, compare=False)
    predictor: Callable[..., np.ndarray] | None = field(default=None, repr=False, compare=False)

    def predict(self, *inputs: Any) -> np.ndarray:
        """The law evaluated at `inputs` (in the order of `self.inputs`) with the fitted parameters."""
        if self.predictor is None:
            raise ValueError(f"FitResult for form {self.form!r} carries no predictor; use its law's predict function")
        return self.predictor(self.params, *inputs)

    def param_draws(self) -> dict[str, np.ndarray]:
        """Bootstrap draws per parameter name, failed resamples dropped."""
        ok = self.draws[np.isfinite(self.draws).all(axis=1)] if self.draws.size else self.draws
        return {name: ok[:, j] for j, name in enumerate(self.params)} if ok.size else {}

    def to_dict(self, include_draws: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (floats, lists, strings); draws only on request."""
        out: dict[str, Any] = {
            "form": self.form, "params": self.params, "stderr": self.stderr,
            "ci95": {k: list(v) for k, v in self.ci95.items()}, "objective": self.objective,
            "n_points": self.n_points, "at_bound": list(self.at_bound), "inputs": list(self.inputs),
            "delta": self.delta, "condition_number": self.condition_number, "n_resamples": self.n_resamples,
            "n_failed_resamples": self.n_failed_resamples, "residuals": self.residuals.tolist(),
        }
        if include_draws:
            out["draws"] = self.draws.tolist()
        return out

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(n)}{' ⚠ at bound' if n in self.at_bound else ''}</td><td>{v:.6g}</td>"
            f"<td>{self.stderr.get(n, float('nan')):.3g}</td>"
            f"<td>[{self.ci95.get(n, (float('nan'),) * 2)[0]:.4g}, "
            f"{self.ci95.get(n, (float('nan'),) * 2)[1]:.4g}]</td></tr>"
            for n, v in self.params.items())
        rms = float(np.sqrt(np.mean(self.residuals ** 2))) if self.residuals.size else float("nan")
        return (f"<div><b>{html.escape(self.form)}</b> — {self.n_points} points, objective {self.objective:.6g}, "
                f"{self.n_resamples} bootstrap resamples ({self.n_failed_resamples} failed), "
                f"RMS log residual {rms:.3g}, Jacobian condition {self.condition_number:.3g}"
                "<table><tr><th>param</th><th>estimate</th><th>SE</th><th>95% interval</th></tr>"
                f"{rows}</table></div>")


def _power_law_predict(params: dict[str, float], x: Any) -> np.ndarray:
    return params["coef"] * np.asarray(x, dtype=float) ** params["exp"]


def _ols_loglog(log_x: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    design = np.stack([np.ones_like(log_x), log_x], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, log_y, rcond=None)
    return np.array([np.exp(intercept), slope])


def fit_power_law(x: np.ndarray, y: np.ndarray, n_bootstrap: int = 1000, seed: int = 0,
                  form: str = "power_law") -> FitResult:
    """y = coef · x^exp by ordinary least squares of log y on log x; params `coef`, `exp`.

    Bootstrap over points (in-process: each refit is a 2x2 solve). `objective` is the residual sum of squares
    in log space; `result.predict(x)` evaluates coef·x^exp.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    check_arrays({"x": x, "y": y}, min_points=3, n_params=2)
    log_x, log_y = np.log(x), np.log(y)
    theta = _ols_loglog(log_x, log_y)

    def refit(idx: np.ndarray) -> np.ndarray:
        if np.unique(log_x[idx]).size < 2:
            raise ValueError("resample has a single distinct x")
        return _ols_loglog(log_x[idx], log_y[idx])

    draws = bootstrap(refit, x.size, n_bootstrap, seed, n_jobs=1)
    names = ("coef", "exp")
    stderr, ci95 = summarize_draws(names, draws) if n_bootstrap > 0 else summarize_draws(names, np.empty((0, 2)))
    residuals = log_y - (np.log(theta[0]) + theta[1] * log_x)
    design = np.stack([np.ones_like(log_x), log_x], axis=1)
    return FitResult(
        form=form, params={"coef": float(theta[0]), "exp": float(theta[1])}, stderr=stderr, ci95=ci95,
        objective=float(np.sum(residuals ** 2)), n_points=int(x.size), at_bound=(), inputs=("x",),
        condition_number=float(np.linalg.cond(design)), n_resamples=int(max(n_bootstrap, 0)),
        n_failed_resamples=int(np.isnan(draws).any(axis=1).sum()) if draws.size else 0,
        residuals=residuals, draws=draws if draws.size else np.empty((0, 2)), predictor=_power_law_predict)
