"""Gradient noise scale: exact estimator algebra, EMA bias correction, checkpoint round trip, and recovery of the
analytic B_simple of a linear regression from minibatch gradient norms at b = 8 and B = 64."""

import math

import numpy as np
import pytest
import torch

from lab.noise import NoiseScale, NoiseScaleError, grad_sq_norm, unbiased_estimates

# Linear regression y = x·w* + ε with x ~ N(0, I_d), ε ~ N(0, σ²), loss ½(x·w − y)², evaluated at w = w* + δ.
# Per-example gradient g = x(x·δ − ε), so G = E[g] = δ and, by Isserlis' theorem,
# E[g gᵀ] = (|δ|² + σ²) I + 2 δδᵀ, hence Σ = (|δ|² + σ²) I + δδᵀ and
# B_simple = tr(Σ)/|G|² = (d(|δ|² + σ²) + |δ|²)/|δ|².  With d = 10, |δ|² = 1, σ² = 1: B_simple = 21 examples.
D_IN, SIGMA = 10, 1.0
DELTA = np.eye(D_IN)[0]
B_SIMPLE = (D_IN * (1.0 + SIGMA**2) + 1.0) / 1.0


def per_example_grads(rng: np.random.Generator, n: int) -> np.ndarray:
    X = rng.standard_normal((n, D_IN))
    residual = X @ DELTA - SIGMA * rng.standard_normal(n)
    return X * residual[:, None]  # (n, d)


def test_unbiased_estimates_invert_the_expected_norms_exactly():
    # |G|² = 2, tr(Σ) = 16: E|G_4|² = 2 + 16/4 = 6, E|G_16|² = 2 + 16/16 = 3.
    G2, S = unbiased_estimates(6.0, 4, 3.0, 16)
    assert G2 == pytest.approx(2.0, abs=1e-14)
    assert S == pytest.approx(16.0, abs=1e-14)


def test_unbiased_estimates_reject_unordered_batches():
    with pytest.raises(NoiseScaleError, match="b_small"):
        unbiased_estimates(1.0, 64, 1.0, 8)


def test_ema_is_bias_corrected_before_the_ratio():
    ns = NoiseScale(decay=0.9)
    assert ns.b_simple is None
    # First measurement: G2 = 2, S = 16; the corrected EMA equals it exactly.
    assert ns.update(6.0, 4, 3.0, 16) == pytest.approx(8.0, abs=1e-12)
    # Second measurement: |G_4|² = 5, |G_16|² = 2 → G2 = (32 − 20)/12 = 1, S = 3/(3/16) = 16.
    b = ns.update(5.0, 4, 2.0, 16)
    G2 = (0.9 * 0.1 * 2.0 + 0.1 * 1.0) / (1 - 0.81)
    S = (0.9 * 0.1 * 16.0 + 0.1 * 16.0) / (1 - 0.81)
    assert ns.G2 == pytest.approx(G2, abs=1e-12)
    assert ns.S == pytest.approx(S, abs=1e-12)
    assert b == pytest.approx(S / G2, abs=1e-12)  # ratio of EMAs, not EMA of ratios (which would be 12)


def test_non_positive_G2_gives_none_and_non_finite_input_is_skipped():
    ns = NoiseScale(decay=0.5)
    assert ns.update(3.0, 4, 0.5, 16) is None  # G2 = (8 − 12)/12 < 0: undefined
    assert ns.update(math.inf, 4, 1.0, 16) is None
    assert ns.skipped == 1 and ns.count == 1


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    a = NoiseScale(decay=0.8)
    for _ in range(5):
        a.update(*rng.uniform(2, 3, 1), 8, *rng.uniform(1, 1.5, 1), 64)
    b = NoiseScale(decay=0.8)
    b.load_state_dict(a.state_dict())
    assert b.update(2.5, 8, 1.2, 64) == a.update(2.5, 8, 1.2, 64)
    with pytest.raises(NoiseScaleError, match="decay"):
        NoiseScale(decay=0.9).load_state_dict(a.state_dict())


def test_estimator_recovers_analytic_b_simple_from_minibatch_norms():
    rng = np.random.default_rng(0)
    ns = NoiseScale(decay=0.9995)
    for _ in range(4000):
        g = per_example_grads(rng, 64)
        ns.update(float(np.sum(g[:8].mean(0) ** 2)), 8, float(np.sum(g.mean(0) ** 2)), 64)
    assert ns.b_simple == pytest.approx(B_SIMPLE, rel=0.10)
    # |G|² and tr(Σ) separately: |δ|² = 1 and d(|δ|² + σ²) + |δ|² = 21.
    assert ns.G2 == pytest.approx(1.0, rel=0.10)
    assert ns.S == pytest.approx(21.0, rel=0.10)


def test_grad_sq_norm_matches_the_sum_of_squares_in_float32():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5)),
              torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16)), torch.nn.Parameter(torch.zeros(7))]
    for p in params[:3]:
        p.grad = torch.randn_like(p)
    expected = sum(float(p.grad.double().square().sum()) for p in params[:3])
    assert grad_sq_norm(params) == pytest.approx(expected, rel=1e-6)
    assert grad_sq_norm([torch.nn.Parameter(torch.zeros(2))]) == 0.0
