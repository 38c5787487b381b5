"""The joint landscape fit recovers known optimum laws from synthetic lr x B landscapes, noisy and with holes."""

import json

import numpy as np
import polars as pl
import pytest

from analysis import cli
from analysis.laws.hparams import STEP_LAW_BATCH, STEP_LAW_LR, fit_hparams, predict_hparams
from analysis.laws.hparams_joint import JointFitError, fit_joint, select_near

NS, DS = (2e6, 6e6, 2e7, 6e7), (2e8, 6e8, 2e9)


def step_law(N, D):
    return STEP_LAW_LR[0] * N ** STEP_LAW_LR[1] * D ** STEP_LAW_LR[2], STEP_LAW_BATCH[0] * D ** STEP_LAW_BATCH[1]


def landscape(noise=0.0, seed=0, drop_corners=False, cliff=False, steeper_above=1.0):
    """7 x 6 grid per cell (2x steps, offset at random); relative excess 0.012·dx² + 0.006·dy² + 0.004·dx·dy,
    sharper at larger N (curvature ∝ (N/2e6)^0.1). drop_corners: each cell loses one corner of its grid (the
    3 configs nearest it, a different corner per cell). cliff: learning rates 4x above the optimum diverge to a
    loss 1.5x higher (outside the near set, which must keep them out of the fit). steeper_above: ln lr offsets above
    the optimum count this many times (the bowl rises faster towards divergence)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, (N, D) in enumerate((N, D) for N in NS for D in DS):
        lr_star, B_star = step_law(N, D)
        L0 = 2.0 + 20 * N ** -0.3 + 30 * D ** -0.28
        s = (N / 2e6) ** 0.1
        ix = np.arange(-3, 4) + rng.uniform(-0.5, 0.5)
        iy = np.arange(-2.5, 3.0) + rng.uniform(-0.5, 0.5)
        corner = (k % 4 in (0, 1), k % 2 == 0)  # (high lr?, high B?)
        for i, a in enumerate(ix):
            for j, b in enumerate(iy):
                if drop_corners and abs(i - 6 * corner[0]) + abs(j - 5 * corner[1]) <= 1:
                    continue
                dx, dy = a * np.log(2) * (steeper_above if a > 0 else 1.0), b * np.log(2)
                excess = s * (0.012 * dx * dx + 0.006 * dy * dy + 0.004 * dx * dy)
                loss = L0 * (1.5 if cliff and a >= 2 else 1 + excess) * (1 + noise * rng.standard_normal())
                rows.append({"N": N, "D": D, "lr": lr_star * 2.0 ** a, "B": B_star * 2.0 ** b, "loss": loss})
    return pl.DataFrame(rows)


def law_error(res):
    lr, B = res.lr.params, res.batch.params
    return {"exp_N": lr["exp_N"] - STEP_LAW_LR[1], "exp_D": lr["exp_D"] - STEP_LAW_LR[2],
            "ln coef": np.log(lr["coef"] / STEP_LAW_LR[0]), "B exp_D": B["exp_D"] - STEP_LAW_BATCH[1],
            "B ln coef": np.log(B["coef"] / STEP_LAW_BATCH[0])}


def test_exact_landscape_recovers_the_laws_and_the_curvature_scaling():
    res = fit_hparams(landscape(), method="joint", bootstrap=0)
    err = law_error(res)
    assert all(abs(v) < 0.01 for k, v in err.items() if "coef" not in k), err
    assert abs(err["ln coef"]) < 0.1 and abs(err["B ln coef"]) < 0.2, err
    assert res.method == "joint" and {"lr_joint", "B_joint"} <= set(res.cells.columns)
    lr_true, B_true = step_law(res.cells["N"].to_numpy(), res.cells["D"].to_numpy())
    np.testing.assert_allclose(res.cells["lr_opt"].to_numpy(), lr_true, rtol=0.02)
    np.testing.assert_allclose(res.cells["B_opt"].to_numpy(), B_true, rtol=0.02)


@pytest.mark.parametrize("drop_corners", [False, True])
def test_noisy_landscape_recovers_the_laws_within_their_intervals(drop_corners):
    df = landscape(noise=1e-3, seed=1, drop_corners=drop_corners)
    assert df.height == 12 * (42 - 3 * drop_corners)
    res = fit_hparams(df, method="joint", bootstrap=100, seed=0)
    err = law_error(res)
    assert abs(err["exp_N"]) < 0.05 and abs(err["exp_D"]) < 0.06 and abs(err["B exp_D"]) < 0.08, err
    for law, truth in ((res.lr, dict(zip(("exp_N", "exp_D"), STEP_LAW_LR[1:]))),
                       (res.batch, {"exp_D": STEP_LAW_BATCH[1]})):
        for name, value in truth.items():
            lo, hi = law.ci95[name]
            assert lo < law.params[name] < hi and hi - lo < 0.3
            assert lo - 0.02 < value < hi + 0.02, (name, value, lo, hi)
    pred = predict_hparams(res, N=1e8, D=1e10)
    lr_true, B_true = step_law(1e8, 1e10)
    assert pred.lr_ci95[0] < pred.lr < pred.lr_ci95[1]
    assert abs(np.log(pred.lr / lr_true)) < 0.3 and abs(np.log(pred.B / B_true)) < 0.4


def test_bowl_steeper_above_the_optimal_lr_is_recovered_with_its_vertex():
    res = fit_hparams(landscape(steeper_above=2.0), method="joint", bootstrap=0, near=0.02)
    err = law_error(res)
    assert all(abs(v) < 0.01 for k, v in err.items() if "coef" not in k), err
    assert abs(err["ln coef"]) < 0.05, err
    land = select_near([(N, D, np.log(g["lr"].to_numpy()), np.log(g["B"].to_numpy()), g["loss"].to_numpy())
                        for (N, D), g in landscape(steeper_above=2.0).group_by(["N", "D"], maintain_order=True)],
                       near=0.02)
    assert fit_joint(land).theta[10] == pytest.approx(np.log(2.0), abs=0.05)  # g: e^g = 2


def test_cliff_of_divergent_learning_rates_stays_out_of_the_fit():
    res = fit_hparams(landscape(cliff=True), method="joint", bootstrap=0)
    err = law_error(res)
    assert all(abs(v) < 0.02 for k, v in err.items() if "coef" not in k), err


def test_auto_compares_three_methods_and_joint_is_not_worse_than_the_per_cell_recipes():
    res = fit_hparams(landscape(noise=1e-3, seed=2, drop_corners=True), bootstrap=20)
    loo = {r["method"]: r for r in res.loo.to_dicts()}
    assert set(loo) == {"convex", "plateau", "joint"} and all(r["n_cells"] == 12 for r in loo.values())
    assert res.method == min(loo, key=lambda m: loo[m]["mean_regret"])
    assert loo["joint"]["mean_regret"] <= min(loo["convex"]["mean_regret"], loo["plateau"]["mean_regret"]) * 1.05


def test_too_few_cells_or_configs_is_one_clear_error():
    df = landscape().filter(pl.col("N") == NS[0])
    cells = [(N, D, np.log(g["lr"].to_numpy()), np.log(g["B"].to_numpy()), g["loss"].to_numpy())
             for (N, D), g in df.group_by(["N", "D"], maintain_order=True)]
    with pytest.raises(JointFitError, match="distinct N"):
        fit_joint(select_near(cells))
    with pytest.raises(ValueError, match="near"):
        select_near(cells, near=1.5)


def test_lab_fit_hparams_method_joint_on_a_csv(tmp_path, capsys):
    table, out = tmp_path / "landscape.csv", tmp_path / "hp.json"
    landscape(noise=5e-4, seed=4).write_csv(table)
    code = cli.main(["hparams", "--input", str(table), "--method", "joint", "--bootstrap", "50", "--target-N",
                     "1e8", "--target-D", "1e10", "--near", "0.01", "--out", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0
    fit = json.loads(out.read_text())
    assert fit["method"] == "joint" and {r["method"] for r in fit["loo"]} == {"convex", "plateau", "joint"}
    assert "joint surface" in stdout and "leave-one-cell-out" in stdout
    lr_true, B_true = step_law(1e8, 1e10)
    assert fit["prediction"]["lr"] == pytest.approx(lr_true, rel=0.3)
    assert fit["prediction"]["B"] == pytest.approx(B_true, rel=0.4)
    assert fit["prediction"]["lr_ci95"][0] < fit["prediction"]["lr"] < fit["prediction"]["lr_ci95"][1]
