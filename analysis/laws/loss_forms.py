"""Functional forms of the loss L as a function of parameters N, tokens D or compute C.

Each form is a named `LossForm`: its formula and source in the docstring of its log-prediction function, the
fitted parametrisation (in which the optimiser works, chosen so the fit is well conditioned), the reported
parametrisation, bounds and a grid of starts. Every form predicts log L and the vector-Jacobian product of log L
with respect to the fitted parameters, batched over S parameter vectors (theta has shape (S, k)), as
`analysis.fitting.huber_log_objective` needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from analysis.fitting import grid_starts, latin_hypercube_starts

LogInputs = tuple[np.ndarray, ...]  # log of each input column, each (n,)
VJP = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LossForm:
    """A loss law: log L = log_predict(theta, log inputs), fitted in `fit_names`, reported in `param_names`."""

    name: str
    formula: str
    inputs: tuple[str, ...]  # tidy-frame columns the law reads: N, D or C
    fit_names: tuple[str, ...]
    param_names: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]  # on the fitted parametrisation
    log_predict: Callable[[np.ndarray, LogInputs], tuple[np.ndarray, VJP]]
    to_params: Callable[[np.ndarray], np.ndarray]  # (..., k) fitted -> reported
    from_params: Callable[[np.ndarray], np.ndarray]  # (..., k) reported -> fitted
    starts: Callable[[], np.ndarray]  # (S, k) starting points in the fitted parametrisation


def _lse(terms: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """log Σ exp(terms) and the softmax weights of each term, stable for large |terms|."""
    m = np.maximum.reduce(terms)
    ex = [np.exp(t - m) for t in terms]
    s = np.add.reduce(ex)
    return m + np.log(s), [e / s for e in ex]


def _power_sum(theta: np.ndarray, logs: LogInputs, terms: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]
               ) -> tuple[np.ndarray, VJP]:
    """log L = log Σ_j exp(theta[c_j] - Σ_(p, i) theta[p]·log X_i) for terms ((c_j, ((p, i), ...)), ...).

    Exponentiates directly (no max-subtraction) when every term is below 700, where exp cannot overflow: the
    common case within our bounds, and about half the work of a stabilised log-sum-exp. A term without
    powers (the irreducible E) stays a (S, 1) column.
    """
    t = []
    for c, powers in terms:
        tj = theta[:, c, None]
        for p, i in powers:
            tj = tj - theta[:, p, None] * logs[i]
        t.append(tj)
    if max(float(tj.max()) for tj in t) < 700.0:
        x = [np.exp(tj) for tj in t]
        total = x[0] + x[1]
        for xj in x[2:]:
            total += xj
        pred = np.log(total)
    else:
        n = logs[0].size
        pred, w = _lse([np.broadcast_to(tj, (theta.shape[0], n)) for tj in t])
        x, total = w, np.ones_like(pred)

    def vjp(psi: np.ndarray) -> np.ndarray:
        g = np.zeros(theta.shape)
        q = psi / total  # ∂ log L / ∂ term_j = x_j / total
        q_sum = None
        for (c, powers), xj in zip(terms, x):
            if not powers and xj.shape[1] == 1:
                q_sum = q.sum(axis=1) if q_sum is None else q_sum
                g[:, c] += xj[:, 0] * q_sum
                continue
            pw = q * xj
            g[:, c] += pw.sum(axis=1)
            for p, i in powers:
                g[:, p] -= pw @ logs[i]
        return g

    return pred, vjp


# --- Chinchilla approach 3 ---------------------------------------------------------------------------------

def chinchilla_log_predict(theta: np.ndarray, logs: LogInputs) -> tuple[np.ndarray, VJP]:
    """L = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2), as log L = LSE(a − α log N, b − β log D, e).

    theta columns: e = log E, a = log A, b = log B, α, β (the parametrisation of Hoffmann et al. appendix D.2
    and Besiroglu et al. 2024). Reported params: E, A, B, alpha, beta.
    """
    return _power_sum(theta, logs, ((1, ((3, 0),)), (2, ((4, 1),)), (0, ())))


def _exp_first3(theta: np.ndarray) -> np.ndarray:
    out = np.array(theta, dtype=float, copy=True)
    out[..., :3] = np.exp(out[..., :3])
    return out


def _log_first3(params: np.ndarray) -> np.ndarray:
    out = np.array(params, dtype=float, copy=True)
    out[..., :3] = np.log(out[..., :3])
    return out


CHINCHILLA = LossForm(
    name="chinchilla", formula="L = E + A/N^alpha + B/D^beta", inputs=("N", "D"),
    fit_names=("e", "a", "b", "alpha", "beta"), param_names=("E", "A", "B", "alpha", "beta"),
    # e, a, b are logs: E in [e^-5, e^5] nats, A and B up to e^50; exponents in [0, 5].
    bounds=((-5.0, 5.0), (-10.0, 50.0), (-10.0, 50.0), (0.0, 5.0), (0.0, 5.0)),
    log_predict=chinchilla_log_predict, to_params=_exp_first3, from_params=_log_first3,
    # Besiroglu et al. 2024 grid (design §6): e ∈ {−1, −.5, …, 1}, a, b ∈ {0, 5, …, 25}, α, β ∈ {0, .5, …, 2};
    # 5·6·6·5·5 = 4,500 starts.
    starts=lambda: grid_starts([np.linspace(-1, 1, 5), np.arange(0, 26, 5.0), np.arange(0, 26, 5.0),
                                np.linspace(0, 2, 5), np.linspace(0, 2, 5)]),
)


# --- Single-variable laws with an irreducible term ---------------------------------------------------------

def saturating_log_predict(theta: np.ndarray, logs: LogInputs) -> tuple[np.ndarray, VJP]:
    """L = E + A/X^α (X = N or C; Kaplan et al. 2020 eq. 1.1/1.3 plus Hoffmann et al.'s irreducible E),
    as log L = LSE(a − α log X, e). theta columns: e = log E, a = log A, α."""
    return _power_sum(theta, logs, ((1, ((2, 0),)), (0, ())))


def _exp_first2(theta: np.ndarray) -> np.ndarray:
    out = np.array(theta, dtype=float, copy=True)
    out[..., :2] = np.exp(out[..., :2])
    return out


def _log_first2(params: np.ndarray) -> np.ndarray:
    out = np.array(params, dtype=float, copy=True)
    out[..., :2] = np.log(out[..., :2])
    return out


def _saturating(name: str, column: str) -> LossForm:
    return LossForm(
        name=name, formula=f"L = E + A/{column}^alpha", inputs=(column,),
        fit_names=("e", "a", "alpha"), param_names=("E", "A", "alpha"),
        bounds=((-5.0, 5.0), (-10.0, 80.0), (0.0, 5.0)),
        log_predict=saturating_log_predict, to_params=_exp_first2, from_params=_log_first2,
        # The Chinchilla grid restricted to the terms this law has (a up to 40: C ~ 1e20 needs larger A).
        starts=lambda: grid_starts([np.linspace(-1, 1, 5), np.arange(0, 41, 5.0), np.linspace(0, 2, 5)]),
    )


L_OF_N = _saturating("L(N)", "N")
L_OF_C = _saturating("L(C)", "C")


# --- Kaplan et al. 2020 L(N, D) ----------------------------------------------------------------------------

def kaplan_log_predict(theta: np.ndarray, logs: LogInputs) -> tuple[np.ndarray, VJP]:
    """L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, eq. 1.5; their fit: α_N ≈ 0.076,
    α_D ≈ 0.095, N_c ≈ 8.8e13 non-embedding parameters, D_c ≈ 5.4e13 tokens).

    log L = α_D · LSE(u1, u2), u1 = (α_N/α_D)(log N_c − log N), u2 = log D_c − log D.
    theta columns: nc = log N_c, dc = log D_c, α_N, α_D. Reported: Nc, Dc, alpha_N, alpha_D.
    """
    log_n, log_d = logs
    nc, dc, a_n, a_d = (theta[:, j, None] for j in range(4))
    u1 = (a_n / a_d) * (nc - log_n)
    u2 = dc - log_d
    s, (w1, w2) = _lse([u1, u2])
    pred = a_d * s

    def vjp(psi: np.ndarray) -> np.ndarray:
        return np.stack([
            (psi * w1 * a_n).sum(axis=1),  # ∂/∂nc = α_N w1
            (psi * w2 * a_d).sum(axis=1),  # ∂/∂dc = α_D w2
            (psi * w1 * (nc - log_n)).sum(axis=1),  # ∂/∂α_N = w1 (nc − log N)
            (psi * (s - w1 * u1)).sum(axis=1),  # ∂/∂α_D = s − w1 u1
        ], axis=1)

    return pred, vjp


KAPLAN = LossForm(
    name="kaplan", formula="L = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D", inputs=("N", "D"),
    fit_names=("nc", "dc", "alpha_N", "alpha_D"), param_names=("Nc", "Dc", "alpha_N", "alpha_D"),
    bounds=((0.0, 80.0), (0.0, 80.0), (1e-3, 2.0), (1e-3, 2.0)),
    log_predict=kaplan_log_predict, to_params=_exp_first2, from_params=_log_first2,
    starts=lambda: grid_starts([np.arange(10, 51, 10.0), np.arange(10, 51, 10.0),
                                [0.03, 0.1, 0.3, 1.0], [0.03, 0.1, 0.3, 1.0]]),
)


# --- Farseer (Li et al. 2025) ------------------------------------------------------------------------------

# N is divided by this reference inside the fit: a_i·N^x = (a_i·N_REF^x)·(N/N_REF)^x keeps the fitted
# coefficients O(1) whatever the model sizes (parameters; the middle of our CPU-to-cluster range).
FARSEER_N_REF = 1e8


def farseer_log_predict(theta: np.ndarray, logs: LogInputs) -> tuple[np.ndarray, VJP]:
    """L(N, D) = exp(a3·N^γ + b3) + exp(a2·N^β + b2) · D^(−exp(a1·N^α + b1)).

    Li et al. 2025, "Farseer: A Refined Scaling Law in Large Language Models" (arXiv:2506.10972): a loss surface
    whose data term has an N-dependent amplitude and an N-dependent exponent exp(a1·N^α + b1). We confirmed the
    paper and its abstract; the formula is the one stated in our issue and could not be checked against the
    paper's text.
    Fitted parametrisation: c_i = a_i·N_REF^x_i (x = α, β, γ) with n = N/N_REF, so
    log L = LSE(u3, u2), u3 = c3·n^γ + b3, u2 = c2·n^β + b2 − exp(c1·n^α + b1)·log D.
    theta columns: c1, b1, alpha, c2, b2, beta, c3, b3, gamma. Reported: a1, b1, alpha, a2, b2, beta, a3, b3, gamma.
    """
    log_n, log_d = logs[0] - np.log(FARSEER_N_REF), logs[1]
    c1, b1, al, c2, b2, be, c3, b3, ga = (theta[:, j, None] for j in range(9))
    with np.errstate(over="ignore", invalid="ignore"):  # huge exponents make the row inf: the fit rejects it
        n_al, n_be, n_ga = np.exp(al * log_n), np.exp(be * log_n), np.exp(ga * log_n)
        k = np.exp(c1 * n_al + b1)  # the data exponent at each N
        u3 = c3 * n_ga + b3
        u2 = c2 * n_be + b2 - k * log_d
        pred, (w3, w2) = _lse([u3, u2])

    def vjp(psi: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            p2, p3 = psi * w2, psi * w3
            pk = p2 * k * log_d  # ∂u2/∂(c1·n^α + b1) = −k log D
            return np.stack([
                -(pk * n_al).sum(axis=1), -pk.sum(axis=1), -(pk * c1 * n_al * log_n).sum(axis=1),
                (p2 * n_be).sum(axis=1), p2.sum(axis=1), (p2 * c2 * n_be * log_n).sum(axis=1),
                (p3 * n_ga).sum(axis=1), p3.sum(axis=1), (p3 * c3 * n_ga * log_n).sum(axis=1),
            ], axis=1)

    return pred, vjp


def _farseer_scale(theta: np.ndarray, sign: float) -> np.ndarray:
    out = np.array(theta, dtype=float, copy=True)
    for coef, expo in ((0, 2), (3, 5), (6, 8)):
        out[..., coef] = out[..., coef] * FARSEER_N_REF ** (sign * out[..., expo])
    return out


FARSEER = LossForm(
    name="farseer", formula="L = exp(a3*N^gamma + b3) + exp(a2*N^beta + b2) * D^(-exp(a1*N^alpha + b1))",
    inputs=("N", "D"), fit_names=("c1", "b1", "alpha", "c2", "b2", "beta", "c3", "b3", "gamma"),
    param_names=("a1", "b1", "alpha", "a2", "b2", "beta", "a3", "b3", "gamma"),
    bounds=((-50.0, 50.0), (-10.0, 10.0), (-1.0, 1.0), (-50.0, 50.0), (-10.0, 30.0), (-1.0, 1.0),
            (-50.0, 50.0), (-10.0, 10.0), (-1.0, 1.0)),
    log_predict=farseer_log_predict,
    to_params=lambda theta: _farseer_scale(theta, -1.0), from_params=lambda params: _farseer_scale(params, 1.0),
    # Nine parameters make a full grid impractical: a Latin hypercube over the region where the terms are of
    # the size of a loss (b2 up to 15: the data term's amplitude before D^-k), exponents of N within ±0.5.
    starts=lambda: latin_hypercube_starts(((-3, 3), (-3, 1), (-0.5, 0.5), (-3, 3), (0, 15), (-0.5, 0.5),
                                           (-3, 3), (-1, 2), (-0.5, 0.5)), 4000, seed=0),
)

FORMS: dict[str, LossForm] = {f.name: f for f in (CHINCHILLA, KAPLAN, FARSEER, L_OF_N, L_OF_C)}


def get_form(name: str) -> LossForm:
    """The loss form called `name`; ValueError listing the known names otherwise."""
    try:
        return FORMS[name]
    except KeyError:
        raise ValueError(f"unknown loss form {name!r}; choose one of {sorted(FORMS)}") from None
