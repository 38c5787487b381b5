"""Loss laws: recovery of known coefficients, the Besiroglu et al. 2024 refit of the Chinchilla points,
compute-optimal allocation, bad input, bound flags and the extrapolation check."""

import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis.extrapolate import holdout_check
from analysis.fitting import huber_log_objective
from analysis.laws import FORMS, allocation_exponents, compute_optimal, fit_loss, get_form, predict_loss
from analysis.laws.loss import _predict_params

POINTS = Path(__file__).parents[1] / "data" / "chinchilla_points.csv"

# Besiroglu et al. 2024, Table 1 (approach 3 refit of the Chinchilla points, 5 highest-loss points excluded).
BESIROGLU = {"E": 1.8169, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
BESIROGLU_SE = {"E": 0.0257, "A": 124.5, "B": 1293.3, "alpha": 0.0154, "beta": 0.0206}

# Known coefficients for the recovery tests: Hoffmann et al. 2022 (chinchilla, L(N)), Kaplan et al. 2020
# (kaplan), and an identifiable Farseer-shaped surface (data exponent 0.34 → 0.25 as N grows).
TRUE = {
    "chinchilla": dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    "kaplan": dict(Nc=8.8e13, Dc=5.4e13, alpha_N=0.076, alpha_D=0.095),
    "farseer": dict(a1=5.0, b1=-1.4, alpha=-0.2, a2=-0.5, b2=8.0, beta=0.1, a3=20.0, b3=0.53, gamma=-0.3),
    "L(N)": dict(E=1.69, A=406.4, alpha=0.34),
    "L(C)": dict(E=1.69, A=2000.0, alpha=0.15),
}


def synthetic(form: str, sigma: float = 0.003, seed: int = 0, sizes: int = 9) -> pl.DataFrame:
    """Loss of `form` with TRUE coefficients on a grid of N x D, times lognormal noise of `sigma`."""
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(6, 10, sizes), np.logspace(8, 12, sizes)))
    inputs = {"N": N, "D": D, "C": 6 * N * D}
    loss = _predict_params(form, TRUE[form], *(inputs[c] for c in get_form(form).inputs))
    loss = loss * np.exp(np.random.default_rng(seed).normal(0, sigma, loss.size))
    return pl.DataFrame({"N": N, "D": D, "loss": loss})


@pytest.mark.parametrize("form", sorted(TRUE))
def test_every_form_recovers_known_coefficients_within_its_intervals(form):
    if form == "farseer":
        N, D = (a.ravel() for a in np.meshgrid(np.logspace(6, 11, 11), np.logspace(8, 12, 9)))
        loss = _predict_params(form, TRUE[form], N, D) * np.exp(np.random.default_rng(0).normal(0, 0.002, N.size))
        df = pl.DataFrame({"N": N, "D": D, "loss": loss})
    else:
        df = synthetic(form)
    fit = fit_loss(df, form=form, bootstrap=200, seed=1)
    assert fit.at_bound == ()
    assert fit.n_failed_resamples == 0
    for name, true in TRUE[form].items():
        lo, hi = fit.ci95[name]
        assert lo <= true <= hi, f"{form}: {name}={true} outside [{lo}, {hi}] (estimate {fit.params[name]})"
    assert set(fit.params) == set(TRUE[form])
    assert np.abs(fit.residuals).max() < 0.02  # noise is 0.3%: no systematic misfit


@pytest.mark.parametrize("form", sorted(FORMS))
def test_analytic_gradients_match_finite_differences(form):
    law = get_form(form)
    rng = np.random.default_rng(1)
    logs = (np.log(10 ** rng.uniform(6, 10, 25)), np.log(10 ** rng.uniform(8, 12, 25)))
    logs = logs[: len(law.inputs)] if law.inputs != ("C",) else (logs[0] + logs[1] + np.log(6),)
    theta = law.from_params(np.array([list(TRUE[form].values())]))
    log_y = law.log_predict(theta, logs)[0][0] + rng.normal(0, 0.01, 25)
    objective = huber_log_objective(partial(law.log_predict, logs=logs), log_y, 1e-3)
    _, g = objective(theta)
    for j in range(theta.shape[1]):
        h = 1e-6 * max(1.0, abs(theta[0, j]))
        step = np.zeros_like(theta)
        step[0, j] = h
        numeric = (objective(theta + step)[0][0] - objective(theta - step)[0][0]) / (2 * h)
        assert g[0, j] == pytest.approx(numeric, rel=1e-4, abs=1e-8), law.fit_names[j]


def test_chinchilla_points_reproduce_besiroglu_within_one_standard_error():
    fit = fit_loss(pl.read_csv(POINTS), form="chinchilla", bootstrap=0, exclude_top_loss=5)
    assert fit.n_points == 240
    for name, value in BESIROGLU.items():
        assert abs(fit.params[name] - value) <= BESIROGLU_SE[name], (name, fit.params[name])
    assert fit.at_bound == ()
    assert 1 < fit.condition_number < 1e6


def test_chinchilla_points_bootstrap_standard_errors_match_besiroglu():
    start = time.perf_counter()
    fit = fit_loss(pl.read_csv(POINTS), form="chinchilla", bootstrap=1000, exclude_top_loss=5, seed=0)
    elapsed = time.perf_counter() - start
    print(f"1,000-resample bootstrap of the Chinchilla points: {elapsed:.1f} s; SE {fit.stderr}")
    assert fit.n_resamples == 1000 and fit.n_failed_resamples == 0
    assert BESIROGLU_SE["alpha"] / 1.5 <= fit.stderr["alpha"] <= 1.5 * BESIROGLU_SE["alpha"]
    assert BESIROGLU_SE["beta"] / 1.5 <= fit.stderr["beta"] <= 1.5 * BESIROGLU_SE["beta"]
    assert BESIROGLU_SE["E"] / 1.5 <= fit.stderr["E"] <= 1.5 * BESIROGLU_SE["E"]
    lo, hi = fit.ci95["alpha"]
    assert lo < fit.params["alpha"] < hi

    table = compute_optimal(fit, [1e21, 1e24])
    np.testing.assert_allclose(6 * table["N_opt"] * table["D_opt"], table["C"], rtol=1e-10)
    np.testing.assert_allclose(table["tokens_per_param"], table["D_opt"] / table["N_opt"], rtol=1e-12)
    for col in ("N_opt", "D_opt", "tokens_per_param", "loss_opt"):
        assert (table[f"{col}_lo"] < table[col]).all() and (table[col] < table[f"{col}_hi"]).all()
    exponents = allocation_exponents(fit)
    a, a_lo, a_hi = exponents["a"]
    assert a == pytest.approx(fit.params["beta"] / (fit.params["alpha"] + fit.params["beta"]))
    assert a_lo < a < a_hi and a + exponents["b"][0] == pytest.approx(1.0)
    json.dumps(fit.to_dict(include_draws=True))
    assert "alpha" in fit._repr_html_()


def test_batched_and_process_bootstraps_agree_and_groups_resample_runs():
    df = synthetic("L(N)", sizes=6)
    batched = fit_loss(df, form="L(N)", bootstrap=30, seed=2)
    processes = fit_loss(df, form="L(N)", bootstrap=30, seed=2, bootstrap_method="processes", n_jobs=1)
    np.testing.assert_allclose(batched.draws, processes.draws, rtol=1e-4)
    runs = df.with_columns(run_id=(pl.col("N").rank("dense")).cast(pl.Int64))  # one run per model size
    grouped = fit_loss(runs, form="L(N)", bootstrap=30, seed=2, groups="run_id")
    assert grouped.n_resamples == 30 and np.isfinite(grouped.draws).all()
    with pytest.raises(ValueError, match="bootstrap_method"):
        fit_loss(df, form="L(N)", bootstrap_method="threads")


# Farseer's reported parameters map back to the fitted ones only to rounding, and its resamples' optima are flat
# enough that a start 1e-16 away stops ~1e-4 away (as the batched and process bootstraps differ).
@pytest.mark.parametrize("form, rtol", [("chinchilla", 1e-6), ("farseer", 1e-3)])
def test_a_bootstrap_on_a_given_optimum_matches_the_fit_that_searches_for_it(form, rtol):
    df = synthetic(form, sizes=6)
    full = fit_loss(df, form=form, bootstrap=20, seed=1)
    point = fit_loss(df, form=form, bootstrap=0)
    assert point.params == full.params and point.draws.size == 0
    staged = fit_loss(df, form=form, bootstrap=20, seed=1, optimum=point)
    assert staged.params == full.params and staged.objective == full.objective
    np.testing.assert_allclose(staged.draws, full.draws, rtol=rtol)
    with pytest.raises(ValueError, match="not of these"):
        fit_loss(df.head(20), form=form, bootstrap=5, optimum=point)


def test_compute_optimal_is_the_minimum_of_the_law_on_the_budget():
    fit = fit_loss(synthetic("chinchilla"), bootstrap=0)
    C = 1e22
    row = compute_optimal(fit, C).row(0, named=True)
    N = row["N_opt"] * np.array([0.7, 1.0, 1.4])
    loss = predict_loss(fit, N=N, D=C / (6 * N))
    assert np.argmin(loss) == 1
    assert loss[1] == pytest.approx(row["loss_opt"], rel=1e-12)
    assert np.isnan(row["N_opt_lo"]) and np.isnan(row["loss_opt_hi"])  # no bootstrap, no interval


def test_predict_loss_and_result_predict_agree():
    fit = fit_loss(synthetic("L(C)"), form="L(C)", bootstrap=0)
    N, D = np.array([1e8, 1e9]), np.array([1e10, 1e11])
    np.testing.assert_allclose(predict_loss(fit, N=N, D=D), fit.predict(6 * N * D))
    with pytest.raises(ValueError, match="pass"):
        predict_loss(fit_loss(synthetic("chinchilla"), bootstrap=0), N=N)


@pytest.mark.parametrize("bad, message", [
    (float("nan"), r"column 'N': 1 of 81 rows are NaN"),
    (-5.0, r"column 'N': 1 of 81 rows are zero or negative"),
])
def test_bad_points_give_clear_errors(bad, message):
    df = synthetic("chinchilla").with_row_index().with_columns(
        N=pl.when(pl.col("index") == 7).then(bad).otherwise(pl.col("N"))).drop("index")
    with pytest.raises(ValueError, match=message):
        fit_loss(df, bootstrap=0)


def test_too_few_points_name_the_count_and_the_fix():
    with pytest.raises(ValueError, match=r"only 4 points.*at least 6.*5 parameters.*add runs"):
        fit_loss(synthetic("chinchilla").head(4), bootstrap=0)
    with pytest.raises(ValueError, match="exclude fewer"):
        fit_loss(synthetic("chinchilla").head(8), bootstrap=0, exclude_top_loss=5)
    with pytest.raises(ValueError, match="unknown loss form"):
        fit_loss(synthetic("chinchilla"), form="chinchila")


def test_a_true_parameter_outside_the_bounds_is_flagged():
    bounds = list(get_form("chinchilla").bounds)
    bounds[3] = (0.0, 0.2)  # alpha <= 0.2 while the truth is 0.34
    fit = fit_loss(synthetic("chinchilla"), bootstrap=0, bounds=bounds)
    assert "alpha" in fit.at_bound
    assert fit.params["alpha"] == pytest.approx(0.2)
    assert "at bound" in fit._repr_html_()


def test_holdout_check_reports_extrapolation_error():
    df = synthetic("chinchilla", sigma=0.002)
    report = holdout_check(df, "chinchilla", C_threshold=1e20, bootstrap=50, n_jobs=1)
    assert report.n_train + report.n_test == df.height and report.n_test > 5
    assert (report.frame["C"] >= 1e20).all()
    assert report.mean_abs_rel_error < 0.01 and report.max_abs_rel_error < 0.02
    assert report.mean_abs_rel_error == pytest.approx(report.frame["rel_error"].abs().mean())
    assert {"predicted", "predicted_lo", "predicted_hi"} <= set(report.frame.columns)
    json.dumps(report.summary())
    with pytest.raises(ValueError, match="no run has C >="):
        holdout_check(df, "chinchilla", C_threshold=1e40)
