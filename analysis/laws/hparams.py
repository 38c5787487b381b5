"""Optimal learning rate and batch size against scale, from learning-rate x batch-size landscapes.

Per (N, D) cell the smoothed final loss over the (lr, B) grid is a convex bowl in (ln lr, ln B) (Li et al. 2025,
"Predictable Scale: Part I", Step Law). Its optimum is estimated two ways:
- "convex": the vertex of a least-squares quadratic L ≈ c0 + g·u + ½·uᵀHu in u = (ln lr, ln B), when H is
  positive definite and the vertex lies inside the sampled box; otherwise the best observed configuration;
- "plateau" (Step Law's recipe): the configurations within `tolerance` (0.25%) of the best loss form the
  near-optimal plateau; its geometric-mean lr and B are the cell's optimum;
- "joint" (`analysis.laws.hparams_joint`): one loss surface over all cells, a bowl in (ln lr, ln B) whose optimum
  follows the Step-Law-form laws and whose curvature scales with N and D, fitted to every configuration near each
  cell's optimum; the laws come from the surface directly, a cell's own optimum is the vertex of the fitted
  bowl shape placed freely on that cell's configurations.
Across cells, least squares in log space fits
    lr*(N, D) = c·N^α·D^β     and   B*(D) = c'·D^γ     (Step Law form; B in tokens),
    lr*(C) = c·C^e            and   B*(C) = c'·C^e'    (DeepSeek LLM form; C = 6·N·D FLOPs here),
with intervals from a bootstrap over cells. With method="auto" the method whose laws predict held-out cells
best (leave-one-cell-out, scored by the held-out cell's observed loss at the predicted (lr, B)) is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
from scipy.spatial import QhullError

from analysis.fitting import FitResult, bootstrap as bootstrap_draws, summarize_draws
from analysis.laws.hparams_joint import (JOINT_NEAR, JointFit, JointFitError, Landscape, cell_optima, fit_joint,
                                         select_near)
from analysis.laws.loglinear import LawFitError, power_predictor, loglinear_result, ols_log, prediction_interval
from analysis.serialize import jsonable
from analysis.validate import PointsError, check_points

STEP_LAW_LR = (1.79, -0.713, 0.307)
"""lr* = 1.79·N^−0.713·D^0.307 (Li et al. 2025, "Predictable Scale: Part I", Step Law; N non-embedding
parameters, D tokens)."""
STEP_LAW_BATCH = (0.58, 0.571)
"""B* = 0.58·D^0.571, B in tokens (Li et al. 2025, Step Law)."""
DEEPSEEK_LR = (0.3118, -0.125)
"""lr* = 0.3118·C^−0.125 (DeepSeek-AI 2024, DeepSeek LLM, scaling laws of hyperparameters; their C = M·D with
M the non-embedding FLOPs per token)."""
DEEPSEEK_BATCH = (0.2920, 0.3271)
"""B* = 0.2920·C^0.3271, B in tokens (DeepSeek-AI 2024, DeepSeek LLM)."""
PLATEAU_TOLERANCE = 0.0025
"""Configurations within 0.25% of the best smoothed final loss form the near-optimal plateau (Li et al. 2025)."""

METHODS = ("convex", "plateau", "joint")
MIN_QUADRATIC_CONFIGS = 6  # a quadratic in two variables has 6 coefficients


@dataclass(frozen=True)
class _Cell:
    N: float
    D: float
    C: float
    x: np.ndarray  # ln lr per configuration
    y: np.ndarray  # ln B per configuration (B in tokens)
    loss: np.ndarray  # smoothed final loss, replicates averaged


def _cells(df: pl.DataFrame) -> list[_Cell]:
    check_points(df, ["N", "D", "lr", "B", "loss"], min_points=1)
    has_c = "C" in df.columns
    if has_c:
        check_points(df, ["C"])
    mean = df.group_by(["N", "D", "lr", "B"]).agg(pl.col("loss").mean(), *([pl.col("C").mean()] if has_c else []))
    out = []
    for (N, D), g in mean.sort(["N", "D", "lr", "B"]).group_by(["N", "D"], maintain_order=True):
        C = float(g["C"].mean()) if has_c else 6.0 * float(N) * float(D)  # C = 6·N·D (Kaplan et al. 2020)
        out.append(_Cell(float(N), float(D), C, np.log(g["lr"].cast(pl.Float64).to_numpy()),
                         np.log(g["B"].cast(pl.Float64).to_numpy()), g["loss"].cast(pl.Float64).to_numpy()))
    return out


def _quadratic_optimum(x: np.ndarray, y: np.ndarray, loss: np.ndarray) -> tuple[float, float, float, bool] | None:
    """Vertex (x*, y*, L*) and positive-definiteness of the least-squares quadratic; None if underdetermined."""
    if x.size < MIN_QUADRATIC_CONFIGS or np.unique(x).size < 3 or np.unique(y).size < 3:
        return None
    x0, y0 = x.mean(), y.mean()  # centred for conditioning
    xc, yc = x - x0, y - y0
    design = np.column_stack([np.ones_like(xc), xc, yc, xc * xc, yc * yc, xc * yc])
    if np.linalg.matrix_rank(design) < 6:
        return None
    c, *_ = np.linalg.lstsq(design, loss, rcond=None)
    H = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
    if not np.linalg.eigvalsh(H).min() > 0:
        return float("nan"), float("nan"), float("nan"), False
    u = -np.linalg.solve(H, c[1:3])
    return float(u[0] + x0), float(u[1] + y0), float(c[0] + 0.5 * c[1:3] @ u), True


def _cell_row(cell: _Cell, tolerance: float, fit_within: float | None) -> dict[str, Any]:
    best = int(np.argmin(cell.loss))
    l_best = float(cell.loss[best])
    plateau = cell.loss <= l_best * (1.0 + tolerance)
    sel = np.ones(cell.loss.size, dtype=bool)
    if fit_within is not None:
        near = cell.loss <= l_best * (1.0 + fit_within)
        if near.sum() >= MIN_QUADRATIC_CONFIGS:
            sel = near
    q = _quadratic_optimum(cell.x[sel], cell.y[sel], cell.loss[sel])
    convex = q is not None and q[3]
    in_range = bool(convex and cell.x.min() <= q[0] <= cell.x.max() and cell.y.min() <= q[1] <= cell.y.max())
    use_q = convex and in_range
    return {
        "N": cell.N, "D": cell.D, "C": cell.C, "n_configs": int(cell.loss.size),
        "loss_best": l_best, "lr_best": float(np.exp(cell.x[best])), "B_best": float(np.exp(cell.y[best])),
        "convex": bool(convex), "in_range": in_range, "source": "quadratic" if use_q else "best_observed",
        "lr_convex": float(np.exp(q[0] if use_q else cell.x[best])),
        "B_convex": float(np.exp(q[1] if use_q else cell.y[best])),
        "loss_convex": float(q[2]) if use_q else l_best,
        "n_plateau": int(plateau.sum()), "lr_plateau": float(np.exp(cell.x[plateau].mean())),
        "B_plateau": float(np.exp(cell.y[plateau].mean())),
        "lr_plateau_min": float(np.exp(cell.x[plateau].min())), "lr_plateau_max": float(np.exp(cell.x[plateau].max())),
        "B_plateau_min": float(np.exp(cell.y[plateau].min())), "B_plateau_max": float(np.exp(cell.y[plateau].max())),
    }


def landscape_cells(df: pl.DataFrame, tolerance: float = PLATEAU_TOLERANCE, fit_within: float | None = None
                    ) -> pl.DataFrame:
    """One row per (N, D) cell of a runs frame (N, D, lr, B in tokens, loss = smoothed final loss; optional C).

    Replicates of one (N, D, lr, B) are averaged. Columns: N, D, C, n_configs, loss_best, lr_best, B_best;
    convex (the quadratic in (ln lr, ln B) has a positive-definite Hessian), in_range (its vertex is inside the
    sampled box), source ("quadratic", or "best_observed" when the quadratic is not convex, not in range, or
    has fewer than 6 configs / 3 distinct lr or B), lr_convex, B_convex, loss_convex; n_plateau, lr_plateau,
    B_plateau (geometric means over configs with loss <= loss_best·(1 + tolerance)) and the plateau's extent
    lr_plateau_min/max, B_plateau_min/max.
    fit_within: fit the quadratic only to configs within this relative excess of the best (e.g. 0.05), for
    wide grids whose edges (divergent learning rates) are far from quadratic.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance is a relative excess loss in [0, 1), got {tolerance}; the Step Law uses 0.0025")
    return pl.DataFrame([_cell_row(c, tolerance, fit_within) for c in _cells(df)])


@dataclass(frozen=True, eq=False)
class HparamsResult:
    """Laws for the optimal learning rate and batch size (B in tokens), with 95% bootstrap intervals.

    lr: lr* = coef·N^exp_N·D^exp_D; batch: B* = coef·D^exp_D; deepseek_lr / deepseek_batch: coef·C^exp_C.
    cells: landscape_cells plus lr_opt, B_opt (the chosen method's optimum per cell). loo: per method the
    leave-one-cell-out error: mean_regret (held-out cell's observed loss at the predicted (lr, B), interpolated
    linearly in (ln lr, ln B), relative to its best loss, minus 1), rms_log_lr and rms_log_B (against that
    method's own held-out optimum).
    """

    lr: FitResult
    batch: FitResult
    deepseek_lr: FitResult
    deepseek_batch: FitResult
    cells: pl.DataFrame
    method: str
    loo: pl.DataFrame
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        def law(fit: FitResult) -> dict[str, Any]:
            return {**fit.params, "ci95": {k: list(v) for k, v in fit.ci95.items()}}

        return jsonable({
            "lr": law(self.lr), "batch": law(self.batch), "cells": self.cells.to_dicts(), "method": self.method,
            "deepseek": {"lr": law(self.deepseek_lr), "batch": law(self.deepseek_batch)},
            "loo": self.loo.to_dicts(), "tolerance": self.tolerance,
        })


@dataclass(frozen=True)
class HparamsPrediction:
    """Predicted lr* and B* (tokens) with 95% intervals; form "step" (from N, D) or "deepseek" (from C)."""

    form: str
    lr: float
    lr_ci95: tuple[float, float]
    B: float
    B_ci95: tuple[float, float]


def _log_inputs(cells: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.log(cells[c].to_numpy()) for c in ("N", "D", "C"))  # type: ignore[return-value]


def _theta(lN: np.ndarray, lD: np.ndarray, lC: np.ndarray, llr: np.ndarray, lB: np.ndarray) -> np.ndarray:
    """[ln c, α, β | ln c', γ | ln c_C, e | ln c'_C, e'] with NaN blocks for laws these points cannot determine."""
    blocks = []
    for X, y, k in ((np.column_stack([lN, lD]), llr, 3), (lD, lB, 2), (lC, llr, 2), (lC, lB, 2)):
        try:
            blocks.append(ols_log(X, y))
        except LawFitError:
            blocks.append(np.full(k, np.nan))
    return np.concatenate(blocks)


def _interpolator(cell: _Cell):
    """Observed loss as a function of (ln lr, ln B): linear on the Delaunay triangulation, nearest outside it."""
    pts = np.column_stack([cell.x, cell.y])
    nearest = NearestNDInterpolator(pts, cell.loss)
    try:
        linear = LinearNDInterpolator(pts, cell.loss)
    except (QhullError, ValueError):  # fewer than 3 configs, or all on a line
        return lambda u: float(nearest(u)[0])

    def at(u: np.ndarray) -> float:
        v = float(linear(u)[0])
        return v if np.isfinite(v) else float(nearest(u)[0])

    return at


def _landscape(raw: list[_Cell], near: float) -> Landscape:
    return select_near([(c.N, c.D, c.x, c.y, c.loss) for c in raw], near=near)


def _joint_theta(land: Landscape, rest: np.ndarray) -> np.ndarray:
    """[ln c, α, β, ln c', γ] of the joint surface fitted to cells `rest`; NaN where they cannot determine it."""
    try:
        return fit_joint(land.subset(np.flatnonzero(rest))).law()
    except JointFitError:
        return np.full(5, np.nan)


def _leave_one_out(cells: pl.DataFrame, raw: list[_Cell], land: Landscape | None) -> pl.DataFrame:
    lN, lD, lC = _log_inputs(cells)
    interp = [_interpolator(c) for c in raw]
    rows = []
    for m in METHODS:
        llr, lB = np.log(cells[f"lr_{m}"].to_numpy()), np.log(cells[f"B_{m}"].to_numpy())
        regret, e_lr, e_B = [], [], []
        for i in range(cells.height if m != "joint" or land is not None else 0):
            rest = np.arange(cells.height) != i
            t = (_joint_theta(land, rest) if m == "joint"
                 else _theta(lN[rest], lD[rest], lC[rest], llr[rest], lB[rest]))
            if not np.isfinite(t[:5]).all():
                continue  # the other cells cannot determine the laws (e.g. i held the only second N)
            p_lr = t[0] + t[1] * lN[i] + t[2] * lD[i]
            p_B = t[3] + t[4] * lD[i]
            regret.append(interp[i](np.array([[p_lr, p_B]])) / raw[i].loss.min() - 1.0)
            e_lr.append(p_lr - llr[i])
            e_B.append(p_B - lB[i])
        ok = len(regret) > 0
        rows.append({"method": m, "n_cells": len(regret),
                     "mean_regret": float(np.mean(regret)) if ok else float("nan"),
                     "rms_log_lr": float(np.sqrt(np.mean(np.square(e_lr)))) if ok else float("nan"),
                     "rms_log_B": float(np.sqrt(np.mean(np.square(e_B)))) if ok else float("nan")})
    return pl.DataFrame(rows)


def _joint_columns(cells: pl.DataFrame, raw: list[_Cell], near: float, method: str
                   ) -> tuple[pl.DataFrame, Landscape | None, JointFit | None]:
    """cells with lr_joint, B_joint (NaN when the joint surface cannot be fitted and method is not "joint")."""
    try:
        land = _landscape(raw, near)
        joint = fit_joint(land)
    except JointFitError:
        if method == "joint":
            raise
        return cells.with_columns(lr_joint=pl.lit(float("nan")), B_joint=pl.lit(float("nan"))), None, None
    opt = np.exp(cell_optima(joint, land))
    return cells.with_columns(lr_joint=pl.Series(opt[:, 0]), B_joint=pl.Series(opt[:, 1])), land, joint


def _joint_results(joint: JointFit, lN: np.ndarray, lD: np.ndarray, llr: np.ndarray, lB: np.ndarray
                   ) -> tuple[FitResult, FitResult]:
    """Step-Law-form FitResults from the joint surface; residuals are each cell's own vertex minus the law."""
    law, draws = joint.law(), joint.draws.copy()
    draws[:, [0, 3]] = np.exp(draws[:, [0, 3]])
    out = []
    for form, inputs, names, cols, X, y in (
            ("lr* = coef·N^exp_N·D^exp_D (joint surface)", ("N", "D"), ("coef", "exp_N", "exp_D"), [0, 1, 2],
             np.column_stack([lN, lD]), llr),
            ("B* = coef·D^exp_D (joint surface, B in tokens)", ("D",), ("coef", "exp_D"), [3, 4], lD[:, None], lB)):
        theta = law[cols]
        stderr, ci95 = summarize_draws(names, draws[:, cols])
        out.append(FitResult(
            form=form, params={names[0]: float(np.exp(theta[0])), **dict(zip(names[1:], map(float, theta[1:])))},
            stderr=stderr, ci95=ci95, objective=joint.cost, n_points=joint.n_configs, inputs=inputs,
            n_resamples=int(draws.shape[0]), n_failed_resamples=int((~np.isfinite(draws[:, cols]).all(1)).sum()),
            residuals=y - (theta[0] + X @ theta[1:]), draws=draws[:, cols], predictor=power_predictor))
    return out[0], out[1]


def fit_hparams(df: pl.DataFrame, method: str = "auto", tolerance: float = PLATEAU_TOLERANCE,
                bootstrap: int = 1000, seed: int = 0, fit_within: float | None = None,
                min_cells: int = 4, near: float = JOINT_NEAR, loo: bool = True) -> HparamsResult:
    """Fit lr*(N, D), B*(D), lr*(C), B*(C) from an lr x B grid per (N, D) cell (see `landscape_cells`).

    method: "convex", "plateau", "joint" or "auto" (lowest leave-one-cell-out mean regret among the three;
    ties go to the earlier of convex, plateau, joint). near: the joint fit's selection of configurations
    (relative loss excess of a cell's best; `analysis.laws.hparams_joint`).
    Needs >= min_cells cells with >= 2 distinct N and >= 2 distinct D. Intervals: `bootstrap` resamples of
    cells (percentile 95%); for "joint" the surface is refitted to each resample. loo=False skips the
    leave-one-cell-out table (for refits that only need the laws; method must then not be "auto").
    """
    if method not in ("auto", *METHODS):
        raise ValueError(f"method must be 'auto', 'convex', 'plateau' or 'joint', got {method!r}")
    if method == "auto" and not loo:
        raise ValueError("method='auto' chooses by the leave-one-cell-out table; keep loo=True or name a method")
    raw = _cells(df)
    cells = pl.DataFrame([_cell_row(c, tolerance, fit_within) for c in raw]) if raw else pl.DataFrame()
    n_N, n_D = (cells["N"].n_unique(), cells["D"].n_unique()) if raw else (0, 0)
    if len(raw) < min_cells or n_N < 2 or n_D < 2:
        raise PointsError(
            f"{len(raw)} (N, D) cells with {n_N} distinct N and {n_D} distinct D; lr*(N, D) = c·N^α·D^β needs at "
            f"least {min_cells} cells with >= 2 distinct N and >= 2 distinct D; sweep the lr x B grid at more "
            "model sizes and token budgets")
    cells, land, joint = _joint_columns(cells, raw, near, method)
    loo_table = _leave_one_out(cells, raw, land) if loo else pl.DataFrame(
        schema={"method": pl.String, "n_cells": pl.Int64, "mean_regret": pl.Float64, "rms_log_lr": pl.Float64,
                "rms_log_B": pl.Float64})
    if method == "auto":
        score = {m: r if np.isfinite(r) else np.inf for m, r in zip(loo_table["method"], loo_table["mean_regret"])}
        method = min(METHODS, key=lambda m: score[m])  # min keeps the first of equal scores
    cells = cells.with_columns(lr_opt=pl.col(f"lr_{method}"), B_opt=pl.col(f"B_{method}"))
    lN, lD, lC = _log_inputs(cells)
    llr, lB = np.log(cells["lr_opt"].to_numpy()), np.log(cells["B_opt"].to_numpy())
    draws = bootstrap_draws(lambda idx: _theta(lN[idx], lD[idx], lC[idx], llr[idx], lB[idx]), cells.height,
                            max(int(bootstrap), 0), seed, n_jobs=1)
    draws = draws if draws.size else np.empty((0, 9))
    if method == "joint":
        joint = fit_joint(land, bootstrap=max(int(bootstrap), 0), seed=seed)
        lr_law, batch_law = _joint_results(joint, lN, lD, llr, lB)
    else:
        lr_law = loglinear_result("lr* = coef·N^exp_N·D^exp_D (Step Law form)", ("N", "D"),
                                  np.column_stack([lN, lD]), llr, draws[:, 0:3])
        batch_law = loglinear_result("B* = coef·D^exp_D (Step Law form, B in tokens)", ("D",), lD, lB,
                                     draws[:, 3:5], names=("coef", "exp_D"))
    return HparamsResult(
        lr=lr_law, batch=batch_law,
        deepseek_lr=loglinear_result("lr* = coef·C^exp_C (DeepSeek form)", ("C",), lC, llr, draws[:, 5:7],
                                     names=("coef", "exp_C")),
        deepseek_batch=loglinear_result("B* = coef·C^exp_C (DeepSeek form, B in tokens)", ("C",), lC, lB,
                                        draws[:, 7:9], names=("coef", "exp_C")),
        cells=cells, method=method, loo=loo_table, tolerance=tolerance)


def predict_hparams(result: HparamsResult, N: float | None = None, D: float | None = None,
                    C: float | None = None) -> HparamsPrediction:
    """lr* and B* at a target: give N and D (Step Law form) or C alone (DeepSeek form), with 95% intervals."""
    given = {k: v for k, v in {"N": N, "D": D, "C": C}.items() if v is not None}
    for k, v in given.items():
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{k} must be positive and finite, got {v!r}")
    if set(given) == {"N", "D"}:
        lr = prediction_interval(result.lr, N, D)
        B = prediction_interval(result.batch, D)
        form = "step"
    elif set(given) == {"C"}:
        lr = prediction_interval(result.deepseek_lr, C)
        B = prediction_interval(result.deepseek_batch, C)
        form = "deepseek"
    else:
        raise ValueError(f"give N and D (Step Law form) or C alone (DeepSeek form), got {sorted(given)}")
    return HparamsPrediction(form=form, lr=float(lr[0]), lr_ci95=(float(lr[1]), float(lr[2])),
                             B=float(B[0]), B_ci95=(float(B[1]), float(B[2])))
