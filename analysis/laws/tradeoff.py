"""The steps/tokens trade-off and the critical batch size it implies (McCandlish et al. 2018; Kaplan et al. 2020).

To reach a loss L, a run with batch B (tokens) needs S optimizer steps and E = B·S tokens. Empirically
    (S/S_min − 1)·(E/E_min − 1) = 1          (McCandlish et al. 2018; Kaplan et al. 2020 §5.1)
with S_min the fewest steps (B → ∞) and E_min the fewest tokens (B → 0). Writing E = B·S, this is
    S = S_min·(1 + B_crit/B) = S_min + E_min/B,   E = E_min·(1 + B/B_crit) = E_min + S_min·B,
    B_crit = E_min/S_min,
so S is linear in 1/B with intercept S_min and slope E_min. Kaplan et al. 2020 (§5.1) find
B_crit(L) = B*/L^(1/α_B) (B* ≈ 2e8 tokens, α_B ≈ 0.21); Zhang et al. 2024 find B_crit grows mainly with the data
size D. Here D at a target is E_min, the fewest tokens that reach it (at B = B_crit the run uses 2·E_min, a
constant factor that leaves the exponent unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import polars as pl

from analysis.fitting import FitResult, bootstrap
from analysis.laws.loglinear import loglinear_result, ols_log, percentile_ci
from analysis.serialize import jsonable
from analysis.validate import PointsError, check_points

TARGET_COLUMNS = ("target", "S_min", "S_min_lo", "S_min_hi", "E_min", "E_min_lo", "E_min_hi",
                  "B_crit", "B_crit_lo", "B_crit_hi", "n_runs")


def _runs(curves: pl.DataFrame) -> list[tuple[Any, float, np.ndarray, np.ndarray, np.ndarray]]:
    """(run_id, B, step, tokens, loss) per run, sorted by step; tokens = B·step when the column is absent."""
    if "run_id" not in curves.columns:
        raise PointsError(f"curves need a run_id column (columns: {curves.columns})")
    check_points(curves, ["B", "loss"], min_points=2)
    if "step" not in curves.columns:
        raise PointsError(f"curves need a step column (optimizer steps; columns: {curves.columns})")
    bad = curves["step"].cast(pl.Float64).fill_nan(None).null_count()
    if bad:
        raise PointsError(f"column 'step': {bad} rows are null or NaN; drop them first")
    if "tokens" not in curves.columns:
        curves = curves.with_columns(tokens=pl.col("B").cast(pl.Float64) * pl.col("step").cast(pl.Float64))
    out = []
    for (run_id,), g in curves.sort(["run_id", "step"]).group_by(["run_id"], maintain_order=True):
        if g["B"].n_unique() != 1:
            raise PointsError(f"run {run_id!r} changes its batch {g['B'].unique().to_list()}; the trade-off needs "
                              "one constant B per run")
        out.append((run_id, float(g["B"][0]), g["step"].cast(pl.Float64).to_numpy(),
                    g["tokens"].cast(pl.Float64).to_numpy(), g["loss"].cast(pl.Float64).to_numpy()))
    return out


def _first_reach(step: np.ndarray, tokens: np.ndarray, loss: np.ndarray, target: float) -> tuple[float, float]:
    """(S, E) where the curve first reaches `target`, linear between the bracketing points; NaN if never, or
    if it starts at or below the target (no crossing to locate)."""
    below = np.flatnonzero(loss <= target)
    if below.size == 0 or below[0] == 0:
        return float("nan"), float("nan")
    j = below[0]
    w = (loss[j - 1] - target) / (loss[j - 1] - loss[j])
    return float(step[j - 1] + w * (step[j] - step[j - 1])), float(tokens[j - 1] + w * (tokens[j] - tokens[j - 1]))


def default_targets(curves: pl.DataFrame, n_targets: int = 8) -> np.ndarray:
    """n_targets losses evenly spaced strictly between the highest final-best loss of any run (so every run
    reaches them) and the lowest first loss (so every run crosses them)."""
    runs = _runs(curves)
    lo = max(r[4].min() for r in runs)
    hi = min(r[4][0] for r in runs)
    if not hi > lo:
        raise PointsError(f"no loss is crossed by every run (lowest first loss {hi:.4g} <= highest best loss "
                          f"{lo:.4g}); train the small-batch runs longer or pass targets explicitly")
    return np.linspace(lo, hi, n_targets + 2)[1:-1]


def steps_to_target(curves: pl.DataFrame, targets: Sequence[float]) -> pl.DataFrame:
    """For curves (run_id, B, step, loss, optional tokens): per target and run, steps S and tokens E to first
    reach the target (NaN if never reached). Smooth noisy curves first: a spike below the target counts."""
    rows = [{"target": float(L), "run_id": run_id, "B": B, **dict(zip(("S", "E"), _first_reach(s, t, loss, L)))}
            for L in targets for run_id, B, s, t, loss in _runs(curves)]
    return pl.DataFrame(rows)


def _fit_target(B: np.ndarray, S: np.ndarray) -> tuple[float, float]:
    """(S_min, E_min) minimising Σ ((S_i − S_min − E_min/B_i)/S_i)² (relative errors in S); NaN if either <= 0."""
    ok = np.isfinite(S)
    if np.unique(B[ok]).size < 2:
        return float("nan"), float("nan")
    A = np.column_stack([1.0 / S[ok], 1.0 / (B[ok] * S[ok])])
    (s_min, e_min), *_ = np.linalg.lstsq(A, np.ones(ok.sum()), rcond=None)
    if not (s_min > 0 and e_min > 0):
        return float("nan"), float("nan")  # no trade-off at this target: perfect or no batch scaling
    return float(s_min), float(e_min)


@dataclass(frozen=True, eq=False)
class TradeoffResult:
    """Per target loss: S_min (steps), E_min (tokens), B_crit = E_min/S_min (tokens), 95% bootstrap intervals
    over runs (columns TARGET_COLUMNS). vs_D: B_crit = coef·D^exp with D = E_min; vs_L: B_crit = coef·L^exp
    (Kaplan's B*/L^(1/α_B), so α_B = −1/exp)."""

    targets: pl.DataFrame
    reached: pl.DataFrame
    vs_D: FitResult | None
    vs_L: FitResult | None

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"targets": self.targets.to_dicts(),
                         "vs_D": self.vs_D.to_dict() if self.vs_D else None,
                         "vs_L": self.vs_L.to_dict() if self.vs_L else None})


def _all_targets(B: np.ndarray, S: np.ndarray, L: np.ndarray) -> np.ndarray:
    """[S_min (T), E_min (T), ln coef_D, exp_D, ln coef_L, exp_L] for run-major S (n_runs, T)."""
    fits = np.array([_fit_target(B, S[:, j]) for j in range(S.shape[1])])
    s_min, e_min = fits[:, 0], fits[:, 1]
    ok = np.isfinite(s_min)
    law = np.full(4, np.nan)
    if ok.sum() >= 2 and np.unique(e_min[ok]).size >= 2:
        b_crit = np.log(e_min[ok] / s_min[ok])
        law[:2] = ols_log(np.log(e_min[ok]), b_crit)
        law[2:] = ols_log(np.log(L[ok]), b_crit)
    return np.concatenate([s_min, e_min, law])


def fit_tradeoff(curves: pl.DataFrame, targets: Sequence[float] | None = None, n_targets: int = 8,
                 bootstrap_resamples: int = 1000, seed: int = 0, min_runs: int = 3) -> TradeoffResult:
    """Fit S = S_min + E_min/B per target loss from runs at several constant batch sizes (B in tokens).

    A target needs >= min_runs runs reaching it. Intervals: bootstrap over whole runs (each resample refits
    every target and the B_crit laws). The B_crit laws need >= 3 targets with a fit.
    """
    runs = _runs(curves)
    if len({r[1] for r in runs}) < min_runs:
        raise PointsError(f"{len({r[1] for r in runs})} distinct batch sizes; the trade-off needs runs at >= "
                          f"{min_runs} batch sizes")
    L = np.asarray(default_targets(curves, n_targets) if targets is None else targets, dtype=float)
    reached = steps_to_target(curves, L)
    B = np.array([r[1] for r in runs])
    S = reached["S"].to_numpy().reshape(L.size, len(runs)).T  # (runs, targets)
    n_reached = np.isfinite(S).sum(axis=0)
    S_fit = np.where(n_reached[None, :] >= min_runs, S, np.nan)
    point = _all_targets(B, S_fit, L)
    draws = bootstrap(lambda idx: _all_targets(B[idx], S_fit[idx], L), len(runs), bootstrap_resamples, seed,
                      n_jobs=1) if bootstrap_resamples > 0 else np.full((0, point.size), np.nan)
    T = L.size
    s_min, e_min = point[:T], point[T:2 * T]
    s_lo, s_hi = percentile_ci(draws[:, :T])
    e_lo, e_hi = percentile_ci(draws[:, T:2 * T])
    bc_lo, bc_hi = percentile_ci(draws[:, T:2 * T] / draws[:, :T])
    table = pl.DataFrame({"target": L, "S_min": s_min, "S_min_lo": s_lo, "S_min_hi": s_hi, "E_min": e_min,
                          "E_min_lo": e_lo, "E_min_hi": e_hi, "B_crit": e_min / s_min, "B_crit_lo": bc_lo,
                          "B_crit_hi": bc_hi, "n_runs": n_reached}).select(TARGET_COLUMNS)
    ok = np.isfinite(s_min)
    vs_D = vs_L = None
    if ok.sum() >= 3:
        log_bc = np.log(e_min[ok] / s_min[ok])
        vs_D = loglinear_result("B_crit = coef·D^exp (D = E_min)", ("D",), np.log(e_min[ok]), log_bc,
                                draws[:, 2 * T:2 * T + 2])
        vs_L = loglinear_result("B_crit = coef·L^exp (Kaplan: B*/L^(1/α_B))", ("L",), np.log(L[ok]), log_bc,
                                draws[:, 2 * T + 2:])
    return TradeoffResult(targets=table, reached=reached, vs_D=vs_D, vs_L=vs_L)
