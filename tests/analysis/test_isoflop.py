"""Chinchilla approaches 1 and 2 recover known compute-optimal allocations from synthetic runs."""

import json

import numpy as np
import polars as pl
import pytest

from analysis.laws.isoflop import assign_budgets, fit_envelope, fit_isoflop, predict_optimal
from analysis.validate import PointsError

# Chinchilla approach-3 law (Hoffmann et al. 2022, approach 3 fit): L = E + A/N^α + B/D^β.
E, A, B_, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
A_TRUE = BETA / (ALPHA + BETA)  # N* ∝ C^(β/(α+β)) (Hoffmann et al. 2022, approach 3)
G_TRUE = (ALPHA * A / (BETA * B_)) ** (1 / (ALPHA + BETA)) * 6.0 ** (-A_TRUE)  # N* = G·C^a with C = 6ND


def chinchilla_loss(N, D):
    return E + A / N ** ALPHA + B_ / D ** BETA


def parabola_runs(G=0.1, a=0.5, noise=0.002, seed=0, budgets=(1e15, 3e15, 1e16, 3e16, 1e17)):
    """Runs whose loss is exactly a parabola in ln N around N* = G·C^a (plus noise), 7 sizes per budget."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        n_star = G * C ** a
        for u in np.linspace(-1.2, 1.2, 7):
            N = n_star * np.exp(u + 0.05 * rng.standard_normal())
            loss = 2.0 + 40 * C ** -0.08 + 0.05 * np.log(N / n_star) ** 2 + noise * rng.standard_normal()
            # realised C drifts by < 1% from the planned budget, as integer step counts make it
            C_run = C * (1 + 0.005 * rng.standard_normal())
            rows.append({"N": N, "D": C_run / (6 * N), "loss": loss})
    return pl.DataFrame(rows)


def test_isoflop_recovers_known_power_law_with_intervals():
    res = fit_isoflop(parabola_runs(), bootstrap=200, seed=1)
    assert res.budgets.height == 5
    assert res.budgets["in_range"].all() and res.budgets["convex"].all()
    assert res.budgets["n_runs"].to_list() == [7] * 5
    a_lo, a_hi = res.N_law.ci95["exp"]
    g_lo, g_hi = res.N_law.ci95["coef"]
    assert a_lo <= 0.5 <= a_hi and a_hi - a_lo < 0.1
    assert g_lo <= 0.1 <= g_hi
    assert res.N_law.params["exp"] == pytest.approx(0.5, abs=0.02)
    # D* = C/(6N*) makes b = 1 − a and G' = 1/(6G) exactly
    assert res.D_law.params["exp"] == pytest.approx(1 - res.N_law.params["exp"], abs=1e-9)
    assert res.D_law.params["coef"] == pytest.approx(1 / (6 * res.N_law.params["coef"]), rel=1e-9)
    # per-budget intervals bracket the truth at most budgets and D_opt follows N_opt
    b = res.budgets
    truth = 0.1 * b["C"].to_numpy() ** 0.5
    inside = (b["N_opt_lo"].to_numpy() <= truth) & (truth <= b["N_opt_hi"].to_numpy())
    assert inside.sum() >= 4
    np.testing.assert_allclose(b["D_opt"].to_numpy(), b["C"].to_numpy() / (6 * b["N_opt"].to_numpy()))


def test_isoflop_on_chinchilla_law_recovers_exponent_and_predicts():
    rows = []
    for C in np.geomspace(1e17, 1e21, 5):
        n_star = G_TRUE * C ** A_TRUE
        for N in n_star * np.geomspace(0.3, 3.0, 9):
            rows.append({"N": N, "C": C, "budget": C, "loss": chinchilla_loss(N, C / (6 * N))})
    res = fit_isoflop(pl.DataFrame(rows), bootstrap=50)
    # a parabola in ln N is biased by the same factor at every budget (the profile has one shape in ln(N/N*)),
    # so the exponent is recovered closely and G within a few percent
    assert res.N_law.params["exp"] == pytest.approx(A_TRUE, abs=0.005)
    assert res.N_law.params["coef"] == pytest.approx(G_TRUE, rel=0.15)
    alloc = predict_optimal(res, 1e22)
    n_true = G_TRUE * 1e22 ** A_TRUE
    assert alloc.N == pytest.approx(n_true, rel=0.1)
    assert alloc.D == pytest.approx(1e22 / (6 * alloc.N))
    assert alloc.tokens_per_param == pytest.approx(alloc.D / alloc.N)
    assert alloc.N_ci95[0] <= alloc.N <= alloc.N_ci95[1]
    assert alloc.D_ci95[0] <= alloc.D <= alloc.D_ci95[1]
    assert alloc.tokens_per_param_ci95[0] <= alloc.tokens_per_param <= alloc.tokens_per_param_ci95[1]
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["approach"] == "isoflop" and len(d["budgets"]) == 5 and set(d["N_law"]["params"]) == {"coef", "exp"}


def test_budget_grouping_by_relative_tolerance():
    df = pl.DataFrame({"C": [1.0e15, 1.02e15, 0.99e15, 3e15, 3.05e15, 1e16]})
    g = assign_budgets(df, rel_tol=0.05)
    assert g["budget_C"].n_unique() == 3
    assert g["budget_C"][0] == pytest.approx((1.0e15 * 1.02e15 * 0.99e15) ** (1 / 3))


def test_minimum_outside_sampled_range_is_flagged_and_not_fitted():
    df = parabola_runs(noise=0.0)
    # at the largest budget keep only sizes below the optimum: the vertex lies beyond the largest N tried
    C_max = df.with_columns(C=6 * pl.col("N") * pl.col("D"))["C"].max()
    df = df.with_columns(C=6 * pl.col("N") * pl.col("D"))
    n_star = 0.1 * 1e17 ** 0.5
    shifted = df.filter((pl.col("C") < 0.5 * C_max) | (pl.col("N") < 0.9 * n_star))
    extra = pl.DataFrame({"N": n_star * np.exp(np.array([-2.0, -1.6])), "C": [1e17, 1e17]}).with_columns(
        D=pl.col("C") / (6 * pl.col("N")),
        loss=2.0 + 40 * 1e17 ** -0.08 + 0.05 * np.log(pl.col("N") / n_star) ** 2)
    res = fit_isoflop(pl.concat([shifted, extra.select(shifted.columns)]), bootstrap=20)
    last = res.budgets.sort("C")[-1]
    assert not last["in_range"][0]
    assert res.N_law.n_points == 4


def test_envelope_recovers_chinchilla_exponent():
    rows = []
    for i, N in enumerate(np.geomspace(1e6, 1e9, 16)):
        for D in np.geomspace(1e7, 1e12, 60):
            rows.append({"run_id": f"r{i}", "N": N, "tokens": D, "loss": chinchilla_loss(N, D)})
    res = fit_envelope(pl.DataFrame(rows), bootstrap=100)
    assert res.approach == "envelope"
    lo, hi = res.N_law.ci95["exp"]
    assert res.N_law.params["exp"] == pytest.approx(A_TRUE, abs=0.03)
    assert lo - 0.02 <= A_TRUE <= hi + 0.02
    assert not res.budgets["in_range"].all()  # the smallest C levels are won by the smallest model
    assert res.D_law.params["exp"] == pytest.approx(1 - res.N_law.params["exp"])


def test_bad_input_raises_clear_errors():
    df = parabola_runs()
    with pytest.raises(PointsError, match="loss"):
        fit_isoflop(df.with_columns(loss=pl.when(pl.col("N") > 0).then(float("nan")).otherwise(0.0)))
    with pytest.raises(PointsError, match="at least 3"):
        fit_isoflop(df.head(14), bootstrap=10)  # two budgets only
    with pytest.raises(PointsError, match="missing"):
        fit_isoflop(df.drop("D"))
    with pytest.raises(ValueError, match="positive"):
        predict_optimal(fit_isoflop(df, bootstrap=10), -1.0)
