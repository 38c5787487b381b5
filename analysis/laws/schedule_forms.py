"""The maths of the schedule-aware loss-curve laws: the Multi-Power Law and the LR-annealing law.

Both predict the loss L(t) after optimizer step t from the learning rates η_0..η_t of every step so far.

**Multi-Power Law** (Luo et al., "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules",
ICLR 2025, eq. (5)–(6)), seven parameters L0, A, α, B, C, β, γ:

    L(t) = L0 + A·(S1(t) + S_W)^(−α) − LD(t)
    LD(t) = B · Σ_{k ≤ t} (η_{k−1} − η_k) · G(η_k^(−γ) · S_k(t)),   G(x) = 1 − (C·x + 1)^(−β)
    S_k(t) = Σ_{τ=k..t} η_τ

S1(t) + S_W is the LR area of every step up to t, warmup included (S_W: the warmup's area; S1: the area after it).
The sum of LD runs over the steps after warmup: here, from the first step whose lr is below its predecessor's (the
end of the initial non-decreasing stretch of lr, so a warmup's increases are left out and a stable phase adds
zero terms). Later increases (a re-warmup) enter with a negative η_{k−1} − η_k, as the formula is written.

**LR-annealing law** (Tissue et al., "Scaling Law with Learning Rate Annealing", arXiv:2408.11029, eq. (1)–(2)),
four fitted parameters L0, A, α, C and the momentum λ (fixed; 0.999 in the paper, whose value barely matters there):

    L(t) = L0 + A·S1(t)^(−α) − C·S2(t),   S1(t) = Σ_{i ≤ t} η_i,   S2(t) = Σ_{i ≤ t} m_i,
    m_i = λ·m_{i−1} + (η_{i−1} − η_i)

again with the warmup's increases left out of the η_{i−1} − η_i terms.

Units and conventions. `lr` holds the lr of every optimizer step from step 0; the loss at step t follows the update of
step t (S sums through τ = t). Fits run on lr normalised by a reference lr η_ref (the peak of the fitted runs), which
leaves the law's form unchanged but rescales its constants (η = η_ref·η̂):
A' = A·η_ref^(−α), B' = B·η_ref, C' = C·η_ref^(1−γ) (annealing: C' = C·η_ref); the reported parameters are those of
the papers, in the units of the recorded lr.

Speed. LD(t) is a sum over every decay step k ≤ t for every measured t: 200 points of a 24,000-step cosine curve are
2.4 million terms per parameter vector. The terms depend on k only through (η_k, S_k(t)), so for each measured t
the steps are grouped into cells of width `h` in ln η_k and ln S_k(t) (`decay_quadrature`, once per curve):
a cell's weight is its Σ(η_{k−1} − η_k) and its node the |weight|-weighted mean of ln η_k and ln S_k(t). A curve
then costs (points × cells), ~100 cells a point, exact for a step drop and within ~1e-6 of the loss for cosine
(tests compare against `multi_power_exact`; h = 0.1 gives 127 cells and 1e-7 on a 24,000-step cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MULTI_POWER = "multi-power"
ANNEALING = "annealing"
FORMS = (MULTI_POWER, ANNEALING)

MULTI_POWER_PARAMS = ("L0", "A", "alpha", "B", "C", "beta", "gamma")
ANNEALING_PARAMS = ("L0", "A", "alpha", "C")
ANNEALING_MOMENTUM = 0.999
"""λ of Tissue et al. 2024 (§3, "we set λ = 0.999"): the decay of the momentum of LR decreases, per step."""
QUADRATURE_WIDTH = 0.1
"""Cell width h in ln η and ln S of the decay-term quadrature (module docstring)."""
_TINY = 1e-12  # floor of η̂ and Ŝ before their logarithm (an lr of exactly 0 is allowed)
_MAX_PAIRS = 4_000_000  # (point, decay step) pairs processed at once while building a quadrature


def warmup_end(lr: np.ndarray) -> int:
    """Index of the first step whose lr is below its predecessor's (len(lr) when the lr never decreases)."""
    down = np.flatnonzero(np.diff(lr) < 0)
    return int(down[0]) + 1 if down.size else int(lr.size)


def decay_steps(lr: np.ndarray) -> np.ndarray:
    """d_k = η_{k−1} − η_k for every step k after warmup (0 for the warmup and for step 0), shape (T,)."""
    d = np.zeros_like(lr)
    d[1:] = lr[:-1] - lr[1:]
    d[:warmup_end(lr)] = 0.0
    return d


def annealing_area(lr: np.ndarray, momentum: float = ANNEALING_MOMENTUM) -> np.ndarray:
    """S2(t) of Tissue et al. 2024 for every step t: Σ_{i≤t} m_i, m_i = λ·m_{i−1} + d_i, shape (T,)."""
    from scipy.signal import lfilter

    return np.cumsum(lfilter([1.0], [1.0, -momentum], decay_steps(lr)))


@dataclass(frozen=True)
class Quadrature:
    """The decay term of curves at their measured points, grouped into cells (module docstring), flat over points.

    weight (J,): Σ d_k of the cell; log_lr, log_area (J,): the cell's node ln η̂_k, ln Ŝ_k(t); owner (J,): the index
    of the point the cell belongs to, non-decreasing; starts (n,): each point's first cell (every point has at least
    one, of weight 0 where no decay step precedes it), so `np.add.reduceat(x, starts)` sums cells per point.
    """

    weight: np.ndarray
    log_lr: np.ndarray
    log_area: np.ndarray
    owner: np.ndarray
    starts: np.ndarray

    @staticmethod
    def concat(parts: list["Quadrature"]) -> "Quadrature":
        """The cells of several curves, their points numbered one after the other."""
        points = np.cumsum([0] + [q.starts.size for q in parts])
        cells = np.cumsum([0] + [q.weight.size for q in parts])
        return Quadrature(*(np.concatenate([getattr(q, n) for q in parts]) for n in ("weight", "log_lr", "log_area")),
                          np.concatenate([q.owner + p for q, p in zip(parts, points)]),
                          np.concatenate([q.starts + c for q, c in zip(parts, cells)]))


def decay_quadrature(lr: np.ndarray, steps: np.ndarray, width: float = QUADRATURE_WIDTH) -> Quadrature:
    """Cells of the decay term of the (normalised) lr sequence `lr` at the measured `steps`; see module docstring."""
    d = decay_steps(lr)
    ks = np.flatnonzero(d != 0.0)
    area = np.concatenate([[0.0], np.cumsum(lr)])  # area[t + 1] = Σ_{τ≤t} η_τ
    log_lr_k = np.log(np.maximum(lr[ks], _TINY))
    bin_lr = np.floor(log_lr_k / width).astype(np.int64)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    counts = np.searchsorted(ks, steps, side="right")  # decay steps k ≤ t of every point
    start = 0
    while start < steps.size:  # blocks of points, so the (point, step) pairs stay within _MAX_PAIRS
        stop = start + 1
        while stop < steps.size and counts[start:stop + 1].sum() <= _MAX_PAIRS:
            stop += 1
        rows.extend(_cells(d, ks, area, log_lr_k, bin_lr, steps[start:stop], counts[start:stop], width))
        start = stop
    rows = [r if r[0].size else (np.zeros(1), np.zeros(1), np.zeros(1)) for r in rows]
    sizes = np.array([r[0].size for r in rows], dtype=np.int64)
    flat = [np.concatenate([r[j] for r in rows]) if rows else np.zeros(0) for j in range(3)]
    return Quadrature(*flat, np.repeat(np.arange(steps.size), sizes), np.cumsum(sizes) - sizes)


def _cells(d: np.ndarray, ks: np.ndarray, area: np.ndarray, log_lr_k: np.ndarray, bin_lr: np.ndarray,
           steps: np.ndarray, counts: np.ndarray, width: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(weight, ln η̂, ln Ŝ) of the cells of each point in `steps`."""
    point = np.repeat(np.arange(steps.size), counts)
    j = np.arange(point.size) - np.repeat(np.cumsum(counts) - counts, counts)  # index into ks
    after = area[steps[point] + 1] - area[ks[j]]  # S_k(t) = Σ_{τ=k..t} η_τ
    # A decrease with no lr area after it (a schedule that ends at lr 0) has realised none of its drop: G(0) = 0.
    # Left in, η_k^(−γ)·S_k(t) would be 0^(−γ)·0, which the floors below turn into G = 1 whenever γ > 1.
    live = after > 0
    point, j = point[live], j[live]
    log_area = np.log(np.maximum(after[live], _TINY))
    key = ((point.astype(np.int64) << 40) + ((np.floor(log_area / width).astype(np.int64) + (1 << 19)) << 20)
           + bin_lr[j] + (1 << 19))
    cells, inverse = np.unique(key, return_inverse=True)
    w = d[ks[j]]
    mass = np.bincount(inverse, np.abs(w), cells.size)
    weight = np.bincount(inverse, w, cells.size)
    node_lr = np.bincount(inverse, np.abs(w) * log_lr_k[j], cells.size) / mass
    node_area = np.bincount(inverse, np.abs(w) * log_area, cells.size) / mass
    owner = cells >> 40
    bounds = np.searchsorted(owner, np.arange(steps.size + 1))
    return [(weight[a:b], node_lr[a:b], node_area[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------------------------------------------
# Batched log predictions with gradients, in the fitted parametrisation (normalised lr, positive scales in logs)
# ---------------------------------------------------------------------------------------------------------------

MULTI_POWER_FIT = ("L0", "ln_A", "alpha", "ln_B", "ln_C", "beta", "gamma")
ANNEALING_FIT = ("L0", "ln_A", "alpha", "C")


@dataclass(frozen=True)
class CurveInputs:
    """Every measured point of the fitted curves, concatenated: ln of the LR area Σ_{τ≤t} η̂_τ (n,), the
    annealing area S2·(1 − λ) (n,; at most the total drop of η̂, so its coefficient is of order one) and the
    multi-power quadrature cells."""

    log_area: np.ndarray
    s2: np.ndarray
    quad: Quadrature


def multi_power_log_predict(theta: np.ndarray, x: CurveInputs):
    """ln L for parameter rows theta (S, 7) in MULTI_POWER_FIT order, and its vector-Jacobian product."""
    L0, ln_a, alpha, ln_b, ln_c, beta, gamma = (theta[:, i, None] for i in range(7))
    power = np.exp(ln_a - alpha * x.log_area)  # A'·Ŝ^(−α), (S, n)
    q = x.quad
    lx = ln_c - gamma * q.log_lr + q.log_area  # ln(C'·η̂^(−γ)·Ŝ) of every cell, (S, J)
    cx = np.exp(np.minimum(lx, 700.0))
    log_u = np.log1p(cx)
    u_beta = np.exp(-beta * log_u)  # (C'x + 1)^(−β)
    b = np.exp(ln_b)
    decay = b * np.add.reduceat(q.weight * (1.0 - u_beta), q.starts, axis=1)  # (S, n)
    loss = L0 + power - decay
    with np.errstate(invalid="ignore", divide="ignore"):
        pred = np.where(loss > 0, np.log(np.maximum(loss, 1e-300)), np.nan)

    def vjp(w: np.ndarray) -> np.ndarray:
        r = w / loss  # d ln L = dL / L
        rb = (r * b)[:, q.owner]  # (S, J): each cell's point
        dg_dlx = rb * q.weight * beta * u_beta * cx / (1.0 + cx)  # ∂(w·G)/∂ ln(C'x)
        return np.stack([
            r.sum(1), (r * power).sum(1), -(r * power * x.log_area).sum(1), -(r * decay).sum(1),
            -dg_dlx.sum(1), -(rb * q.weight * u_beta * log_u).sum(1), (dg_dlx * q.log_lr).sum(1),
        ], axis=1)

    return pred, vjp


def annealing_log_predict(theta: np.ndarray, x: CurveInputs):
    """ln L for parameter rows theta (S, 4) in ANNEALING_FIT order, and its vector-Jacobian product."""
    L0, ln_a, alpha, c = (theta[:, i, None] for i in range(4))
    power = np.exp(ln_a - alpha * x.log_area)
    loss = L0 + power - c * x.s2
    with np.errstate(invalid="ignore", divide="ignore"):
        pred = np.where(loss > 0, np.log(np.maximum(loss, 1e-300)), np.nan)

    def vjp(w: np.ndarray) -> np.ndarray:
        r = w / loss
        return np.stack([r.sum(1), (r * power).sum(1), -(r * power * x.log_area).sum(1), -(r * x.s2).sum(1)],
                        axis=1)

    return pred, vjp


def to_params(form: str, theta: np.ndarray, lr_ref: float, momentum: float = ANNEALING_MOMENTUM) -> np.ndarray:
    """Fitted rows (…, k) → the papers' parameters in the units of the recorded lr (module docstring).

    The annealing law is fitted against S2·(1 − λ) (at most the total lr drop), so its fitted C is C'/(1 − λ)."""
    theta = np.asarray(theta, dtype=float)
    out = theta.copy()
    alpha = theta[..., 2]
    out[..., 1] = np.exp(theta[..., 1]) * lr_ref ** alpha  # A = A'·η_ref^α
    if form == MULTI_POWER:
        out[..., 3] = np.exp(theta[..., 3]) / lr_ref  # B = B'/η_ref
        out[..., 4] = np.exp(theta[..., 4]) * lr_ref ** (theta[..., 6] - 1.0)  # C = C'·η_ref^(γ−1)
    else:
        out[..., 3] = theta[..., 3] * (1.0 - momentum) / lr_ref  # C = C'·(1 − λ)/η_ref
    return out


def from_params(form: str, params: np.ndarray, lr_ref: float, momentum: float = ANNEALING_MOMENTUM) -> np.ndarray:
    """The inverse of `to_params`."""
    p = np.asarray(params, dtype=float)
    out = p.copy()
    out[..., 1] = np.log(p[..., 1]) - p[..., 2] * np.log(lr_ref)
    if form == MULTI_POWER:
        out[..., 3] = np.log(p[..., 3] * lr_ref)
        out[..., 4] = np.log(p[..., 4]) - (p[..., 6] - 1.0) * np.log(lr_ref)
    else:
        out[..., 3] = p[..., 3] * lr_ref / (1.0 - momentum)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Reference evaluations, term by term in raw units (slow: tests and small curves)
# ---------------------------------------------------------------------------------------------------------------


def multi_power_exact(params: dict[str, float], lr: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """L(t) of the Multi-Power Law at `steps`, every decay term summed exactly (O(points × steps))."""
    p = params
    lr = np.asarray(lr, dtype=float)
    area = np.concatenate([[0.0], np.cumsum(lr)])
    d = decay_steps(lr)
    out = []
    for t in np.asarray(steps, dtype=int):
        k = np.flatnonzero(d[:t + 1])
        s_k = area[t + 1] - area[k]
        x = np.maximum(lr[k], _TINY) ** (-p["gamma"]) * s_k
        decay = p["B"] * np.sum(d[k] * (1.0 - (p["C"] * x + 1.0) ** (-p["beta"])))
        out.append(p["L0"] + p["A"] * area[t + 1] ** (-p["alpha"]) - decay)
    return np.array(out)


def annealing_exact(params: dict[str, float], lr: np.ndarray, steps: np.ndarray,
                    momentum: float = ANNEALING_MOMENTUM) -> np.ndarray:
    """L(t) of the LR-annealing law at `steps`, the momentum recursion written out step by step."""
    lr = np.asarray(lr, dtype=float)
    d = decay_steps(lr)
    m, s2, s1 = 0.0, np.zeros(lr.size), np.cumsum(lr)
    total = 0.0
    for i in range(lr.size):
        m = momentum * m + d[i]
        total += m
        s2[i] = total
    steps = np.asarray(steps, dtype=int)
    return params["L0"] + params["A"] * s1[steps] ** (-params["alpha"]) - params["C"] * s2[steps]
