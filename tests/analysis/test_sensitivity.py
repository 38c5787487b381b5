"""Leave-one-out sensitivities of forecasts equal refits done by hand, for the loss, IsoFLOP and hparams fits."""

import json

import numpy as np
import polars as pl
import pytest

from analysis import cli
from analysis.laws.hparams import fit_hparams, predict_hparams
from analysis.laws.isoflop import fit_isoflop, predict_optimal
from analysis.laws.loss import compute_optimal, fit_loss
from analysis.sensitivity import (group_labels, hparams_sensitivity, isoflop_sensitivity, leave_one_out,
                                  loss_sensitivity)
from test_hparams import landscape, step_law
from test_isoflop import chinchilla_loss, parabola_runs


def summary(sens, quantity):
    return sens.summary.filter(pl.col("quantity") == quantity).row(0, named=True)


def check_against(sens, quantity, by_hand):
    """sens's refits for `quantity` equal by_hand {group: value}, and its std / worst follow from them."""
    got = dict(zip(sens.refits["left_out"], sens.refits[quantity]))
    assert got.keys() == by_hand.keys()
    for g, v in by_hand.items():
        assert got[g] == pytest.approx(v, rel=1e-9)
    row = summary(sens, quantity)
    rel = np.array(list(by_hand.values())) / row["full"] - 1
    assert row["std_rel"] == pytest.approx(np.std(rel, ddof=1), rel=1e-9)
    assert abs(row["worst_rel"]) == pytest.approx(np.abs(rel).max(), rel=1e-9)
    assert by_hand[row["worst_left_out"]] / row["full"] - 1 == pytest.approx(row["worst_rel"])


def test_hparams_leave_one_cell_out_equals_refits_by_hand():
    df = landscape(step_law, noise=1e-3, seed=1)
    sens = hparams_sensitivity(df, "convex", N=1e8, D=1e10)
    assert sens.left_out == "cell" and sens.refits.height == 9 and not sens.failed
    full = predict_hparams(fit_hparams(df, method="convex", bootstrap=0), N=1e8, D=1e10)
    assert summary(sens, "lr*")["full"] == pytest.approx(full.lr)
    by_hand = {}
    for (N, D), _ in df.group_by(["N", "D"], maintain_order=True):
        rest = df.filter(~((pl.col("N") == N) & (pl.col("D") == D)))
        by_hand[f"N={N:.3g},D={D:.3g}"] = predict_hparams(fit_hparams(rest, method="convex", bootstrap=0, loo=False),
                                                          N=1e8, D=1e10).lr
    check_against(sens, "lr*", by_hand)


def test_isoflop_leave_one_budget_out_equals_refits_by_hand():
    df = parabola_runs(noise=0.003, seed=2)
    sens = isoflop_sensitivity(df, [1e19])
    assert sens.left_out == "budget" and sens.refits.height == 5
    by_hand = {}
    for C in (1e15, 3e15, 1e16, 3e16, 1e17):
        C_run = df["D"] * 6 * df["N"]
        rest = df.filter((C_run / C - 1).abs() > 0.05)
        by_hand[C] = predict_optimal(fit_isoflop(rest, bootstrap=0), 1e19).N
    got = sorted(sens.refits["N*@C=1e+19"].to_list())
    np.testing.assert_allclose(got, sorted(by_hand.values()), rtol=1e-9)
    row = summary(sens, "N*@C=1e+19")
    rel = np.array(list(by_hand.values())) / row["full"] - 1
    assert row["std_rel"] == pytest.approx(np.std(rel, ddof=1)) and row["std_rel"] > 0


def grid_runs():
    rows = [{"N": N, "D": D, "loss": chinchilla_loss(N, D) * (1 + 0.002 * np.sin(7 * i))}
            for i, (N, D) in enumerate((N, D) for N in (1e7, 3e7, 1e8, 3e8) for D in (2e8, 6e8, 2e9, 6e9))]
    return pl.DataFrame(rows)


def test_loss_leave_one_size_out_equals_refits_by_hand():
    df = grid_runs()
    kw = {"form": "chinchilla", "seed": 0}
    by_budget, by_size = loss_sensitivity(df, [1e22], kw)
    assert by_size.left_out == "size" and by_size.refits.height == 4
    assert by_budget.left_out == "budget" and by_budget.refits.height + len(by_budget.failed) >= 4
    full = fit_loss(df, bootstrap=0, **kw).params  # refits start at the full fit's optimum
    kw["starts"] = [np.log(full["E"]), np.log(full["A"]), np.log(full["B"]), full["alpha"], full["beta"]]
    by_hand = {f"{N:.3g}": float(compute_optimal(fit_loss(df.filter(pl.col("N") != N), bootstrap=0, **kw),
                                                 [1e22])["loss_opt"][0]) for N in (1e7, 3e7, 1e8, 3e8)}
    check_against(by_size, "loss_opt@C=1e+22", by_hand)


def test_failed_refits_are_counted_with_their_reason_and_groups_bin():
    df = landscape(step_law).filter(pl.col("D") < 1e9)  # 3 N x 2 D: leaving a cell out keeps 5 cells
    sens = leave_one_out(df.head(84), ["a"] * 42 + ["b"] * 42, lambda part: {"n": float(part.height)}, "x")
    assert sens.refits["n"].to_list() == [42.0, 42.0] and summary(sens, "n")["std_rel"] == 0
    def boom(part):
        if part.height < 84:
            raise ValueError("too few")
        return {"n": 1.0}
    sens = leave_one_out(df.head(84), ["a"] * 42 + ["b"] * 42, boom, "x")
    assert sens.refits.height == 0 and sens.failed == ("x a: too few", "x b: too few")
    assert group_labels(np.arange(1.0, 101.0), max_groups=4).count("1..25") == 25
    assert group_labels(np.array([2.0, 1.0, 1.01]), rel_tol=0.05) == ["2", "1", "1"]
    assert group_labels(np.array([1.0, 1.2, 3.0]), rel_tol=0.5) == ["1.1", "1.1", "3"]


def test_lab_fit_reports_sensitivity_next_to_intervals(tmp_path, capsys):
    table = tmp_path / "landscape.csv"
    landscape(step_law, noise=1e-3, seed=1).write_csv(table)
    out = tmp_path / "hp.json"
    code = cli.main(["hparams", "--input", str(table), "--method", "convex", "--bootstrap", "20",
                     "--target-N", "1e8", "--target-D", "1e10", "--out", str(out), "-q"])
    stdout = capsys.readouterr().out
    assert code == 0 and "leaving one cell out" in stdout
    fit = json.loads(out.read_text())
    rows = {r["quantity"]: r for r in fit["sensitivity"][0]["summary"]}
    assert set(rows) == {"lr*", "B*"} and rows["lr*"]["n_refits"] == 9 and rows["lr*"]["std_rel"] > 0
