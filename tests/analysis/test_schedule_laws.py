"""Schedule laws: the grouped decay term against the exact sum, analytic gradients, recovery of known parameters
of each law from noisy curves, prediction of a schedule left out of the fit, and every bad input."""

import numpy as np
import polars as pl
import pytest

from analysis.laws import schedule_forms as sf
from analysis.laws.schedule import (Curve, ScheduleFit, ScheduleInputError, curves_from_frame, fit_schedule,
                                    predict_curve, relative_errors, select_runs)
from analysis.laws.schedule_shapes import lr_sequence

STEPS, WARMUP = 2000, 40
PEAK = 3e-4 * 24000 / STEPS  # the LR area of a 24,000-step run at 3e-4
# Illustrative Multi-Power parameters (curves like a 24,000-step run at peak lr 3e-4), rescaled to this peak so that
# B·η and C·η^(1−γ) (what the curve sees) stay the same.
MP_TRUE = dict(L0=2.5, A=0.6, alpha=0.45, B=400.0 * 3e-4 / PEAK, C=2.0 * (PEAK / 3e-4) ** (0.6 - 1), beta=0.6,
               gamma=0.6)
AN_TRUE = dict(L0=2.5, A=0.6, alpha=0.45, C=0.5 * 3e-4 / PEAK)
FIT_SHAPES = ("cosine", "constant", "two-stage")
MEASURED = np.unique(np.linspace(WARMUP, STEPS - 1, 60).astype(int))
EXACT = {sf.MULTI_POWER: sf.multi_power_exact, sf.ANNEALING: sf.annealing_exact}


def _curves(form: str, params: dict, noise: float, shapes=FIT_SHAPES, seed: int = 0) -> list[Curve]:
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        lr = lr_sequence(shape, STEPS, PEAK, WARMUP)
        loss = EXACT[form](params, lr, MEASURED) * (1 + noise * rng.standard_normal(MEASURED.size))
        out.append(Curve(shape, lr, MEASURED, loss))
    return out


@pytest.fixture(scope="module")
def mp_fit():
    return fit_schedule(_curves(sf.MULTI_POWER, MP_TRUE, 1e-4), sf.MULTI_POWER, bootstrap=20, n_starts=64)


def test_grouped_decay_term_matches_the_exact_sum():
    lr = lr_sequence("cosine", 6000, 3e-4, 100)
    steps = np.unique(np.linspace(0, 5999, 80).astype(int))
    exact = sf.multi_power_exact({**MP_TRUE, "B": 400.0, "C": 2.0}, lr, steps)
    fit = ScheduleFit.of(sf.MULTI_POWER, {**MP_TRUE, "B": 400.0, "C": 2.0}, lr_ref=3e-4)
    assert np.abs(predict_curve(fit, lr, steps) / exact - 1).max() < 1e-6
    two = lr_sequence("two-stage", 6000, 3e-4, 100)  # one decay step: the grouping is exact
    np.testing.assert_allclose(predict_curve(fit, two, steps), sf.multi_power_exact(fit.params, two, steps),
                               rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.6, 1.2])
def test_a_schedule_ending_at_lr_zero_predicts_the_exact_sum(gamma):
    # lab's WSD to min_lr_ratio 0 uses lr 0 on its last step: that drop has no lr area after it, so it has realised
    # nothing yet (G(0) = 0) whatever gamma; the grouped sum once turned 0^(-gamma)·0 into G = 1 for gamma > 1
    lr = lr_sequence("wsd", 3000, 3e-4, 50, final_ratio=0.0)
    assert lr[-1] == 0.0
    params = {**MP_TRUE, "B": 400.0, "C": 2.0, "gamma": gamma}
    fit = ScheduleFit.of(sf.MULTI_POWER, params, lr_ref=3e-4)
    steps = np.array([100, 2400, 2998, 2999])
    predicted = predict_curve(fit, lr, steps)
    assert np.isfinite(predicted).all()
    np.testing.assert_allclose(predicted, sf.multi_power_exact(params, lr, steps), rtol=1e-6)


@pytest.mark.parametrize("form", sf.FORMS)
def test_gradients_match_finite_differences(form):
    curves = _curves(form, MP_TRUE if form == sf.MULTI_POWER else AN_TRUE, 0.0)
    from analysis.laws.schedule import _inputs

    x = _inputs(curves, PEAK, sf.ANNEALING_MOMENTUM, form == sf.MULTI_POWER, sf.QUADRATURE_WIDTH)
    predict = sf.multi_power_log_predict if form == sf.MULTI_POWER else sf.annealing_log_predict
    names = sf.MULTI_POWER_PARAMS if form == sf.MULTI_POWER else sf.ANNEALING_PARAMS
    true = MP_TRUE if form == sf.MULTI_POWER else AN_TRUE
    theta = sf.from_params(form, np.array([true[n] for n in names]), PEAK)[None, :]
    np.testing.assert_allclose(sf.to_params(form, theta, PEAK)[0], [true[n] for n in names], rtol=1e-12)
    pred, vjp = predict(theta, x)
    w = np.random.default_rng(1).standard_normal(pred.shape)
    for j in range(theta.shape[1]):
        e = np.zeros_like(theta)
        e[0, j] = 1e-6
        numeric = ((w * predict(theta + e, x)[0]).sum() - (w * predict(theta - e, x)[0]).sum()) / 2e-6
        assert vjp(w)[0, j] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_multi_power_recovers_known_parameters(mp_fit):
    err = {k: abs(mp_fit.params[k] / v - 1) for k, v in MP_TRUE.items()}
    assert max(err["L0"], err["A"], err["alpha"]) < 0.01, err
    assert max(err["B"], err["beta"], err["gamma"]) < 0.1, err  # the decay term's shape is less determined
    assert err["C"] < 0.3, err
    assert set(mp_fit.run_errors) == set(FIT_SHAPES)
    assert all(mean < 3e-4 and worst < 1e-3 for mean, worst in mp_fit.run_errors.values())
    lo, hi = mp_fit.ci95["alpha"]
    assert lo <= mp_fit.params["alpha"] <= hi and mp_fit.n_resamples == 20


def test_annealing_recovers_known_parameters():
    fit = fit_schedule(_curves(sf.ANNEALING, AN_TRUE, 1e-4), sf.ANNEALING, bootstrap=20, n_starts=64)
    for k, v in AN_TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=0.01), k


@pytest.mark.parametrize("form", sf.FORMS)
def test_fit_on_three_schedules_predicts_wsd(form, mp_fit):
    true = MP_TRUE if form == sf.MULTI_POWER else AN_TRUE
    fit = mp_fit if form == sf.MULTI_POWER else fit_schedule(_curves(form, true, 1e-3), form, 0, n_starts=64)
    lr = lr_sequence("wsd", STEPS, PEAK, WARMUP)
    mean, worst = relative_errors(predict_curve(fit, lr, MEASURED), EXACT[form](true, lr, MEASURED))
    assert mean < 5e-4 and worst < 2e-3, (mean, worst)
    longer = lr_sequence("wsd", 2 * STEPS, PEAK, WARMUP)  # any length: a run twice as long
    end = np.array([2 * STEPS - 1])
    assert predict_curve(fit, longer, end)[0] == pytest.approx(EXACT[form](true, longer, end)[0], rel=2e-3)


def _table(**changes) -> pl.DataFrame:
    rows = []
    for run, shape in (("a", "cosine"), ("b", "constant")):
        lr = lr_sequence(shape, 50, 1e-3, 5)
        for step in range(50):
            rows.append({"run_id": run, "step": step, "lr": lr[step], "loss": 3.0 - step / 100 if step % 10 == 9
                         else None})
    df = pl.DataFrame(rows)
    for edit in changes.values():
        df = edit(df)
    return df


def test_a_valid_table_gives_one_curve_per_run():
    curves = curves_from_frame(_table())
    assert list(curves) == ["a", "b"]
    assert curves["a"].lr.size == 50 and curves["a"].steps.tolist() == [9, 19, 29, 39, 49]
    assert [c.run_id for c in select_runs(curves, ["b", "a"])] == ["b", "a"]


@pytest.mark.parametrize("edit, message", [
    (lambda df: df.drop("lr"), "lacks columns ['lr']"),
    (lambda df: pl.concat([df[:3], df[4:5], df[3:4], df[5:]]), "steps are not increasing (step 3 follows step 4)"),
    (lambda df: df.filter(pl.col("step") != 7), "no lr at step 7"),
    (lambda df: df.with_columns(lr=pl.when(pl.col("step") == 12).then(None).otherwise(pl.col("lr"))),
     "no lr at step 12"),
    (lambda df: df.with_columns(loss=pl.when(pl.col("run_id") == "b").then(None).otherwise(pl.col("loss"))),
     "run 'b' has no loss on any step"),
    (lambda df: df.with_columns(loss=pl.when(pl.col("step") == 9).then(-1.0).otherwise(pl.col("loss"))),
     "losses are <= 0"),
    (lambda df: df.with_columns(lr=pl.lit(0.0)), "lr must be finite and >= 0 with some step > 0"),
    (lambda df: df.clear(), "the table has no rows"),
])
def test_bad_tables_give_one_clear_error(edit, message):
    with pytest.raises(ScheduleInputError) as err:
        curves_from_frame(edit(_table()))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_runs_and_forms_are_refused():
    curves = curves_from_frame(_table())
    with pytest.raises(ScheduleInputError, match=r"unknown run ids \['c'\]; the input has runs \['a', 'b'\]"):
        select_runs(curves, ["a", "c"])
    with pytest.raises(ScheduleInputError, match="run ids repeat"):
        select_runs(curves, ["a", "a"])
    with pytest.raises(ScheduleInputError, match="unknown schedule law 'chinchilla'"):
        fit_schedule(list(curves.values()), "chinchilla")
    with pytest.raises(ScheduleInputError, match="steps must lie in"):
        predict_curve(ScheduleFit.of(sf.ANNEALING, AN_TRUE, PEAK), np.ones(5), [5])
