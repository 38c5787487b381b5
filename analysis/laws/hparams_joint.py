"""One loss surface for the whole lr x B landscape: the optimum's location and the bowl's curvature as laws of N, D.

The per-cell recipes of `analysis.laws.hparams` reduce each (N, D) cell to one noisy optimum and then fit power
laws through those points, so most of the landscape is thrown away. Here every configuration near a cell's
optimum informs the laws directly. With u = (x, y) = (ln lr, ln B), n = ln N − mean, d = ln D − mean:

    ln L_ij = l_i + ½ · s_i · vᵀ H v,   v = (w·dx, dy),  (dx, dy) = u_ij − u*_i,  w = e^g if dx > 0 else 1
    x*_i = a0 + a1·n_i + a2·d_i                 (lr*  = coef·N^exp_N·D^exp_D, Step Law form)
    y*_i = b0 + b1·d_i                          (B*   = coef·D^exp_D, Step Law form, B in tokens)
    s_i  = exp(k_N·n_i + k_D·d_i)               (the bowl sharpens or widens with scale)
    H    = R Rᵀ, R = [[e^r0, 0], [r1, e^r2]]    (positive definite by construction)

w lets the bowl rise faster above the optimal learning rate than below it (g > 0): landscapes are steeper on
the side where training starts to diverge, and a symmetric bowl fitted to both sides would pull its vertex
towards the gentle side. The vertex stays at u*_i (the surface is smooth there: its first derivatives are).

l_i is a free level per cell (the cell's best loss). Loss is modelled in logs so the bowl is a *relative* excess,
as Step Law's 0.25% plateau is, and cells of different loss share one curvature.

Which configurations are "near": those within `near` (default 1%) relative loss excess of the cell's best, and
at least the `min_near` (default 6) best of the cell. A quadratic describes a landscape only close to its
minimum: far out, large learning rates diverge and the bowl becomes a cliff (asymmetric in ln lr), which would
drag a least-squares vertex away from the optimum. 1% is four times Step Law's 0.25% plateau, wide enough that a
cell on a 2x grid keeps several configurations on each side of its optimum to fix the curvature, narrow enough
that the cliff is out; the floor of 6 keeps a cell with a coarse grid (or a missing corner) in the fit. The
selection is by a cell's own observed losses, before any law is fitted, so it cannot favour a law.

Measured on synthetic 4 x 4-cell landscapes (17 x 13 grids at 2^0.5 steps, a cubic rise 0.004·dx³ above lr*,
per-cell optima scattered 5% around the laws, 0.1% noise, each cell left out in turn): the true loss gap at
the predicted (lr, B) was 0.0035% (near 1%), 0.0061% (3%: the steep side bends the bowl), 0.030% (0.3%: too few
configurations fix the curvature); the plateau recipe's 0.0057%. Snapped to the nearest grid configuration the
plateau scored better (0.092% vs 0.126%): its optimum leans to the gentle side, which grid snapping rewards.

The fit is robust: Huber loss (δ = 1e-3 in ln L, about the noise of a final loss) by scipy's trust-region least
squares from several starts (per-cell-optimum power laws for the location, three curvature scales); intervals
by a bootstrap over cells (a resampled cell enters with its own level l_i), warm-started at the full fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares

JOINT_NEAR = 0.01
"""Configurations within 1% relative loss excess of a cell's best enter the joint fit (see module docstring)."""
JOINT_MIN_NEAR = 6
JOINT_DELTA = 1e-3
"""Huber δ on ln L (Hoffmann et al. 2022 use the same on log loss)."""
N_GLOBAL = 11  # a0 a1 a2 b0 b1 r0 r1 r2 kN kD g
CURVATURE_STARTS = (0.003, 0.03, 0.3)  # diagonal of H at the start; 1% excess at 0.3–3 ln-units from the optimum
_BOUNDS = (np.array([-np.inf] * 5 + [-12.0, -1e3, -12.0, -5.0, -5.0, -3.0]),
           np.array([np.inf] * 5 + [5.0, 1e3, 5.0, 5.0, 5.0, 3.0]))  # keeps exp() finite; curvature e^±12 is no bowl


class JointFitError(ValueError):
    """The landscape cannot determine the joint surface (too few cells, sizes, budgets or configurations)."""


@dataclass(frozen=True)
class Landscape:
    """Near-optimum configurations of every cell: ln N, ln D per cell; per configuration its cell, x, y, ln L."""

    lN: np.ndarray  # (cells,)
    lD: np.ndarray
    cell: np.ndarray  # (configs,) index into the cell arrays
    x: np.ndarray  # ln lr
    y: np.ndarray  # ln B
    logL: np.ndarray

    def subset(self, idx: np.ndarray) -> "Landscape":
        """Cells idx (with repeats, as a bootstrap draws them), renumbered 0..len(idx)-1."""
        parts = [np.flatnonzero(self.cell == i) for i in idx]
        rows = np.concatenate(parts) if parts else np.empty(0, dtype=int)
        new_cell = np.concatenate([np.full(p.size, k) for k, p in enumerate(parts)]) if parts else rows
        return Landscape(self.lN[idx], self.lD[idx], new_cell, self.x[rows], self.y[rows], self.logL[rows])


def select_near(cells: Sequence[tuple[float, float, np.ndarray, np.ndarray, np.ndarray]], near: float = JOINT_NEAR,
                min_near: int = JOINT_MIN_NEAR) -> Landscape:
    """Landscape from cells (N, D, ln lr, ln B, loss) keeping configs within `near` of each best (>= min_near)."""
    if not 0 < near < 1:
        raise ValueError(f"near is a relative loss excess in (0, 1), got {near}; the default is {JOINT_NEAR}")
    lN, lD, cell, xs, ys, ls = [], [], [], [], [], []
    for i, (N, D, x, y, loss) in enumerate(cells):
        order = np.argsort(loss, kind="stable")
        keep = order[: max(int((loss <= loss[order[0]] * (1 + near)).sum()), min_near)]
        lN.append(np.log(N))
        lD.append(np.log(D))
        cell.append(np.full(keep.size, i))
        xs.append(x[keep])
        ys.append(y[keep])
        ls.append(np.log(loss[keep]))
    if not cells:
        raise JointFitError("no (N, D) cells: the joint fit needs an lr x B grid in at least 4 cells")
    return Landscape(np.array(lN), np.array(lD), np.concatenate(cell), np.concatenate(xs), np.concatenate(ys),
                     np.concatenate(ls))


@dataclass(frozen=True, eq=False)
class JointFit:
    """The fitted surface. theta: [a0, a1, a2, b0, b1, r0, r1, r2, k_N, k_D, g] on centred logs (mN, mD);
    levels: l_i per cell. `law()` gives the Step-Law-form parameters in absolute logs."""

    theta: np.ndarray
    levels: np.ndarray
    mN: float
    mD: float
    cost: float
    n_configs: int
    n_cells: int
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 5)))  # bootstrap draws of law()

    def law(self) -> np.ndarray:
        """[ln coef_lr, exp_N, exp_D, ln coef_B, exp_D(B)] in ln N, ln D (uncentred)."""
        return _law(self.theta, self.mN, self.mD)

    def optimum(self, N: np.ndarray | float, D: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(ln lr*, ln B*) at (N, D)."""
        t = self.law()
        lN, lD = np.log(N), np.log(D)
        return t[0] + t[1] * lN + t[2] * lD, t[3] + t[4] * lD

    def hessian(self, N: float, D: float) -> np.ndarray:
        """Curvature s·H of ln L in (ln lr, ln B) at (N, D), below the optimal lr (above it: ln lr scaled by e^g)."""
        s = np.exp(self.theta[8] * (np.log(N) - self.mN) + self.theta[9] * (np.log(D) - self.mD))
        return s * _H(self.theta)

    def excess(self, N: float, D: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """ln L − l at offsets (dx, dy) = (ln lr, ln B) − the vertex, in the cell (N, D)."""
        v = np.column_stack([np.where(dx > 0, np.exp(self.theta[10]), 1.0) * dx, dy])
        return 0.5 * np.einsum("ij,jk,ik->i", v, self.hessian(N, D), v)


def _law(theta: np.ndarray, mN: float, mD: float) -> np.ndarray:
    a0, a1, a2, b0, b1 = theta[:5]
    return np.array([a0 - a1 * mN - a2 * mD, a1, a2, b0 - b1 * mD, b1])


def _H(theta: np.ndarray) -> np.ndarray:
    R = np.array([[np.exp(theta[5]), 0.0], [theta[6], np.exp(theta[7])]])
    return R @ R.T


def _residuals(p: np.ndarray, land: Landscape, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    a0, a1, a2, b0, b1, r0, r1, r2, kN, kD, g = p[:N_GLOBAL]
    levels = p[N_GLOBAL:]
    c = land.cell
    dx = land.x - (a0 + a1 * n[c] + a2 * d[c])
    dx = np.where(dx > 0, np.exp(g), 1.0) * dx
    dy = land.y - (b0 + b1 * d[c])
    e0, e2 = np.exp(r0), np.exp(r2)
    q = (e0 * dx + r1 * dy) ** 2 + (e2 * dy) ** 2  # vᵀ R Rᵀ v with Rᵀv = (e0·dx + r1·dy, e2·dy)
    return land.logL - levels[c] - 0.5 * np.exp(kN * n[c] + kD * d[c]) * q


def _jacobian(p: np.ndarray, land: Landscape, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """d residual / d p, analytic (see _residuals)."""
    a0, a1, a2, b0, b1, r0, r1, r2, kN, kD, g = p[:N_GLOBAL]
    c = land.cell
    nc, dc = n[c], d[c]
    dx = land.x - (a0 + a1 * nc + a2 * dc)
    above = dx > 0
    w = np.where(above, np.exp(g), 1.0)
    dx = w * dx  # the scaled offset v_x
    dy = land.y - (b0 + b1 * dc)
    e0, e2 = np.exp(r0), np.exp(r2)
    A, B = e0 * dx + r1 * dy, e2 * dy
    s = np.exp(kN * nc + kD * dc)
    J = np.zeros((c.size, p.size))
    ga = s * A * e0 * w  # d r / d a0
    gb = s * (A * r1 + B * e2)  # d r / d b0
    half_sq = 0.5 * s * (A * A + B * B)
    J[:, 0], J[:, 1], J[:, 2] = ga, ga * nc, ga * dc
    J[:, 3], J[:, 4] = gb, gb * dc
    J[:, 5], J[:, 6], J[:, 7] = -s * A * e0 * dx, -s * A * dy, -s * B * e2 * dy
    J[:, 8], J[:, 9] = -half_sq * nc, -half_sq * dc
    J[:, 10] = np.where(above, -s * A * e0 * dx, 0.0)
    J[np.arange(c.size), N_GLOBAL + c] = -1.0
    return J


def _check(land: Landscape) -> None:
    n_cells = land.lN.size
    if n_cells < 4 or np.unique(land.lN).size < 2 or np.unique(land.lD).size < 2:
        raise JointFitError(f"{n_cells} cells with {np.unique(land.lN).size} distinct N and "
                            f"{np.unique(land.lD).size} distinct D; the joint surface needs at least 4 cells with "
                            ">= 2 distinct N and >= 2 distinct D")
    if land.cell.size < N_GLOBAL + n_cells:
        raise JointFitError(f"{land.cell.size} near-optimum configurations cannot determine {N_GLOBAL + n_cells} "
                            "parameters; sweep more lr x B configurations per cell")


def _starts(land: Landscape, n: np.ndarray, d: np.ndarray) -> list[np.ndarray]:
    """Location from least squares through each cell's best configuration; curvature from CURVATURE_STARTS."""
    best = np.array([np.flatnonzero(land.cell == i)[np.argmin(land.logL[land.cell == i])] for i in range(n.size)])
    X = np.column_stack([np.ones(n.size), n, d])
    a, *_ = np.linalg.lstsq(X, land.x[best], rcond=None)
    b, *_ = np.linalg.lstsq(X[:, [0, 2]], land.y[best], rcond=None)
    out = []
    for h in CURVATURE_STARTS:
        r = 0.5 * np.log(h)
        out.append(np.concatenate([a, b, [r, 0.0, r, 0.0, 0.0, 0.0], land.logL[best]]))
    return out


def _solve(land: Landscape, starts: list[np.ndarray], delta: float) -> tuple[np.ndarray, float]:
    mN, mD = land.lN.mean(), land.lD.mean()
    n, d = land.lN - mN, land.lD - mD
    best_p, best_cost = None, np.inf
    for p0 in starts:
        lo = np.concatenate([_BOUNDS[0], np.full(n.size, -np.inf)])
        hi = np.concatenate([_BOUNDS[1], np.full(n.size, np.inf)])
        res = least_squares(_residuals, np.clip(p0, lo, hi), args=(land, n, d), jac=_jacobian, bounds=(lo, hi),
                            loss="huber", f_scale=delta,
                            x_scale="jac", max_nfev=200 * p0.size)
        if np.isfinite(res.cost) and res.cost < best_cost:
            best_p, best_cost = res.x, float(res.cost)
    if best_p is None:
        raise JointFitError("every start of the joint surface fit failed; check the landscape for outliers")
    return best_p, best_cost


def fit_joint(land: Landscape, delta: float = JOINT_DELTA, bootstrap: int = 0, seed: int = 0) -> JointFit:
    """Fit the joint surface (module docstring) to a Landscape; `bootstrap` resamples of cells for intervals."""
    _check(land)
    mN, mD = float(land.lN.mean()), float(land.lD.mean())
    n, d = land.lN - mN, land.lD - mD
    p, cost = _solve(land, _starts(land, n, d), delta)
    draws = np.full((max(int(bootstrap), 0), 5), np.nan)
    rng = np.random.default_rng(seed)
    for r in range(draws.shape[0]):
        idx = rng.integers(0, n.size, n.size)
        sub = land.subset(idx)
        try:
            _check(sub)
        except JointFitError:
            continue  # a resample with one N or one D cannot determine the law: a failed resample (NaN row)
        # warm start at the full fit, in the resample's own centring
        smN, smD = sub.lN.mean(), sub.lD.mean()
        start = p[:N_GLOBAL].copy()
        start[0] += p[1] * (smN - mN) + p[2] * (smD - mD)
        start[3] += p[4] * (smD - mD)
        start[8:10] = p[8:10]
        level0 = p[N_GLOBAL + idx]
        q, _ = _solve(sub, [np.concatenate([start, level0])], delta)
        draws[r] = _law(q, smN, smD)
    return JointFit(theta=p[:N_GLOBAL], levels=p[N_GLOBAL:], mN=mN, mD=mD, cost=cost, n_configs=int(land.cell.size),
                    n_cells=int(n.size), draws=draws)


def cell_optima(fit: JointFit, land: Landscape, delta: float = JOINT_DELTA) -> np.ndarray:
    """Per cell (ln lr, ln B) of its own vertex: the fitted bowl shape (curvature at that cell) with the cell's
    level and location free, fitted to the cell's near configurations alone. (cells, 2)."""
    out = np.empty((land.lN.size, 2))
    for i in range(land.lN.size):
        rows = land.cell == i
        N, D = np.exp(land.lN[i]), np.exp(land.lD[i])
        x0 = np.array(fit.optimum(N, D))

        def resid(p: np.ndarray, rows: np.ndarray = rows, N: float = N, D: float = D) -> np.ndarray:
            return land.logL[rows] - p[0] - fit.excess(N, D, land.x[rows] - p[1], land.y[rows] - p[2])

        res = least_squares(resid, np.array([land.logL[rows].min(), *x0]), loss="huber", f_scale=delta)
        out[i] = res.x[1:]
    return out
