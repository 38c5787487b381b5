"""Compute-optimal allocation N*(C), D*(C) by Chinchilla approaches 1 and 2 (Hoffmann et al. 2022, §3.1-3.2).

Approach 2, IsoFLOP profiles (`fit_isoflop`): runs share a compute budget C; per budget the final loss is fitted
with a parabola in ln N, L ≈ q2·(ln N)² + q1·ln N + q0, whose vertex N*(C) = exp(−q1/(2·q2)) is the
compute-optimal size at that budget. Across budgets N*(C) = G·C^a and D*(C) = G'·C^b with D* = C/(6·N*)
(C = 6·N·D, Kaplan et al. 2020 §2.1), so G' = 1/(6·G) and b = 1 − a exactly. Chinchilla found a = 0.49,
b = 0.51 (approach 2, Table 2).

Approach 1, lower envelope (`fit_envelope`): over many training curves, at each FLOP level the run with the
lowest loss gives N*(C); the same power laws are fitted to those points (Chinchilla: a = 0.50, b = 0.50).

Intervals come from bootstraps that resample what carries the noise: runs within each budget and budgets
themselves (approach 2, a two-stage bootstrap), or whole runs (approach 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from analysis.fitting import FitResult
from analysis.laws.loglinear import LawFitError, loglinear_result, percentile_ci, prediction_interval
from analysis.serialize import jsonable
from analysis.validate import PointsError, check_points

BUDGET_REL_TOL = 0.05
"""Runs whose C differ by less than 5% share a budget when no `budget` column says which budget a run belongs to
(realised C drifts from the planned one by integer step counts and the attention term)."""

BUDGET_COLUMNS = ("C", "N_opt", "N_opt_lo", "N_opt_hi", "loss_opt", "D_opt", "D_opt_lo", "D_opt_hi",
                  "tokens_per_param", "n_runs", "convex", "in_range")


@dataclass(frozen=True, eq=False)
class IsoflopResult:
    """Compute-optimal allocation: per-budget (or per-FLOP-level) optima and the laws N*(C), D*(C).

    budgets: one row per budget with columns BUDGET_COLUMNS (N_opt_lo/hi: 95% bootstrap interval; in_range: the
    optimum lies inside the sampled N range; convex: the parabola opens upward). Only rows with convex and
    in_range enter the laws. N_law: N* = G·C^a (params coef = G, exp = a); D_law: D* = G'·C^b.
    approach: "isoflop" (Chinchilla approach 2) or "envelope" (approach 1).
    """

    budgets: pl.DataFrame
    N_law: FitResult
    D_law: FitResult
    approach: str

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"approach": self.approach, "N_law": self.N_law.to_dict(), "D_law": self.D_law.to_dict(),
                         "budgets": self.budgets.to_dicts()})


@dataclass(frozen=True)
class Allocation:
    """Predicted compute-optimal allocation at budget C (FLOPs) with 95% intervals."""

    C: float
    N: float
    N_ci95: tuple[float, float]
    D: float
    D_ci95: tuple[float, float]
    tokens_per_param: float
    tokens_per_param_ci95: tuple[float, float]


def _with_compute(df: pl.DataFrame) -> pl.DataFrame:
    """Add C = 6·N·D when only D is given, or D = C/(6·N) when only C is given (Kaplan et al. 2020, §2.1)."""
    if "C" not in df.columns:
        check_points(df, ["N", "D"])
        return df.with_columns(C=6.0 * pl.col("N").cast(pl.Float64) * pl.col("D").cast(pl.Float64))
    if "D" not in df.columns:
        check_points(df, ["N", "C"])
        return df.with_columns(D=pl.col("C").cast(pl.Float64) / (6.0 * pl.col("N").cast(pl.Float64)))
    return df


def assign_budgets(df: pl.DataFrame, rel_tol: float = BUDGET_REL_TOL) -> pl.DataFrame:
    """Add `budget_C`: the `budget` column if present, else C clustered to a relative tolerance.

    Clustering: runs sorted by C; a run starts a new budget when its C exceeds the first C of the current
    budget by more than rel_tol (relative); the budget's C is the geometric mean of its runs' C.
    """
    if "budget" in df.columns:
        check_points(df, ["budget"])
        return df.with_columns(budget_C=pl.col("budget").cast(pl.Float64))
    c = df["C"].cast(pl.Float64).to_numpy()
    label = relative_groups(c, rel_tol)
    geo = np.array([np.exp(np.log(c[label == k]).mean()) for k in range(label.max() + 1)])
    return df.with_columns(budget_C=pl.Series(geo[label]))


def relative_groups(values: np.ndarray, rel_tol: float) -> np.ndarray:
    """A group id per value (0, 1, ... in increasing order): sorted values within rel_tol of their group's first
    share it. How IsoFLOP budgets are recognised among recorded C, and how sensitivity groups what it leaves out."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    gid = np.empty(values.size, dtype=int)
    anchor, current = values[order[0]], 0
    for i in order:
        if values[i] > anchor * (1.0 + rel_tol):
            anchor, current = values[i], current + 1
        gid[i] = current
    return gid


def _vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, float, bool]:
    """(x*, y*, convex) of the least-squares parabola y = q2·x² + q1·x + q0; x* = −q1/(2·q2) when q2 > 0."""
    x0 = x.mean()  # centring keeps the 3x3 normal equations well conditioned
    q2, q1, q0 = np.polyfit(x - x0, y, 2)
    if not q2 > 0:
        return float("nan"), float("nan"), False
    return float(x0 - q1 / (2 * q2)), float(q0 - q1 * q1 / (4 * q2)), True


def _vertex_draws(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x* for each resample row of idx (R, n), vectorised; NaN when a resample has < 3 distinct x or q2 <= 0."""
    xc = x - x.mean()
    X = np.stack([xc * xc, xc, np.ones_like(xc)], axis=1)[idx]  # (R, n, 3)
    Y = y[idx]
    distinct = np.array([np.unique(row).size for row in x[idx]])
    out = np.full(idx.shape[0], np.nan)
    ok = distinct >= 3
    if ok.any():
        XtX = np.einsum("rni,rnj->rij", X[ok], X[ok])
        XtY = np.einsum("rni,rn->ri", X[ok], Y[ok])
        q = np.linalg.solve(XtX, XtY[..., None])[..., 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[ok] = np.where(q[:, 0] > 0, x.mean() - q[:, 1] / (2 * q[:, 0]), np.nan)
    return out


def _law_draws(log_c: np.ndarray, log_n_draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draws of [ln G, a]: budgets resampled with replacement, each with its own within-budget draw of ln N*.

    log_n_draws: (K budgets, R). Weighted OLS with zero weight for NaN draws; NaN row with < 2 distinct C left.
    """
    K, R = log_n_draws.shape
    pick = rng.integers(0, K, (R, K))
    xs = log_c[pick]
    ys = log_n_draws[pick, np.arange(R)[:, None]]
    w = np.isfinite(ys).astype(float)
    ys = np.where(w > 0, ys, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (w * xs).sum(axis=1) / sw
        my = (w * ys).sum(axis=1) / sw
        sxx = (w * (xs - mx[:, None]) ** 2).sum(axis=1)
        slope = (w * (xs - mx[:, None]) * (ys - my[:, None])).sum(axis=1) / sxx
    slope = np.where(sxx > 1e-12, slope, np.nan)
    return np.column_stack([my - slope * mx, slope])


def _laws(log_c: np.ndarray, log_n: np.ndarray, draws: np.ndarray, form: str) -> tuple[FitResult, FitResult]:
    """N* = G·C^a from (ln C, ln N*) and draws of [ln G, a]; D* = C/(6N*) = (1/(6G))·C^(1−a) from the same draws."""
    n_law = loglinear_result(f"{form}: N_opt = G·C^a", ("C",), log_c, log_n, draws)
    d_draws = np.column_stack([-np.log(6.0) - draws[:, 0], 1.0 - draws[:, 1]])
    d_law = loglinear_result(f"{form}: D_opt = G'·C^b", ("C",), log_c, log_c - np.log(6.0) - log_n, d_draws)
    return n_law, d_law


def _usable(budgets: pl.DataFrame, min_budgets: int, what: str) -> pl.DataFrame:
    used = budgets.filter(pl.col("convex") & pl.col("in_range"))
    if used["C"].n_unique() < min_budgets:
        dropped = budgets.filter(~(pl.col("convex") & pl.col("in_range")))["C"].to_list()
        raise PointsError(
            f"only {used.height} {what} have an interior optimum, need at least {min_budgets} to fit N*(C); "
            f"dropped (no convex minimum or minimum outside the sampled N range): C = {dropped}; "
            "add runs on both sides of the optimum or more budgets")
    return used


def fit_isoflop(df: pl.DataFrame, bootstrap: int = 1000, seed: int = 0, rel_tol: float = BUDGET_REL_TOL,
                min_runs: int = 3, min_budgets: int = 3) -> IsoflopResult:
    """Chinchilla approach 2 on a runs frame with N, loss and D or C (C = 6·N·D; optional `budget` column).

    Per budget (with >= min_runs runs at >= 3 distinct N): parabola of loss in ln N, vertex N*(C), its 95%
    interval from resampling that budget's runs, and D* = C/(6·N*). Budgets whose parabola opens downward or
    whose vertex lies outside the sampled N range are reported but not fitted. The laws' intervals come from a
    two-stage bootstrap: budgets resampled, and each resampled budget contributes its own within-budget draw.
    """
    df = _with_compute(df)
    check_points(df, ["N", "D", "C", "loss"], min_points=3 * min_budgets)
    df = assign_budgets(df, rel_tol)
    rng = np.random.default_rng(seed)
    n_draws = max(int(bootstrap), 0)
    rows, log_n_draws = [], []
    # sorted on every column used, so that resamples (hence intervals) do not depend on the input row order
    for (c_budget,), runs in df.sort(["budget_C", "N", "loss"]).group_by(["budget_C"], maintain_order=True):
        x = np.log(runs["N"].cast(pl.Float64).to_numpy())
        y = runs["loss"].cast(pl.Float64).to_numpy()
        if runs.height < min_runs or np.unique(x).size < 3:
            continue
        x_star, loss_opt, convex = _vertex(x, y)
        draws = _vertex_draws(x, y, rng.integers(0, x.size, (n_draws, x.size))) if n_draws else np.empty(0)
        lo, hi = percentile_ci(draws[:, None]) if n_draws else (np.full(1, np.nan),) * 2
        n_opt = float(np.exp(x_star))
        c = float(c_budget)
        rows.append({"C": c, "N_opt": n_opt, "N_opt_lo": float(np.exp(lo[0])), "N_opt_hi": float(np.exp(hi[0])),
                     "loss_opt": loss_opt, "D_opt": c / (6 * n_opt), "D_opt_lo": c / (6 * float(np.exp(hi[0]))),
                     "D_opt_hi": c / (6 * float(np.exp(lo[0]))), "tokens_per_param": c / (6 * n_opt ** 2),
                     "n_runs": runs.height, "convex": convex,
                     "in_range": bool(convex and x.min() < x_star < x.max())})
        log_n_draws.append(draws)
    if not rows:
        raise PointsError(f"no budget has >= {min_runs} runs at >= 3 distinct N; found budgets "
                          f"{sorted(set(df['budget_C'].to_list()))}; set `budget` per run or widen rel_tol")
    budgets = pl.DataFrame(rows).select(BUDGET_COLUMNS)
    _usable(budgets, min_budgets, "budgets")
    keep = (budgets["convex"] & budgets["in_range"]).to_numpy()
    log_c = np.log(budgets["C"].to_numpy()[keep])
    log_n = np.log(budgets["N_opt"].to_numpy()[keep])
    stacked = np.stack(log_n_draws)[keep] if n_draws else np.empty((keep.sum(), 0))
    law_draws = _law_draws(log_c, stacked, rng) if n_draws else np.empty((0, 2))
    n_law, d_law = _laws(log_c, log_n, law_draws, "isoflop")
    return IsoflopResult(budgets=budgets, N_law=n_law, D_law=d_law, approach="isoflop")


def _flops_column(curves: pl.DataFrame) -> pl.DataFrame:
    """C per curve point: the C column (analysis.load.load_curves gives it), else 6·N·tokens (spent so far)."""
    if "C" in curves.columns and curves["C"].null_count() < curves.height:
        return curves
    if "tokens" in curves.columns:
        return curves.with_columns(C=6.0 * pl.col("N").cast(pl.Float64) * pl.col("tokens").cast(pl.Float64))
    raise PointsError(f"curves need C or tokens per point (columns: {curves.columns}); load curves with the "
                      "`tokens` metric")


def _envelope(M: np.ndarray, log_n: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per level: index of the lowest-loss run among `present` runs, and whether its N is strictly interior."""
    Mp = np.where(present[:, None] & np.isfinite(M), M, np.inf)
    best = Mp.argmin(axis=0)
    covered = np.isfinite(Mp)
    lo = np.where(covered, log_n[:, None], np.inf).min(axis=0)
    hi = np.where(covered, log_n[:, None], -np.inf).max(axis=0)
    found = np.isfinite(Mp.min(axis=0))
    interior = found & (log_n[best] > lo) & (log_n[best] < hi)
    return np.where(found, best, -1), interior


def fit_envelope(curves: pl.DataFrame, n_levels: int = 40, bootstrap: int = 1000, seed: int = 0,
                 min_levels: int = 3) -> IsoflopResult:
    """Chinchilla approach 1 on curves (run_id, N, loss and C, flops or tokens per point).

    Each curve's loss is interpolated linearly in ln C at n_levels log-spaced FLOP levels spanning the range
    covered by at least two runs; at each level the lowest loss over runs gives N*(C) (a lower envelope).
    Levels whose best run is the smallest or largest N covering that level are flagged in_range = False and
    not fitted (the optimum may lie outside the sizes tried). Each point is taken as a valid end-of-training
    loss at its C, as in Chinchilla, which trained separate runs per horizon; intermediate points of a cosine
    run that decays later overstate the loss. Intervals: bootstrap over whole runs.
    """
    curves = _flops_column(curves)
    check_points(curves, ["N", "C", "loss"], min_points=2)
    if "run_id" not in curves.columns:
        raise PointsError(f"curves need a run_id column (columns: {curves.columns}); one curve per run")
    runs = curves.sort(["run_id", "C"]).group_by("run_id", maintain_order=True)
    ids, log_n, paths = [], [], []
    for (run_id,), g in runs:
        if g["N"].n_unique() != 1:
            raise PointsError(f"run {run_id!r} has several N values {g['N'].unique().to_list()}; one N per run_id")
        ids.append(run_id)
        log_n.append(float(np.log(g["N"][0])))
        paths.append((np.log(g["C"].cast(pl.Float64).to_numpy()), g["loss"].cast(pl.Float64).to_numpy()))
    if len(ids) < 3:
        raise PointsError(f"only {len(ids)} runs given; the envelope needs at least 3 runs of different N")
    log_n_arr = np.array(log_n)
    starts = np.sort([p[0][0] for p in paths])
    ends = np.sort([p[0][-1] for p in paths])
    lo, hi = starts[1], ends[-2]  # covered by at least two runs
    if not hi > lo:
        raise PointsError("no FLOP range is covered by two runs; runs must overlap in C")
    levels = np.linspace(lo, hi, n_levels)
    M = np.full((len(ids), n_levels), np.nan)  # (runs, levels) loss interpolated in ln C
    for r, (lc, loss) in enumerate(paths):
        inside = (levels >= lc[0]) & (levels <= lc[-1])
        M[r, inside] = np.interp(levels[inside], lc, loss)
    everyone = np.ones(len(ids), dtype=bool)
    best, interior = _envelope(M, log_n_arr, everyone)
    rng = np.random.default_rng(seed)
    n_draws = max(int(bootstrap), 0)
    level_draws = np.full((n_draws, n_levels), np.nan)  # ln N* per level and resample, for per-level intervals
    law_draws = np.full((n_draws, 2), np.nan)
    for r in range(n_draws):
        present = np.zeros(len(ids), dtype=bool)
        present[rng.integers(0, len(ids), len(ids))] = True
        b, inn = _envelope(M, log_n_arr, present)
        level_draws[r] = np.where(b >= 0, log_n_arr[b], np.nan)
        if inn.sum() >= 2 and np.unique(levels[inn]).size >= 2 and np.unique(log_n_arr[b[inn]]).size >= 2:
            law_draws[r] = np.polyfit(levels[inn], log_n_arr[b[inn]], 1)[::-1]
    n_lo, n_hi = percentile_ci(level_draws) if n_draws else (np.full(n_levels, np.nan),) * 2
    c = np.exp(levels)
    n_opt = np.exp(log_n_arr[best])
    budgets = pl.DataFrame({
        "C": c, "N_opt": n_opt, "N_opt_lo": np.exp(n_lo), "N_opt_hi": np.exp(n_hi),
        "loss_opt": M[best, np.arange(n_levels)], "D_opt": c / (6 * n_opt), "D_opt_lo": c / (6 * np.exp(n_hi)),
        "D_opt_hi": c / (6 * np.exp(n_lo)), "tokens_per_param": c / (6 * n_opt ** 2),
        "n_runs": np.isfinite(M).sum(axis=0), "convex": np.ones(n_levels, dtype=bool), "in_range": interior,
    }).select(BUDGET_COLUMNS).with_columns(run_id=pl.Series([ids[i] for i in best]))
    used = _usable(budgets, min_levels, "FLOP levels")
    if used["N_opt"].n_unique() < 2:
        raise PointsError(f"the envelope's interior optimum is one run at every level ({used['run_id'][0]!r}); "
                          "add sizes between the smallest and largest so N*(C) can move with C")
    try:
        n_law, d_law = _laws(np.log(used["C"].to_numpy()), np.log(used["N_opt"].to_numpy()), law_draws, "envelope")
    except LawFitError as err:
        raise PointsError(f"envelope points cannot determine N*(C): {err}") from err
    return IsoflopResult(budgets=budgets, N_law=n_law, D_law=d_law, approach="envelope")


def predict_optimal(result: IsoflopResult, C: float) -> Allocation:
    """N*(C) = G·C^a, D*(C) = C/(6·N*) and tokens per parameter D*/N* = C/(6·N*²), with 95% intervals
    from the bootstrap draws of (G, a) (so they include the correlation of G and a)."""
    if not (np.isfinite(C) and C > 0):
        raise ValueError(f"compute budget C must be a positive finite number of FLOPs, got {C!r}")
    n, n_lo, n_hi = (float(v) for v in prediction_interval(result.N_law, C))
    return Allocation(C=float(C), N=n, N_ci95=(n_lo, n_hi), D=C / (6 * n), D_ci95=(C / (6 * n_hi), C / (6 * n_lo)),
                      tokens_per_param=C / (6 * n * n),
                      tokens_per_param_ci95=(C / (6 * n_hi * n_hi), C / (6 * n_lo * n_lo)))
