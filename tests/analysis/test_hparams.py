"""Optimal lr and batch-size laws recover known Step-Law and DeepSeek-form optima from synthetic landscapes."""

import json

import numpy as np
import polars as pl
import pytest

from analysis.laws.hparams import (DEEPSEEK_BATCH, DEEPSEEK_LR, STEP_LAW_BATCH, STEP_LAW_LR, fit_hparams,
                                   landscape_cells, predict_hparams)
from analysis.validate import PointsError

K_LR, K_B, K_X = 0.010, 0.006, 0.004  # loss curvature in (ln lr)², (ln B)², ln lr·ln B: positive definite


def landscape(optimum, Ns=(2e6, 6e6, 2e7), Ds=(2e8, 6e8, 2e9), noise=0.0, seed=0):
    """Runs on a 7 x 6 (lr, B) grid per (N, D) cell; loss = L0 + K_LR·dx² + K_B·dy² + K_X·dx·dy, where
    dx = ln(lr/lr*), dy = ln(B/B*) and (lr*, B*) = optimum(N, D). Grids are offset so optima fall between points."""
    rng = np.random.default_rng(seed)
    rows = []
    for N in Ns:
        for D in Ds:
            lr_star, B_star = optimum(N, D)
            L0 = 2.0 + 20 * N ** -0.3 + 30 * D ** -0.28
            lr_grid = lr_star * 2.0 ** (np.arange(-3, 4) + rng.uniform(-0.5, 0.5))
            B_grid = B_star * 2.0 ** (np.arange(-2.5, 3.0) + rng.uniform(-0.5, 0.5))
            for lr in lr_grid:
                for B in B_grid:
                    dx, dy = np.log(lr / lr_star), np.log(B / B_star)
                    loss = L0 + K_LR * dx * dx + K_B * dy * dy + K_X * dx * dy + noise * rng.standard_normal()
                    rows.append({"N": N, "D": D, "lr": lr, "B": B, "loss": loss})
    return pl.DataFrame(rows)


def step_law(N, D):
    c, a, b = STEP_LAW_LR
    cb, g = STEP_LAW_BATCH
    return c * N ** a * D ** b, cb * D ** g


def test_landscape_cells_find_each_optimum():
    cells = landscape_cells(landscape(step_law))
    assert cells.height == 9
    assert cells["convex"].all() and (cells["source"] == "quadratic").all()
    lr_true, B_true = step_law(cells["N"].to_numpy(), cells["D"].to_numpy())
    np.testing.assert_allclose(cells["lr_convex"].to_numpy(), lr_true, rtol=1e-6)
    np.testing.assert_allclose(cells["B_convex"].to_numpy(), B_true, rtol=1e-6)
    # plateau: configs within 0.25% of the best; its geometric mean lies near the optimum (grid step is 2x)
    assert (cells["n_plateau"] >= 2).all()
    assert np.abs(np.log(cells["lr_plateau"].to_numpy() / lr_true)).max() < np.log(2.0)
    assert np.abs(np.log(cells["B_plateau"].to_numpy() / B_true)).max() < np.log(2.0)
    assert (cells["lr_plateau_min"] <= cells["lr_plateau"]).all()
    assert (cells["lr_plateau"] <= cells["lr_plateau_max"]).all()


def test_non_convex_cell_falls_back_to_best_observed():
    df = landscape(step_law, Ns=(2e6,), Ds=(2e8,))
    flipped = df.with_columns(loss=4.0 - pl.col("loss"))  # a dome: no minimum
    row = landscape_cells(flipped).row(0, named=True)
    assert not row["convex"] and row["source"] == "best_observed"
    assert row["lr_convex"] == row["lr_best"] and row["B_convex"] == row["B_best"]


def test_convex_method_recovers_step_law_exponents_with_intervals():
    res = fit_hparams(landscape(step_law, noise=2e-4, seed=3), method="convex", bootstrap=200, seed=0)
    assert res.method == "convex"
    c, a, b = STEP_LAW_LR
    cb, g = STEP_LAW_BATCH
    p = res.lr.params
    assert p["exp_N"] == pytest.approx(a, abs=0.03) and p["exp_D"] == pytest.approx(b, abs=0.03)
    assert res.batch.params["exp_D"] == pytest.approx(g, abs=0.03)
    for name, truth in (("exp_N", a), ("exp_D", b)):
        lo, hi = res.lr.ci95[name]
        assert lo <= truth <= hi
    lo, hi = res.batch.ci95["exp_D"]
    assert lo <= g <= hi
    pred = predict_hparams(res, N=1e8, D=5e9)
    lr_true, B_true = step_law(1e8, 5e9)
    assert pred.form == "step"
    assert pred.lr == pytest.approx(lr_true, rel=0.15) and pred.B == pytest.approx(B_true, rel=0.15)
    assert pred.lr_ci95[0] <= pred.lr <= pred.lr_ci95[1]
    assert pred.B_ci95[0] <= pred.B <= pred.B_ci95[1]


def test_auto_picks_the_method_with_lower_held_out_regret_and_plateau_is_close():
    res = fit_hparams(landscape(step_law, noise=1e-3, seed=1), bootstrap=50)
    loo = {r["method"]: r for r in res.loo.to_dicts()}
    assert set(loo) == {"convex", "plateau", "joint"} and all(r["n_cells"] == 9 for r in loo.values())
    better = min(loo, key=lambda m: (loo[m]["mean_regret"], ["convex", "plateau", "joint"].index(m)))
    assert res.method == better
    assert all(0 <= r["mean_regret"] < 0.01 for r in loo.values())
    plateau = fit_hparams(landscape(step_law), method="plateau", bootstrap=20)
    assert plateau.lr.params["exp_N"] == pytest.approx(STEP_LAW_LR[1], abs=0.08)
    assert plateau.batch.params["exp_D"] == pytest.approx(STEP_LAW_BATCH[1], abs=0.08)
    np.testing.assert_allclose(plateau.cells["lr_opt"].to_numpy(), plateau.cells["lr_plateau"].to_numpy())


def test_deepseek_form_recovered_and_predicted_from_C():
    def deepseek(N, D):
        C = 6 * N * D
        return DEEPSEEK_LR[0] * C ** DEEPSEEK_LR[1], DEEPSEEK_BATCH[0] * C ** DEEPSEEK_BATCH[1]

    res = fit_hparams(landscape(deepseek), method="convex", bootstrap=50)
    assert res.deepseek_lr.params["exp_C"] == pytest.approx(DEEPSEEK_LR[1], abs=1e-6)
    assert res.deepseek_lr.params["coef"] == pytest.approx(DEEPSEEK_LR[0], rel=1e-4)
    assert res.deepseek_batch.params["exp_C"] == pytest.approx(DEEPSEEK_BATCH[1], abs=1e-6)
    # DeepSeek's law is the Step form with exp_N = exp_D
    assert res.lr.params["exp_N"] == pytest.approx(DEEPSEEK_LR[1], abs=1e-6)
    pred = predict_hparams(res, C=1e21)
    assert pred.form == "deepseek"
    assert pred.lr == pytest.approx(DEEPSEEK_LR[0] * 1e21 ** DEEPSEEK_LR[1], rel=1e-4)
    assert pred.B == pytest.approx(DEEPSEEK_BATCH[0] * 1e21 ** DEEPSEEK_BATCH[1], rel=1e-4)


def test_to_dict_matches_json_schema():
    res = fit_hparams(landscape(step_law, noise=1e-3), bootstrap=30)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert {"lr", "batch", "cells", "method", "deepseek"} <= set(d)
    assert set(d["lr"]) == {"coef", "exp_N", "exp_D", "ci95"}
    assert set(d["lr"]["ci95"]) == {"coef", "exp_N", "exp_D"} and len(d["lr"]["ci95"]["exp_N"]) == 2
    assert set(d["batch"]) == {"coef", "exp_D", "ci95"}
    assert set(d["deepseek"]) == {"lr", "batch"} and set(d["deepseek"]["lr"]) == {"coef", "exp_C", "ci95"}
    assert d["method"] in ("convex", "plateau")
    assert len(d["cells"]) == 9 and {"N", "D", "lr_opt", "B_opt", "source"} <= set(d["cells"][0])


def test_bad_input_raises_clear_errors():
    df = landscape(step_law)
    with pytest.raises(PointsError, match="loss"):
        fit_hparams(df.with_columns(loss=pl.when(pl.col("lr") > 0.0).then(None).otherwise(pl.col("loss"))))
    nan = df.with_columns(lr=pl.when(pl.col("B") == pl.col("B").max()).then(float("nan")).otherwise(pl.col("lr")))
    with pytest.raises(PointsError, match="lr"):
        fit_hparams(nan)
    with pytest.raises(PointsError, match="cells"):
        fit_hparams(df.filter(pl.col("N") == 2e6))  # one N: exp_N cannot be determined
    with pytest.raises(PointsError, match="cells"):
        fit_hparams(df.filter((pl.col("N") < 1e7) & (pl.col("D") < 1e9)).head(84))
    with pytest.raises(ValueError, match="method"):
        fit_hparams(df, method="grid")
    res = fit_hparams(df, bootstrap=10)
    with pytest.raises(ValueError, match="N and D"):
        predict_hparams(res, N=1e8)
