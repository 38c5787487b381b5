"""A bound-constrained L-BFGS run on many starting points at once, in numpy.

Why: a law fit from a grid of thousands of starts (Chinchilla approach 3 uses 4,500) spends almost all of its
time in Python and scipy overhead when each start is a separate `scipy.optimize.minimize` call: an objective
evaluation over ~250 points costs a few microseconds of arithmetic but ~50 µs of call overhead. Here every
start is one row of an (S, k) array; one call of the batched objective evaluates all rows together, and the
L-BFGS two-loop recursion, the projection onto the box and the Armijo backtracking are vectorised over rows.

The method is projected L-BFGS (the free-variable subspace is the set of coordinates not held at a bound by
the sign of their gradient), with the memory reset for a row whenever its direction is not a descent
direction. It is a *first phase*: `analysis.fitting.multistart_lbfgsb` polishes the best distinct end points
with scipy's L-BFGS-B, so the final optimum satisfies scipy's own stopping rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

BatchedObjective = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""theta (S, k) -> (objective (S,), gradient (S, k))."""


@dataclass(frozen=True)
class BatchedResult:
    """End points of a batched run: one row per start."""

    x: np.ndarray  # (S, k)
    f: np.ndarray  # (S,)
    n_iter: np.ndarray  # (S,) iterations each row took before it stopped
    n_evals: int  # calls of the batched objective (each on the rows still active)


def _two_loop(g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray, gamma: np.ndarray,
              order: list[int]) -> np.ndarray:
    """H·g for each row by the L-BFGS two-loop recursion; `order` lists memory slots newest first."""
    q = g.copy()
    alpha = np.zeros((g.shape[0], len(order)))
    for j, slot in enumerate(order):
        alpha[:, j] = rho[:, slot] * np.einsum("sk,sk->s", s[:, slot], q)
        q -= alpha[:, j, None] * y[:, slot]
    r = gamma[:, None] * q
    for j in reversed(range(len(order))):
        slot = order[j]
        beta = rho[:, slot] * np.einsum("sk,sk->s", y[:, slot], r)
        r += s[:, slot] * (alpha[:, j] - beta)[:, None]
    return r


def batched_lbfgsb(fun_and_grad: BatchedObjective, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                   memory: int = 10, max_iter: int = 1000, ftol: float = 2.2e-9, gtol: float = 1e-5,
                   max_backtracks: int = 40, halve_every: int | None = None,
                   min_active: int = 64, pass_rows: bool = False) -> BatchedResult:
    """Minimise every row of `x0` within the box [lower, upper] by projected L-BFGS, all rows together.

    Stopping rules per row follow scipy's L-BFGS-B: relative decrease (f_k - f_k+1)/max(|f_k|, |f_k+1|, 1)
    <= ftol, or projected-gradient infinity norm <= gtol, or no Armijo step found.
    halve_every: successive halving for multi-start searches; every `halve_every` iterations the worse half
    of the rows still running (by current objective) stop, until `min_active` rows remain. Stopped rows keep
    their last point and objective.
    pass_rows: call fun_and_grad(theta, rows) with the indices (into x0) of the rows being evaluated, for
    objectives that differ per row (e.g. one bootstrap resample's weights per row).
    """

    def evaluate(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fun_and_grad(theta, rows) if pass_rows else fun_and_grad(theta)  # type: ignore[call-arg]

    x = np.clip(np.asarray(x0, dtype=float), lower, upper)
    n_starts, k = x.shape
    f, g = evaluate(x, np.arange(n_starts))
    n_evals = 1
    s_mem = np.zeros((n_starts, memory, k))
    y_mem = np.zeros((n_starts, memory, k))
    rho = np.zeros((n_starts, memory))  # rho = 0 marks an empty or rejected slot: a no-op in the recursion
    gamma = np.ones(n_starts)
    has_memory = np.zeros(n_starts, dtype=bool)
    n_iter = np.zeros(n_starts, dtype=int)
    active = np.flatnonzero(np.isfinite(f))
    for it in range(max_iter):
        if active.size == 0:
            break
        if halve_every and it > 0 and it % halve_every == 0 and active.size > min_active:
            n_next = max(min_active, active.size // 2)
            active = active[np.argsort(f[active], kind="stable")[:n_next]]
        slot = it % memory
        order = [(slot - 1 - j) % memory for j in range(min(it, memory))]
        xa, fa, ga = x[active], f[active], g[active]
        at_lower = (xa <= lower) & (ga > 0)
        at_upper = (xa >= upper) & (ga < 0)
        free = ~(at_lower | at_upper)
        g_free = np.where(free, ga, 0.0)
        # First step of a row without memory: a unit-length gradient step, like scipy's 1/||g||.
        gam = np.where(has_memory[active], gamma[active],
                       1.0 / np.maximum(np.linalg.norm(g_free, axis=1), 1e-12))
        d = -_two_loop(g_free, s_mem[active], y_mem[active], rho[active], gam, order)
        d = np.where(free, d, 0.0)
        slope = np.einsum("sk,sk->s", ga, d)
        bad = ~(slope < 0)
        if bad.any():  # not a descent direction: fall back to steepest descent and forget the curvature pairs
            rows = active[bad]
            rho[rows] = 0.0
            has_memory[rows] = False
            d[bad] = -g_free[bad] / np.maximum(np.linalg.norm(g_free[bad], axis=1, keepdims=True), 1e-12)
        # Armijo backtracking on the projected path, vectorised over the rows still searching.
        t = np.ones(active.size)
        x_new = np.empty_like(xa)
        f_new = np.full(active.size, np.inf)
        g_new = np.empty_like(ga)
        pending = np.arange(active.size)
        for _ in range(max_backtracks):
            trial = np.clip(xa[pending] + t[pending, None] * d[pending], lower, upper)
            ft, gt = evaluate(trial, active[pending])
            n_evals += 1
            decrease = np.einsum("sk,sk->s", ga[pending], trial - xa[pending])
            ok = np.isfinite(ft) & (ft <= fa[pending] + 1e-4 * decrease)
            done = pending[ok]
            x_new[done], f_new[done], g_new[done] = trial[ok], ft[ok], gt[ok]
            failed = ~ok
            pending = pending[failed]
            if pending.size == 0:
                break
            # Next step from the quadratic through f(0), f'(0) and f(t), kept within [t/10, t/2] (Nocedal &
            # Wright 2006, §3.5); plain halving where the trial was not finite.
            tp, f0, slope0, ftp = t[pending], fa[pending], decrease[failed] / t[pending], ft[failed]
            curvature = ftp - f0 - slope0 * tp
            with np.errstate(divide="ignore", invalid="ignore"):
                t_quad = -slope0 * tp * tp / (2.0 * curvature)
            t_quad = np.where(np.isfinite(t_quad) & (curvature > 0), t_quad, 0.5 * tp)
            t[pending] = np.clip(t_quad, 0.1 * tp, 0.5 * tp)
        stuck = np.zeros(active.size, dtype=bool)
        stuck[pending] = True
        moved = ~stuck
        rows = active[moved]
        s_vec = x_new[moved] - xa[moved]
        y_vec = g_new[moved] - ga[moved]
        sy = np.einsum("sk,sk->s", s_vec, y_vec)
        yy = np.einsum("sk,sk->s", y_vec, y_vec)
        keep = sy > 1e-10 * np.maximum(yy, 1e-300)  # curvature condition; otherwise skip the pair
        s_mem[rows, slot] = s_vec
        y_mem[rows, slot] = y_vec
        rho[rows, slot] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
        gamma[rows[keep]] = sy[keep] / yy[keep]
        has_memory[rows[keep]] = True
        rel_decrease = (fa[moved] - f_new[moved]) / np.maximum.reduce(
            [np.abs(fa[moved]), np.abs(f_new[moved]), np.ones(rows.size)])
        x[rows], f[rows], g[rows] = x_new[moved], f_new[moved], g_new[moved]
        n_iter[active] += 1
        proj_grad = np.abs(x[rows] - np.clip(x[rows] - g[rows], lower, upper)).max(axis=1)
        converged = (rel_decrease <= ftol) | (proj_grad <= gtol)
        still = np.ones(active.size, dtype=bool)
        still[stuck] = False
        still[np.flatnonzero(moved)[converged]] = False
        active = active[still]
    return BatchedResult(x=x, f=f, n_iter=n_iter, n_evals=n_evals)
