"""Critical batch size: branch-measured CBS curve, batch warmup plan, and the steps/tokens trade-off."""

import json

import numpy as np
import polars as pl
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from analysis.laws.cbs import (BatchWarmupPlan, fit_cbs_curve, fit_tradeoff, local_cbs, propose_batch_warmup,
                               steps_to_target)
from analysis.validate import PointsError
from lab.schedules import BatchSchedule, batch_sequences

B_MAX, D0, K = 2.0 ** 20, 2e9, 0.7  # true CBS(D) = B_max·(1 − exp(−(D/D0)^k)), tokens
EPS = 0.01


def true_cbs(D):
    return B_MAX * -np.expm1(-(np.asarray(D) / D0) ** K)


CHECKPOINTS = np.geomspace(1e7, 2e10, 12)


def branches(checkpoints=CHECKPOINTS, p=1.0, with_ref_column=True):
    """Branch losses with excess L_B/L_ref − 1 = ε·(B/CBS(D))^p: exactly ε at the true CBS."""
    rows = []
    for D in checkpoints:
        ref = 3.0 + 10 * D ** -0.1
        for B in 2.0 ** np.arange(12, 21.5, 0.5):
            row = {"checkpoint_tokens": D, "B": B, "loss": ref * (1 + EPS * (B / true_cbs(D)) ** p)}
            rows.append({**row, "ref_loss": ref} if with_ref_column else row)
    return pl.DataFrame(rows)


def test_local_cbs_brackets_and_interpolates_the_true_cbs():
    df = branches()
    grid = local_cbs(df, tolerance=EPS)
    truth = true_cbs(grid["checkpoint_tokens"].to_numpy())
    assert (grid["censored"] == "none").all() and grid["monotone"].all()
    cbs, b_fail = grid["cbs"].to_numpy(), grid["B_fail"].to_numpy()
    assert np.all(cbs <= truth) and np.all(truth < b_fail)  # the largest passing grid B, next one fails
    np.testing.assert_allclose(b_fail / cbs, np.sqrt(2.0))
    interp = local_cbs(df, tolerance=EPS, interpolate=True)["cbs"].to_numpy()
    np.testing.assert_allclose(interp, truth, rtol=0.03)


def test_reference_from_a_reference_batch_row_and_censoring():
    df = branches(with_ref_column=False)
    ref_B = 2.0 ** 12
    # the reference continuation is the row with B == ref_B; give it the reference loss exactly
    D = df["checkpoint_tokens"]
    df = df.with_columns(loss=pl.when(pl.col("B") == ref_B).then(3.0 + 10 * D ** -0.1).otherwise(pl.col("loss")))
    a = local_cbs(df, tolerance=EPS, reference_B=ref_B)
    b = local_cbs(branches(), tolerance=EPS)
    np.testing.assert_allclose(a["cbs"].to_numpy(), b["cbs"].to_numpy())
    # every branch passes at a loose tolerance: the CBS is only a lower bound
    loose = local_cbs(df, tolerance=0.9, reference_B=ref_B)
    assert (loose["censored"] == "above").all() and (loose["cbs"] == 2.0 ** 21).all()
    with pytest.raises(PointsError, match="reference_B"):
        local_cbs(df, reference_B=3.0)


def test_cbs_curve_fit_recovers_the_rise_then_plateau():
    local = local_cbs(branches(), tolerance=EPS, interpolate=True)
    fit = fit_cbs_curve(local, bootstrap=100, seed=0)
    assert fit.best == "saturating"
    p = fit.saturating.params
    assert p["B_max"] == pytest.approx(B_MAX, rel=0.1)
    assert p["D0"] == pytest.approx(D0, rel=0.2)
    assert p["k"] == pytest.approx(K, abs=0.1)
    for name in ("B_max", "D0", "k"):
        lo, hi = fit.saturating.ci95[name]
        assert lo <= p[name] <= hi
    D = np.geomspace(1e8, 1e10, 5)
    np.testing.assert_allclose(fit.predict(D), true_cbs(D), rtol=0.05)
    assert fit.power.params["exp"] > 0  # the power law is the worse but still rising description
    json.dumps(fit.to_dict(), allow_nan=False)


def test_batch_warmup_doubles_when_cbs_reaches_twice_the_batch_and_runs_in_the_config():
    fit = fit_cbs_curve(local_cbs(branches(), tolerance=EPS, interpolate=True), bootstrap=0)
    seq_len, g = 512, 8
    plan = propose_batch_warmup(fit, total_tokens=2e10, micro_batch_granularity=g, seq_len=seq_len,
                                max_sequences=1024)
    assert isinstance(plan, BatchWarmupPlan) and plan.start_sequences == g
    seqs = [s for _, s in plan.milestones]
    assert seqs == [g * 2 ** (i + 1) for i in range(len(seqs))] and seqs[-1] == 1024
    previous_b, previous_t = g, 0
    for t, s in plan.milestones:
        # the fitted CBS has reached twice the previous batch at the switch, within one step of rounding
        assert fit.predict(t) >= 2 * previous_b * seq_len
        assert fit.predict(t - previous_b * seq_len) < 2 * previous_b * seq_len
        # a whole number of steps of the batch in force since it began (not since token 0)
        assert (t - previous_t) % (previous_b * seq_len) == 0
        previous_b, previous_t = s, t
    overrides = plan.to_overrides()
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    assert parsed["batch.schedule"] == "stepwise"
    schedule = BatchSchedule(name="stepwise", sequences=parsed["batch.sequences"],
                             start_sequences=parsed["batch.start_sequences"],
                             milestones=tuple(tuple(m) for m in parsed["batch.milestones"]), granularity=g)
    assert batch_sequences(0, schedule) == g
    assert batch_sequences(plan.milestones[0][0], schedule) == 2 * g
    # stepping as lab-train does, every milestone is the end of a step: no step straddles a batch change
    ends, tokens = set(), 0
    while tokens < plan.milestones[-1][0]:
        tokens += batch_sequences(tokens, schedule) * seq_len
        ends.add(tokens)
    assert {t for t, _ in plan.milestones} <= ends
    # a plateau below twice the batch: no step, and the overrides fall back to a constant batch
    flat = propose_batch_warmup(fit, 2e10, g, seq_len=1024, max_sequences=4096, start_sequences=1024)
    assert flat.milestones == () and flat.to_overrides() == ["batch.schedule=constant", "batch.sequences=1024"]
    # a short run stops before the next switch
    short = propose_batch_warmup(fit, plan.milestones[1][0], g, seq_len, 1024)
    assert short.milestones == plan.milestones[:1]
    with pytest.raises(ValueError, match="multiple"):
        propose_batch_warmup(fit, 1e9, g, seq_len, 1024, start_sequences=12)


def test_cbs_bad_input():
    df = branches()
    with pytest.raises(PointsError, match="loss"):
        local_cbs(df.with_columns(loss=pl.lit(float("nan"))))
    local = local_cbs(df, tolerance=EPS).head(2)
    with pytest.raises(PointsError, match="need >= 3"):
        fit_cbs_curve(local)


# --- steps/tokens trade-off: S = S_min·(1 + B_crit/B), B_crit = E_min/S_min --------------------------------

def e_min_true(L):
    return 1e7 * (L - 2.0) ** -2  # tokens


def b_crit_true(L):
    return 0.5 * e_min_true(L) ** 0.5  # B_crit = 0.5·D^0.5 with D = E_min


BATCHES = 2.0 ** np.arange(9, 16)


def tradeoff_curves(batches=BATCHES):
    losses = np.linspace(4.0, 2.2, 400)
    rows = []
    for i, B in enumerate(batches):
        S = e_min_true(losses) / b_crit_true(losses) * (1 + b_crit_true(losses) / B)
        rows += [{"run_id": f"B{i}", "B": B, "step": s, "tokens": B * s, "loss": L} for s, L in zip(S, losses)]
    return pl.DataFrame(rows)


def test_tradeoff_recovers_s_min_e_min_and_b_crit_law():
    res = fit_tradeoff(tradeoff_curves(), bootstrap_resamples=100)
    t = res.targets
    L = t["target"].to_numpy()
    assert t.height == 8 and (t["n_runs"] == 7).all()
    np.testing.assert_allclose(t["E_min"].to_numpy(), e_min_true(L), rtol=0.01)
    np.testing.assert_allclose(t["S_min"].to_numpy(), e_min_true(L) / b_crit_true(L), rtol=0.01)
    np.testing.assert_allclose(t["B_crit"].to_numpy(), b_crit_true(L), rtol=0.02)
    # noise-free curves: every resample of runs gives the same fit, so the intervals collapse onto it
    np.testing.assert_allclose(t["B_crit_lo"].to_numpy(), t["B_crit"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(t["B_crit_hi"].to_numpy(), t["B_crit"].to_numpy(), rtol=1e-9)
    assert res.vs_D.params["exp"] == pytest.approx(0.5, abs=0.01)
    assert res.vs_D.params["coef"] == pytest.approx(0.5, rel=0.1)
    json.dumps(res.to_dict(), allow_nan=False)


def test_tradeoff_intervals_cover_the_truth_under_run_to_run_noise():
    """Each run's step counts off by a run-level factor (seed-to-seed spread, 2% sd); over 10 noise draws the
    95% intervals of B_crit cover the truth most of the time (a percentile bootstrap over 9 runs undercovers
    somewhat: ~85% here) and the estimates stay within 15%."""
    clean = tradeoff_curves(batches=2.0 ** np.arange(8, 17))
    run_ids = sorted(clean["run_id"].unique().to_list())
    covered = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        factor = {r: float(np.exp(0.02 * rng.standard_normal())) for r in run_ids}
        curves = clean.with_columns(step=pl.col("step") * pl.col("run_id").replace_strict(factor))
        curves = curves.with_columns(tokens=pl.col("B") * pl.col("step"))
        t = fit_tradeoff(curves, targets=[3.0, 2.6, 2.4], bootstrap_resamples=100, seed=seed).targets
        truth = b_crit_true(t["target"].to_numpy())
        covered += list((t["B_crit_lo"].to_numpy() <= truth) & (truth <= t["B_crit_hi"].to_numpy()))
        np.testing.assert_allclose(t["B_crit"].to_numpy(), truth, rtol=0.15)
    assert np.mean(covered) >= 0.6


def test_steps_to_target_interpolates_and_marks_unreached():
    curves = pl.DataFrame({"run_id": ["a"] * 3, "B": [8.0] * 3, "step": [0.0, 10.0, 20.0], "loss": [4.0, 3.0, 2.5]})
    r = steps_to_target(curves, [3.5, 2.75, 2.0])
    assert r["S"].to_list()[:2] == [5.0, 15.0] and r["E"].to_list()[:2] == [40.0, 120.0]
    assert np.isnan(r["S"][2])


def test_tradeoff_bad_input():
    curves = tradeoff_curves()
    with pytest.raises(PointsError, match="batch sizes"):
        fit_tradeoff(curves.filter(pl.col("B") < 2 ** 11))
    with pytest.raises(PointsError, match="loss"):
        fit_tradeoff(curves.with_columns(loss=pl.when(pl.col("step") > 5).then(float("nan")).otherwise(pl.col("loss"))))
    with pytest.raises(PointsError, match="step"):
        fit_tradeoff(curves.drop("step"))
