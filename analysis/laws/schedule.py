"""Schedule-aware loss-curve laws: fit the Multi-Power Law (Luo et al., ICLR 2025) or the LR-annealing law (Tissue
et al. 2024) to the loss curves of a few runs of one model, and predict the curve of any other LR schedule.

Formulas, sources and units: `analysis.laws.schedule_forms`. Pipeline:

    curves_from_frame(df)       tidy frame run_id, step, lr, loss -> validated Curve per run
    fit_schedule(curves, form)  Huber on ln loss, multi-start L-BFGS-B, bootstrap over runs -> ScheduleFit
    predict_curve(fit, lr)      the loss after every step (or chosen steps) of any lr sequence

Tidy frame schema: `run_id` (String), `step` (Int, optimizer step from 0), `lr` (Float, the lr step `step` used, on
every step from 0 up to the last), `loss` (Float nats/token where measured, null elsewhere).
The laws assume one model and one batch size: the same model trained under different lr sequences (design §6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from analysis.batched_lbfgs import batched_lbfgsb
from analysis.fitting import (POLISH_OPTIONS, huber_log_objective, latin_hypercube_starts, multistart_lbfgsb,
                              params_at_bound, resample_weights, summarize_draws)
from analysis.laws import schedule_forms as sf

SCHEMA = ("run_id", "step", "lr", "loss")

# Bounds of the fitted parametrisation (normalised lr, schedule_forms.MULTI_POWER_FIT / ANNEALING_FIT); L0's upper
# bound is the smallest measured loss. Wide on purpose: ln A' and ln B' cover 1e-4..1e3 nats, ln C' the range over
# which G(x) turns from linear to saturated for curves of 10..1e6 steps.
_MP_BOUNDS = ((0.0, None), (-9.0, 7.0), (1e-3, 3.0), (-9.0, 7.0), (-16.0, 6.0), (1e-3, 5.0), (0.0, 1.5))
_MP_STARTS = ((0.3, 0.95), (-3.0, 2.0), (0.1, 1.0), (-4.0, 1.0), (-10.0, 1.0), (0.2, 1.5), (0.1, 1.0))
_AN_BOUNDS = ((0.0, None), (-9.0, 7.0), (1e-3, 3.0), (0.0, 50.0))
_AN_STARTS = ((0.3, 0.95), (-3.0, 2.0), (0.1, 1.0), (0.0, 2.0))
N_STARTS = 256


class ScheduleInputError(ValueError):
    """Curves a schedule law cannot be fitted to; the message names the run, the problem and the fix."""


@dataclass(frozen=True)
class Curve:
    """One run: the lr of every optimizer step from 0 (T,), and the loss at its measured steps (M,)."""

    run_id: str
    lr: np.ndarray
    steps: np.ndarray
    loss: np.ndarray


def curves_from_frame(df: pl.DataFrame) -> dict[str, Curve]:
    """Validated curves of every run in a tidy frame (module docstring), in order of first appearance."""
    missing = [c for c in SCHEMA if c not in df.columns]
    if missing:
        raise ScheduleInputError(f"the table lacks columns {missing}; a schedule fit needs {list(SCHEMA)} (lr on "
                                 "every optimizer step from 0, loss where measured and empty elsewhere)")
    df = df.select(pl.col("run_id").cast(pl.String), pl.col("step").cast(pl.Int64, strict=False),
                   *(pl.col(c).cast(pl.Float64, strict=False) for c in ("lr", "loss")))
    if df.height == 0:
        raise ScheduleInputError("the table has no rows; give each run's lr on every step and its measured losses")
    if df["run_id"].null_count() or df["step"].null_count():
        raise ScheduleInputError(f"{df['run_id'].null_count()} rows lack a run_id and {df['step'].null_count()} "
                                 "lack a whole-number step; fill or drop those rows")
    out: dict[str, Curve] = {}
    for run_id in df["run_id"].unique(maintain_order=True).to_list():
        out[run_id] = _curve(run_id, df.filter(pl.col("run_id") == run_id))
    return out


def _curve(run_id: str, rows: pl.DataFrame) -> Curve:
    steps = rows["step"].to_numpy()
    back = np.flatnonzero(np.diff(steps) <= 0)
    if back.size:
        i = int(back[0])
        raise ScheduleInputError(f"run {run_id!r}: steps are not increasing (step {steps[i + 1]} follows step "
                                 f"{steps[i]}); give one row per step, sorted by step")
    lr = rows["lr"].fill_nan(None)
    expected = np.arange(steps[-1] + 1)
    if steps.size != expected.size or steps[0] != 0 or lr.null_count():
        known = set(steps[lr.is_not_null().to_numpy()].tolist())
        gap = next(int(s) for s in expected if s not in known)
        raise ScheduleInputError(f"run {run_id!r}: no lr at step {gap} ({expected.size - len(known)} of "
                                 f"{expected.size} steps lack one); the laws sum the lr of every optimizer step "
                                 "from 0, so log lr on every step")
    lr_values = lr.to_numpy()
    if not (np.isfinite(lr_values).all() and (lr_values >= 0).all() and lr_values.max() > 0):
        raise ScheduleInputError(f"run {run_id!r}: lr must be finite and >= 0 with some step > 0, got "
                                 f"min {np.nanmin(lr_values):g}, max {np.nanmax(lr_values):g}")
    measured = rows["loss"].fill_nan(None).is_not_null().to_numpy()
    if not measured.any():
        raise ScheduleInputError(f"run {run_id!r} has no loss on any step; record its loss (train/loss or "
                                 "val/loss) or leave the run out of the table")
    loss = rows["loss"].to_numpy()[measured]
    if (loss <= 0).any():
        raise ScheduleInputError(f"run {run_id!r}: {int((loss <= 0).sum())} losses are <= 0; losses are fitted "
                                 "in log space, so drop those rows")
    at = steps[measured]
    if np.cumsum(lr_values)[at[0]] <= 0:
        raise ScheduleInputError(f"run {run_id!r}: the loss at step {at[0]} comes before any step with lr > 0 "
                                 "(the law's LR area is 0 there); drop the losses measured before training moved")
    return Curve(run_id, lr_values, at.astype(np.int64), loss)


def thin_curve(curve: Curve, points: int, jump: float = 0.05) -> Curve:
    """At most `points` measured points of a curve, evenly spaced in its measured steps, the last included; where a
    curve has more, each kept point is the mean of the losses around it (a centred window of n/points measured
    points, shrinking at the ends), so a dense, noisy curve (a raw per-step training loss) keeps its information
    instead of a few noisy samples, and a fit costs the same whatever the logging cadence. A window holding an lr
    jump (one step changing the lr by more than `jump` of the peak, e.g. a step drop) is not averaged: the loss
    falls fast right after one, and a mean across it would blur the drop into the steps before it."""
    n = curve.steps.size
    if n <= points:
        return curve
    centres = np.unique(np.round(np.linspace(0, n - 1, points)).astype(int))
    half = max((n // points) // 2, 0)
    reach = np.minimum(half, np.minimum(centres, n - 1 - centres))  # symmetric, so the mean stays at its step
    cum = np.concatenate([[0.0], np.cumsum(curve.loss)])
    mean = (cum[centres + reach + 1] - cum[centres - reach]) / (2 * reach + 1)
    steps_of_lr_jump = np.flatnonzero(np.abs(np.diff(curve.lr)) > jump * curve.lr.max()) + 1
    lo, hi = curve.steps[centres - reach], curve.steps[centres + reach]
    straddles = (np.searchsorted(steps_of_lr_jump, lo, side="right")
                 < np.searchsorted(steps_of_lr_jump, hi, side="right"))
    loss = np.where(straddles, curve.loss[centres], mean)
    return Curve(curve.run_id, curve.lr, curve.steps[centres], loss)


def select_runs(curves: Mapping[str, Curve], run_ids: Sequence[str]) -> list[Curve]:
    """The curves of `run_ids`, in that order; unknown ids are one error listing those available."""
    unknown = [r for r in run_ids if r not in curves]
    if unknown:
        raise ScheduleInputError(f"unknown run ids {unknown}; the input has runs {sorted(curves)[:10]}"
                                 f"{' ...' if len(curves) > 10 else ''}")
    if len(set(run_ids)) != len(run_ids):
        raise ScheduleInputError(f"run ids repeat in {list(run_ids)}; name each fitted run once")
    return [curves[r] for r in run_ids]


@dataclass(frozen=True)
class ScheduleFit:
    """A fitted schedule law: the papers' parameters (recorded lr units) with bootstrap-over-runs intervals, and
    how well it fits each run (mean and worst relative error |predicted/measured − 1| over the measured points)."""

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    fit_runs: tuple[str, ...]
    run_errors: dict[str, tuple[float, float]]
    objective: float
    n_points: int
    delta: float
    lr_ref: float
    momentum: float
    at_bound: tuple[str, ...] = ()
    n_resamples: int = 0
    n_failed_resamples: int = 0
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False, compare=False)

    @classmethod
    def of(cls, form: str, params: Mapping[str, float], lr_ref: float = 1.0,
           momentum: float = sf.ANNEALING_MOMENTUM) -> "ScheduleFit":
        """A law with given parameters and no data behind it (e.g. read back from a fit's JSON), to predict with."""
        _law(form)
        return cls(form, dict(params), {}, {}, (), {}, float("nan"), 0, float("nan"), lr_ref, momentum)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the draws left out)."""
        return {"form": self.form, "params": self.params, "stderr": self.stderr,
                "ci95": {k: list(v) for k, v in self.ci95.items()}, "fit_runs": list(self.fit_runs),
                "run_errors": {r: {"mean_rel_error": m, "max_rel_error": w} for r, (m, w) in self.run_errors.items()},
                "objective": self.objective, "n_points": self.n_points, "delta": self.delta, "lr_ref": self.lr_ref,
                "momentum": self.momentum if self.form == sf.ANNEALING else None, "at_bound": list(self.at_bound),
                "n_resamples": self.n_resamples, "n_failed_resamples": self.n_failed_resamples}


def _inputs(curves: Sequence[Curve], lr_ref: float, momentum: float, quadrature: bool,
            width: float) -> sf.CurveInputs:
    log_area, s2, quads = [], [], []
    for c in curves:
        lr = c.lr / lr_ref
        log_area.append(np.log(np.cumsum(lr)[c.steps]))
        s2.append(sf.annealing_area(lr, momentum)[c.steps] * (1.0 - momentum))
        if quadrature:
            quads.append(sf.decay_quadrature(lr, c.steps, width))
    quad = sf.Quadrature.concat(quads) if quadrature else sf.Quadrature(*(np.zeros(0),) * 3, *(np.zeros(0, int),) * 2)
    return sf.CurveInputs(np.concatenate(log_area), np.concatenate(s2), quad)


def _law(form: str):
    if form == sf.MULTI_POWER:
        return sf.multi_power_log_predict, sf.MULTI_POWER_FIT, sf.MULTI_POWER_PARAMS, _MP_BOUNDS, _MP_STARTS
    if form == sf.ANNEALING:
        return sf.annealing_log_predict, sf.ANNEALING_FIT, sf.ANNEALING_PARAMS, _AN_BOUNDS, _AN_STARTS
    raise ScheduleInputError(f"unknown schedule law {form!r}; use one of {', '.join(sf.FORMS)}")


def fit_schedule(curves: Sequence[Curve], form: str = sf.MULTI_POWER, bootstrap: int = 200, delta: float = 1e-3,
                 seed: int = 0, momentum: float = sf.ANNEALING_MOMENTUM, width: float = sf.QUADRATURE_WIDTH,
                 n_starts: int = N_STARTS) -> ScheduleFit:
    """Fit `form` to the measured points of every curve at once.

    Objective: Σ huber(ln L_pred − ln loss, delta) over all points (the Chinchilla recipe of analysis.fitting),
    minimised by multi-start L-BFGS-B from `n_starts` Latin-hypercube starts. bootstrap: resamples of whole runs
    (points of one curve are not independent), each warm-started at the optimum; with few runs many resamples
    repeat, so each distinct resample is refitted once. A resample of runs that cannot identify every parameter
    (e.g. only constant-lr runs for the decay term) widens the intervals: that is what the data say.
    """
    log_predict, fit_names, names, bounds, start_box = _law(form)
    if not curves:
        raise ScheduleInputError("no runs to fit; give at least one run (the papers fit three: cosine, constant "
                                 "and a two-stage drop)")
    n_points = sum(c.steps.size for c in curves)
    if n_points <= len(fit_names):
        raise ScheduleInputError(f"{n_points} measured points for {len(fit_names)} parameters; measure the loss "
                                 "at more steps")
    lr_ref = max(float(c.lr.max()) for c in curves)
    x_in = _inputs(curves, lr_ref, momentum, form == sf.MULTI_POWER, width)
    log_y = np.log(np.concatenate([c.loss for c in curves]))
    min_loss = float(np.exp(log_y.min()))
    bounds = ((0.0, min_loss),) + bounds[1:]
    starts = latin_hypercube_starts(((start_box[0][0] * min_loss, start_box[0][1] * min_loss),) + start_box[1:],
                                    n_starts, seed)

    def predict(theta: np.ndarray):
        return log_predict(theta, x_in)

    objective = huber_log_objective(predict, log_y, delta, chunk_rows=32)
    x, f = multistart_lbfgsb(objective, starts, bounds, n_keep=16)
    groups = np.concatenate([np.full(c.steps.size, i) for i, c in enumerate(curves)])
    draws = _bootstrap_runs(predict, log_y, delta, x, bounds, bootstrap, seed, groups)
    params = sf.to_params(form, draws, lr_ref, momentum) if draws.size else np.empty((0, len(names)))
    stderr, ci95 = summarize_draws(names, params)
    fit = ScheduleFit(
        form=form, params=dict(zip(names, map(float, sf.to_params(form, x, lr_ref, momentum)))), stderr=stderr,
        ci95=ci95, fit_runs=tuple(c.run_id for c in curves), run_errors={}, objective=float(f), n_points=n_points,
        delta=delta, lr_ref=lr_ref, momentum=momentum,
        at_bound=tuple(names[fit_names.index(n)] for n in params_at_bound(x, bounds, fit_names)),
        n_resamples=max(bootstrap, 0), n_failed_resamples=int(np.isnan(params).any(axis=1).sum()), draws=params)
    errors = {c.run_id: relative_errors(predict_curve(fit, c.lr, c.steps, width), c.loss) for c in curves}
    return ScheduleFit(**{**fit.__dict__, "run_errors": errors})


def _bootstrap_runs(predict, log_y: np.ndarray, delta: float, x0: np.ndarray, bounds, n_resamples: int, seed: int,
                    groups: np.ndarray) -> np.ndarray:
    """Fitted-parametrisation draws (n_resamples, k) of resamples of whole runs; NaN rows where a refit failed."""
    if n_resamples <= 0:
        return np.empty((0, x0.size))
    weights = resample_weights(log_y.size, n_resamples, seed, groups)
    distinct, which = np.unique(weights, axis=0, return_inverse=True)
    objective = huber_log_objective(predict, log_y, delta, weights=distinct, chunk_rows=32)
    lo, hi = np.array([(a, np.inf if b is None else b) for a, b in bounds], dtype=float).T
    x = np.tile(x0, (distinct.shape[0], 1))
    for _ in range(2):  # a restart with fresh curvature memory finishes slow rows (as analysis.fitting.polish)
        res = batched_lbfgsb(objective, x, lo, hi, max_iter=2000, ftol=POLISH_OPTIONS["ftol"],
                             gtol=POLISH_OPTIONS["gtol"], pass_rows=True)
        x = res.x
    draws = res.x.copy()
    draws[~np.isfinite(res.f)] = np.nan
    return draws[np.ravel(which)]


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """(mean, worst) of |predicted/measured − 1|."""
    rel = np.abs(np.asarray(predicted) / np.asarray(measured) - 1.0)
    return float(rel.mean()), float(rel.max())


def predict_curve(fit: ScheduleFit, lr: np.ndarray, steps: np.ndarray | None = None,
                  width: float = sf.QUADRATURE_WIDTH) -> np.ndarray:
    """Predicted loss after each of `steps` (default: every step) of a run whose step k uses lr[k] (any length).

    The multi-power decay term costs ~(steps × decay steps) once to group (schedule_forms.decay_quadrature): a
    full 24,000-step cosine curve takes seconds; pass the steps you need.
    """
    lr = np.asarray(lr, dtype=float)
    steps = np.arange(lr.size) if steps is None else np.asarray(steps, dtype=np.int64)
    if lr.ndim != 1 or not (np.isfinite(lr).all() and (lr >= 0).all()):
        raise ScheduleInputError("lr must be a 1-d sequence of finite values >= 0, one per optimizer step")
    if steps.size and (steps.min() < 0 or steps.max() >= lr.size):
        raise ScheduleInputError(f"steps must lie in [0, {lr.size - 1}] for an lr sequence of {lr.size} steps")
    if steps.size and np.cumsum(lr)[steps.min()] <= 0:
        raise ScheduleInputError(f"no step with lr > 0 before step {steps.min()}: the law is undefined there")
    log_predict, *_ = _law(fit.form)
    names = sf.MULTI_POWER_PARAMS if fit.form == sf.MULTI_POWER else sf.ANNEALING_PARAMS
    theta = sf.from_params(fit.form, np.array([fit.params[n] for n in names]), fit.lr_ref, fit.momentum)
    x_in = _inputs([Curve("", lr, steps, np.ones(steps.size))], fit.lr_ref, fit.momentum,
                   fit.form == sf.MULTI_POWER, width)
    pred, _ = log_predict(theta[None, :], x_in)
    return np.exp(pred[0])
