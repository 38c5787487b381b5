"""The shared fitting core: Huber objective, batched multi-start L-BFGS-B, bootstrap, FitResult, power laws."""

import json
from functools import partial

import numpy as np
import polars as pl
import pytest
from scipy.optimize import minimize
from scipy.special import huber as scipy_huber

from analysis.batched_lbfgs import batched_lbfgsb
from analysis.fitting import (FitResult, bootstrap, fit_power_law, grid_starts, huber, huber_grad,
                              huber_log_objective, jacobian_condition, latin_hypercube_starts, multistart_lbfgsb,
                              params_at_bound, summarize_draws)
from analysis.laws.loss_forms import CHINCHILLA


def test_huber_matches_scipy_and_its_gradient_is_the_clipped_residual():
    r = np.linspace(-0.01, 0.01, 41)
    np.testing.assert_allclose(huber(r, 1e-3), scipy_huber(1e-3, r), rtol=1e-12, atol=1e-18)
    eps = 1e-9
    numeric = (huber(r + eps, 1e-3) - huber(r - eps, 1e-3)) / (2 * eps)
    np.testing.assert_allclose(huber_grad(r, 1e-3), numeric, atol=1e-9)


def _chinchilla_objective(seed=0, n=60, delta=1e-3):
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7, 10, n)
    D = 10 ** rng.uniform(9, 12, n)
    L = 1.69 + 406.4 / N ** 0.34 + 410.7 / D ** 0.28
    log_y = np.log(L) + rng.normal(0, 0.01, n)
    return huber_log_objective(partial(CHINCHILLA.log_predict, logs=(np.log(N), np.log(D))), log_y, delta)


def test_batched_objective_has_an_analytic_gradient_per_row():
    objective = _chinchilla_objective()
    theta = np.array([[0.5, 6.0, 6.0, 0.3, 0.3], [0.0, 2.0, 9.0, 0.5, 0.2]])
    f, g = objective(theta)
    for row in range(2):
        for j in range(5):
            step = np.zeros_like(theta)
            step[row, j] = 1e-6
            numeric = (objective(theta + step)[0][row] - objective(theta - step)[0][row]) / 2e-6
            assert g[row, j] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_objective_is_the_sum_of_huber_terms_and_weights_count_rows():
    rng = np.random.default_rng(0)
    logs = (rng.uniform(16, 23, 30), rng.uniform(20, 27, 30))
    log_y = rng.uniform(0.5, 1.5, 30)
    predict = partial(CHINCHILLA.log_predict, logs=logs)
    theta = np.array([[0.5, 6.0, 6.0, 0.3, 0.3]])
    plain = huber_log_objective(predict, log_y, 1e-3)(theta)[0][0]
    pred, _ = predict(theta)
    assert plain == pytest.approx(huber(pred[0] - log_y, 1e-3).sum(), rel=1e-12)  # summed, not averaged
    twice = huber_log_objective(predict, log_y, 1e-3, weights=np.full(30, 2.0))(theta)[0][0]
    assert twice == pytest.approx(2 * plain, rel=1e-12)


def test_batched_lbfgsb_respects_bounds_and_matches_scipy():
    centre = np.array([1.0, -2.0, 3.0])

    def quadratic(x):  # f = Σ w (x - c)^2 with an off-diagonal coupling; minimum outside the box in x2
        d = x - centre
        f = (d ** 2 * [1.0, 10.0, 0.1]).sum(axis=1) + 0.5 * d[:, 0] * d[:, 1]
        g = 2 * d * [1.0, 10.0, 0.1]
        g[:, 0] += 0.5 * d[:, 1]
        g[:, 1] += 0.5 * d[:, 0]
        return f, g

    lo, hi = np.array([-5.0, -1.0, -5.0]), np.array([5.0, 5.0, 5.0])
    starts = latin_hypercube_starts(list(zip(lo, hi)), 20, seed=1)
    res = batched_lbfgsb(quadratic, starts, lo, hi, ftol=1e-15, gtol=1e-10)
    ref = minimize(lambda z: tuple(a[0] for a in quadratic(z[None])), starts[0], jac=True, method="L-BFGS-B",
                   bounds=list(zip(lo, hi)), options={"ftol": 1e-15, "gtol": 1e-10})
    assert np.all(res.x >= lo) and np.all(res.x <= hi)
    np.testing.assert_allclose(res.x, np.tile(ref.x, (20, 1)), atol=1e-5)
    assert res.x[0, 1] == pytest.approx(-1.0)  # held on its bound


def test_multistart_matches_an_exhaustive_scipy_loop():
    objective = _chinchilla_objective(seed=3)
    bounds = CHINCHILLA.bounds
    starts = grid_starts([[-1.0, 0.0, 1.0], [0.0, 10.0, 20.0], [0.0, 10.0, 20.0], [0.0, 1.0], [0.0, 1.0]])
    x, f = multistart_lbfgsb(objective, starts, bounds)
    loop = []
    for s in starts:
        res = minimize(lambda z: (float(objective(z[None])[0][0]), objective(z[None])[1][0]), s, jac=True,
                       method="L-BFGS-B", bounds=list(bounds))
        loop.append(res.fun)
    best_loop = min(loop)
    assert f <= best_loop * (1 + 1e-6)
    assert np.isfinite(x).all()


def test_bootstrap_is_reproducible_parallel_or_not_and_marks_failures():
    y = np.arange(20.0)

    def fit(idx):
        if len(set(idx.tolist())) < 12:
            raise ValueError("too few distinct rows")
        return np.array([y[idx].mean(), y[idx].std()])

    serial = bootstrap(fit, 20, n_resamples=40, seed=5, n_jobs=1)
    parallel = bootstrap(fit, 20, n_resamples=40, seed=5, n_jobs=2)
    np.testing.assert_array_equal(np.isnan(serial), np.isnan(parallel))
    np.testing.assert_allclose(serial[~np.isnan(serial)], parallel[~np.isnan(parallel)])
    assert serial.shape == (40, 2)
    failed = np.isnan(serial).any(axis=1)
    assert failed.any() and not failed.all()  # ~13 distinct of 20 on average: some resamples fail


def test_group_bootstrap_resamples_whole_groups():
    groups = np.repeat(["run-a", "run-b", "run-c"], [2, 3, 4])
    seen = []
    bootstrap(lambda idx: seen.append(np.sort(idx)) or np.zeros(1), 9, n_resamples=30, seed=0, groups=groups,
              n_jobs=1)
    members = {g: set(np.flatnonzero(groups == g)) for g in set(groups)}
    for idx in seen:
        counts = np.bincount(idx, minlength=9)
        for rows in members.values():  # every row of a group is drawn the same number of times
            assert len({counts[r] for r in rows}) == 1


def test_summaries_and_bound_flags():
    draws = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [np.nan, 1.0]])
    se, ci = summarize_draws(("a", "b"), draws)
    assert se["a"] == pytest.approx(1.0) and se["b"] == pytest.approx(10.0)
    assert ci["a"] == pytest.approx((1.05, 2.95))
    assert params_at_bound(np.array([0.0, 0.5, 2.0]), [(0, 1), (0, 1), (-np.inf, 2)], ("x", "y", "z")) == ("x", "z")
    assert params_at_bound(np.array([0.5]), [(-np.inf, np.inf)], ("x",)) == ()


def test_jacobian_condition_detects_a_redundant_parameter():
    log_x = np.linspace(0, 3, 10)

    def redundant(theta):  # log y = (a + b) + c·log x: a and b are not separately determined
        return theta[:, 0, None] + theta[:, 1, None] + theta[:, 2, None] * log_x, None

    def identified(theta):
        return theta[:, 0, None] + theta[:, 1, None] * log_x, None

    assert jacobian_condition(redundant, np.array([1.0, 1.0, 0.5])) > 1e8
    assert jacobian_condition(identified, np.array([1.0, 0.5])) < 100


def test_fit_power_law_recovers_coefficients_and_serialises():
    rng = np.random.default_rng(0)
    x = np.logspace(18, 22, 12)
    y = 0.3 * x ** 0.5 * np.exp(rng.normal(0, 0.02, x.size))
    fit = fit_power_law(x, y, n_bootstrap=300, seed=1)
    assert fit.ci95["exp"][0] <= 0.5 <= fit.ci95["exp"][1]
    assert fit.ci95["coef"][0] <= 0.3 <= fit.ci95["coef"][1]
    assert fit.params["exp"] == pytest.approx(0.5, abs=0.01)
    assert fit.predict(1e20) == pytest.approx(fit.params["coef"] * 1e20 ** fit.params["exp"])
    restored = json.loads(json.dumps(fit.to_dict(include_draws=True)))
    assert restored["params"] == fit.params and len(restored["draws"]) == 300
    html = fit._repr_html_()
    assert "coef" in html and "exp" in html and "<table>" in html


def test_fit_power_law_rejects_bad_points():
    with pytest.raises(ValueError, match="'y'.*zero or negative"):
        fit_power_law(np.array([1.0, 2.0, 3.0]), np.array([1.0, -2.0, 3.0]))
    with pytest.raises(ValueError, match="only 2 points"):
        fit_power_law(np.array([1.0, 2.0]), np.array([1.0, 2.0]))


def test_fit_result_flags_bounds_in_html():
    fit = FitResult(form="demo", params={"a": 1.0}, stderr={"a": 0.1}, ci95={"a": (0.8, 1.2)}, objective=0.0,
                    n_points=3, at_bound=("a",))
    assert "at bound" in fit._repr_html_()
    assert json.loads(json.dumps(fit.to_dict()))["at_bound"] == ["a"]
    with pytest.raises(ValueError, match="no predictor"):
        fit.predict(1.0)


def test_check_points_names_column_and_rows():
    from analysis.validate import check_points

    df = pl.DataFrame({"N": [1e6, float("nan"), 3e6], "loss": [3.0, 2.9, 2.8]})
    with pytest.raises(ValueError, match=r"column 'N': 1 of 3 rows are NaN.*rows 2, counting from 1"):
        check_points(df, ["N", "loss"])
    with pytest.raises(ValueError, match="missing"):
        check_points(df, ["D"])
