"""lab-fit end to end: real fits from CSV tables and from an MLflow SQLite store, JSON schemas, bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis.cli import main

POINTS = Path(__file__).parents[1] / "data" / "chinchilla_points.csv"
LOSS_KEYS = {"form", "params", "stderr", "ci95", "n_points", "objective", "holdout"}

# Besiroglu et al. 2024, Table 1: refit of the Chinchilla points (5 highest losses excluded).
BESIROGLU = {"E": 1.8169, "alpha": 0.3478, "beta": 0.3658}
# A Chinchilla-form truth for the synthetic MLflow store: L = E + A/N^α + B/D^β.
TRUTH = {"E": 1.5, "A": 300.0, "B": 900.0, "alpha": 0.3, "beta": 0.35}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("[")]  # progress lines are "[  0.0 s] ..."
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


# --- loss -------------------------------------------------------------------------------------------------------

def test_loss_on_chinchilla_points_reproduces_besiroglu_and_writes_the_schema(tmp_path, capsys):
    out = tmp_path / "fit.json"
    code, stdout, stderr = run(["loss", "--input", POINTS, "--form", "chinchilla", "--bootstrap", 100,
                                "--exclude-top-loss", 5, "--target-C", "1e24", "--out", out], capsys)
    assert code == 0, stderr
    fit = json.loads(out.read_text())
    assert LOSS_KEYS <= set(fit) and fit["form"] == "chinchilla" and fit["holdout"] is None
    for key in ("params", "stderr", "ci95"):
        assert set(fit[key]) == {"E", "A", "B", "alpha", "beta"}
    assert fit["n_points"] == 240 and fit["objective"] > 0 and fit["at_bound"] == []
    for name, value in BESIROGLU.items():
        assert fit["params"][name] == pytest.approx(value, abs=0.01), name
        lo, hi = fit["ci95"][name]
        assert lo < fit["params"][name] < hi
    assert 0.008 < fit["stderr"]["alpha"] < 0.03  # Besiroglu et al.: SE 0.015 from 4,000 resamples
    (opt,) = fit["compute_optimal"]
    assert opt["C"] == 1e24 and opt["N_opt_lo"] < opt["N_opt"] < opt["N_opt_hi"]
    assert opt["N_opt"] * opt["D_opt"] * 6 == pytest.approx(1e24, rel=1e-9)
    assert "95% CI" in stdout and "alpha" in stdout and "compute-optimal" in stdout
    assert "100 bootstrap resamples" in stderr and f"wrote {out}" in stderr


# --- from an MLflow store ---------------------------------------------------------------------------------------

def chinchilla_loss(N, D):
    return TRUTH["E"] + TRUTH["A"] / N ** TRUTH["alpha"] + TRUTH["B"] / D ** TRUTH["beta"]


def log_run(client, experiment_id: str, name: str, N: float, D: float, loss: float | None, sweep: str,
            status: str = "FINISHED", tags: dict[str, str] | None = None) -> str:
    """A finished lab-train run as lab/tracking.py records it (design §5), reduced to three logged steps."""
    from mlflow.entities import Metric, Param

    seq_len, B_seq = 64, 8
    run_id = client.create_run(experiment_id, run_name=name,
                               tags={"sweep": sweep, "design": "grid", **(tags or {})}).info.run_id
    params = {"N": int(N), "N_total": int(N) + 256 * 64, "seq_len": seq_len, "B_tokens": seq_len * B_seq,
              "B_sequences": B_seq, "optim.lr": 3e-3, "budget.tokens": int(D)}
    metrics = []
    for i, frac in enumerate((0.25, 0.5, 1.0), start=1):
        metrics += [Metric("tokens", D * frac, 0, i), Metric("flops", 6 * N * D * frac, 0, i),
                    Metric("train/loss", chinchilla_loss(N, D * frac), 0, i)]
        if loss is not None:
            metrics.append(Metric("val/loss", loss if frac == 1.0 else chinchilla_loss(N, D * frac) + 0.1, 0, i))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, status=status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_experiment) -> str:
    uri, client, exp = new_experiment(tmp_path_factory.mktemp("mlflow"), "ladder")
    for N in np.geomspace(1e5, 1e7, 5):
        for D in np.geomspace(2e6, 2e9, 5):
            log_run(client, exp, f"grid-N{N:.2g}-D{D:.2g}", N, D, chinchilla_loss(N, D), "s1")
    log_run(client, exp, "diverged", 3e5, 1e8, 9.0, "s1", status="FAILED")  # not FINISHED: never fitted
    log_run(client, exp, "no-val", 3e5, 1e8, None, "s1")  # finished but without val/loss: skipped, named
    log_run(client, exp, "other-sweep", 3e5, 1e8, 5.0, "s2")  # another sweep: filtered out
    return uri


def test_loss_from_mlflow_store_recovers_the_law_and_checks_holdout(store, tmp_path, capsys):
    out = tmp_path / "fit.json"
    threshold = 1e15  # C = 6ND spans 1.2e12 .. 1.2e17: the largest runs are held out
    code, stdout, stderr = run(["loss", "--tracking-uri", store, "--experiment", "ladder", "--sweep", "s1",
                                "--form", "chinchilla", "--bootstrap", 20, "--holdout-above", threshold,
                                "--out", out], capsys)
    assert code == 0, stderr
    fit = json.loads(out.read_text())
    assert LOSS_KEYS <= set(fit) and fit["n_points"] == 25
    for name, value in TRUTH.items():
        assert fit["params"][name] == pytest.approx(value, rel=1e-3), name
    holdout = fit["holdout"]
    n_test = sum(6 * N * D >= threshold for N in np.geomspace(1e5, 1e7, 5) for D in np.geomspace(2e6, 2e9, 5))
    assert holdout["n_test"] == n_test and holdout["n_train"] == 25 - n_test
    assert holdout["max_abs_rel_error"] < 1e-3 and len(holdout["points"]) == n_test
    assert "no-val" in stderr and "skipping 1" in stderr  # the incomplete run is named, not silently dropped
    assert "holdout: fitted on" in stdout


def test_branch_runs_are_no_points_of_a_loss_law(tmp_path, new_experiment, capsys):
    uri, client, exp = new_experiment(tmp_path, "mixed")
    reference = ""
    for N in np.geomspace(1e5, 1e7, 3):
        for D in np.geomspace(2e6, 2e9, 4):
            reference = log_run(client, exp, f"grid-N{N:.2g}-D{D:.2g}", N, D, chinchilla_loss(N, D), "mixed")
    for B in (1024, 2048, 4096):  # branches of the last run: a loss no law of (N, D) would give
        log_run(client, exp, f"branch-{B}", 1e7, 1e6, 1.0, "mixed",
                tags={"branch_of": reference, "checkpoint_tokens": "1000000"})
    out = tmp_path / "fit.json"
    code, _, stderr = run(["loss", "--tracking-uri", uri, "--sweep", "mixed", "--bootstrap", 0, "--out", out],
                          capsys)
    assert code == 0, stderr
    fit = json.loads(out.read_text())
    assert fit["n_points"] == 12
    assert fit["params"]["alpha"] == pytest.approx(TRUTH["alpha"], rel=1e-2)
    assert "leaving out 3 critical-batch-size branch runs" in stderr

    only = client.create_experiment("branches-only", artifact_location=(tmp_path / "b").as_uri())
    log_run(client, only, "branch", 1e7, 1e6, 1.0, "b", tags={"branch_of": reference})
    code, _, stderr = run(["loss", "--tracking-uri", uri, "--experiment", "branches-only", "--out", out], capsys)
    assert code == 2
    assert_one_line_error(stderr, "all critical-batch-size branches", "lab-fit cbs")


def test_cbs_from_a_store_without_branch_runs_explains_the_tags(store, tmp_path, capsys):
    out = tmp_path / "cbs.json"
    code, _, stderr = run(["cbs", "--tracking-uri", store, "--out", out], capsys)
    assert code == 2 and not out.exists()
    assert_one_line_error(stderr, "branch_of", "checkpoint_tokens", "--input")


def test_missing_store_and_unknown_sweep_are_errors(store, tmp_path, capsys):
    code, _, stderr = run(["loss", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"], capsys)
    assert code == 2
    assert_one_line_error(stderr, "not found")
    code, _, stderr = run(["loss", "--tracking-uri", store, "--sweep", "nope"], capsys)
    assert code == 2
    assert_one_line_error(stderr, "no FINISHED runs", "--sweep")


# --- isoflop, hparams, cbs on synthetic tables with known truth -------------------------------------------------

def isoflop_table(path: Path, G: float = 0.1, a: float = 0.5) -> Path:
    """Runs whose loss is a parabola in ln N around N* = G·C^a (small noise), 7 sizes per budget."""
    rng = np.random.default_rng(0)
    rows = []
    for C in (1e15, 3e15, 1e16, 3e16, 1e17):
        n_star = G * C ** a
        for u in np.linspace(-1.2, 1.2, 7):
            N = n_star * np.exp(u + 0.05 * rng.standard_normal())
            loss = 2.0 + 40 * C ** -0.08 + 0.05 * np.log(N / n_star) ** 2 + 0.002 * rng.standard_normal()
            rows.append({"N": N, "D": C / (6 * N), "loss": loss})
    pl.DataFrame(rows).write_csv(path)
    return path


def test_isoflop_recovers_the_allocation_law(tmp_path, capsys):
    out = tmp_path / "iso.json"
    code, stdout, stderr = run(["isoflop", "--input", isoflop_table(tmp_path / "iso.csv"), "--bootstrap", 200,
                                "--target-C", "1e18", "--out", out], capsys)
    assert code == 0, stderr
    fit = json.loads(out.read_text())
    assert fit["form"] == "isoflop" and len(fit["budgets"]) == 5
    law = fit["N_law"]
    assert law["params"]["exp"] == pytest.approx(0.5, abs=0.03)
    assert law["ci95"]["exp"][0] < 0.5 < law["ci95"]["exp"][1]
    assert fit["D_law"]["params"]["exp"] == pytest.approx(1 - law["params"]["exp"])
    (opt,) = fit["optimal"]
    assert opt["N"] == pytest.approx(0.1 * 1e18 ** 0.5, rel=0.3)
    assert opt["N_ci95"][0] < 0.1 * 1e18 ** 0.5 < opt["N_ci95"][1]
    assert "per-budget optima" in stdout and "predicted compute-optimal allocation" in stdout


STEP_LR, STEP_B = (1.79, -0.713, 0.307), (0.58, 0.571)  # Li et al. 2025 (Step Law), B in tokens


def step_law(N, D):
    return STEP_LR[0] * N ** STEP_LR[1] * D ** STEP_LR[2], STEP_B[0] * D ** STEP_B[1]


def test_hparams_recovers_step_law_and_predicts(tmp_path, capsys):
    rng = np.random.default_rng(3)
    rows = []
    for N in (2e6, 6e6, 2e7):
        for D in (2e8, 6e8, 2e9):
            lr_star, B_star = step_law(N, D)
            for lr in lr_star * 2.0 ** (np.arange(-3, 4) + rng.uniform(-0.5, 0.5)):
                for B in B_star * 2.0 ** (np.arange(-2.5, 3.0) + rng.uniform(-0.5, 0.5)):
                    dx, dy = np.log(lr / lr_star), np.log(B / B_star)
                    rows.append({"N": N, "D": D, "lr": lr, "B": B,
                                 "loss": 2.5 + 0.01 * dx * dx + 0.006 * dy * dy + 0.004 * dx * dy})
    table = tmp_path / "landscape.csv"
    pl.DataFrame(rows).write_csv(table)
    out = tmp_path / "hp.json"
    code, stdout, stderr = run(["hparams", "--input", table, "--bootstrap", 100, "--target-N", "1e8",
                                "--target-D", "1e10", "--out", out], capsys)
    assert code == 0, stderr
    fit = json.loads(out.read_text())
    assert {"lr", "batch", "cells"} <= set(fit) and len(fit["cells"]) == 9
    assert set(fit["lr"]) == {"coef", "exp_N", "exp_D", "ci95"} and set(fit["batch"]) == {"coef", "exp_D", "ci95"}
    assert fit["lr"]["exp_N"] == pytest.approx(STEP_LR[1], abs=1e-3)
    assert fit["lr"]["exp_D"] == pytest.approx(STEP_LR[2], abs=1e-3)
    assert fit["batch"]["exp_D"] == pytest.approx(STEP_B[1], abs=1e-3)
    lr_true, B_true = step_law(1e8, 1e10)
    assert fit["prediction"]["lr"] == pytest.approx(lr_true, rel=0.01)
    assert fit["prediction"]["B"] == pytest.approx(B_true, rel=0.01)
    assert "leave-one-cell-out" in stdout and "prediction at the target" in stdout


def true_cbs(D):
    return 2.0 ** 20 * -np.expm1(-(np.asarray(D) / 2e9) ** 0.7)  # B_max·(1 − exp(−(D/D0)^k)), tokens


def test_cbs_from_branches_proposes_a_batch_warmup(tmp_path, capsys):
    rows = []
    for D in np.geomspace(1e7, 2e10, 12):
        ref = 3.0 + 10 * D ** -0.1
        for B in 2.0 ** np.arange(12, 21.5, 0.5):  # excess loss is exactly 1% at the true CBS
            rows.append({"checkpoint_tokens": D, "B": B, "loss": ref * (1 + 0.01 * B / true_cbs(D)), "ref_loss": ref})
    table = tmp_path / "branches.csv"
    pl.DataFrame(rows).write_csv(table)
    out = tmp_path / "cbs.json"
    code, stdout, stderr = run(["cbs", "--input", table, "--interpolate", "--bootstrap", 30, "--seq-len", 256,
                                "--total-tokens", "2e10", "--out", out], capsys)
    assert code == 0, stderr
    fit = json.loads(out.read_text())
    local = pl.DataFrame(fit["local"])
    assert local.height == 12 and (local["censored"] == "none").all()
    np.testing.assert_allclose(local["cbs"].to_numpy(), true_cbs(local["checkpoint_tokens"].to_numpy()), rtol=0.03)
    warmup = fit["warmup"]
    assert warmup["overrides"][0] == "batch.schedule=stepwise" and warmup["start_sequences"] == 8
    tokens = [t for t, _ in warmup["milestones"]]
    sequences = [s for _, s in warmup["milestones"]]
    assert tokens == sorted(tokens) and sequences == [16 * 2 ** i for i in range(len(sequences))]
    assert sequences[-1] <= 2 ** 20 // 256  # never beyond the largest batch measured
    # each doubling waits until the true CBS has (nearly) reached the new batch
    ratio = true_cbs(np.array(tokens)) / (np.array(sequences) * 256)
    assert np.all(ratio > 0.9) and np.all(ratio < 2.5)
    assert "lab-train batch.schedule=stepwise" in stdout


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD_ROWS = "".join(f"{N},{D},{3 + 1e3 / N ** 0.5 + 1e3 / D ** 0.5}\n"
                    for N in (1e5, 1e6, 1e7) for D in (1e7, 1e8, 1e9))


@pytest.mark.parametrize("case, argv, words", [
    ("missing file", ["loss", "--input", "{tmp}/nope.csv"], ["not found", "nope.csv", "check the path"]),
    ("missing column", ["loss", "--input", "{no_D}"], ["missing column", "'D'", "Rename"]),
    ("nan", ["loss", "--input", "{nan}"], ["'loss'", "NaN", "drop or fill"]),
    ("non-positive", ["loss", "--input", "{zero}"], ["'N'", "zero or negative", "N > 0"]),
    ("too few", ["loss", "--input", "{few}"], ["only 3 points", "at least 6"]),
    ("target-C with kaplan", ["loss", "--input", "{good}", "--form", "kaplan", "--target-C", "1e20"],
     ["--target-C needs --form chinchilla"]),
    ("half a target", ["hparams", "--input", "{good}", "--target-N", "1e8"], ["--target-D"]),
    ("no lr x B grid", ["hparams", "--input", "{flat}"], ["varies both lr and B", "lr_batch"]),
    ("out in a missing directory", ["loss", "--input", "{good}", "--form", "L(N)"], ["does not exist"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case, argv, words):
    files = {
        "tmp": tmp_path,
        "good": write(tmp_path / "good.csv", "N,D,loss\n" + GOOD_ROWS),
        "no_D": write(tmp_path / "no_D.csv", "N,loss\n1e5,4.0\n1e6,3.5\n"),
        "nan": write(tmp_path / "nan.csv", "N,D,loss\n" + GOOD_ROWS + "1e6,1e8,NaN\n"),
        "zero": write(tmp_path / "zero.csv", "N,D,loss\n" + GOOD_ROWS + "0,1e8,3.0\n"),
        "flat": write(tmp_path / "flat.csv", "N,D,loss,lr,B\n" + GOOD_ROWS.replace("\n", ",3e-3,512\n")),
        "few": write(tmp_path / "few.csv", "N,D,loss\n" + "".join(GOOD_ROWS.splitlines(True)[:3])),
    }
    out = tmp_path / ("missing-dir/fit.json" if case.startswith("out") else "fit.json")
    code, _, stderr = run([a.format(**files) for a in argv] + ["--out", out], capsys)
    assert code == 2
    assert_one_line_error(stderr, *words)
    assert not out.exists()


def test_usage_errors_and_help_exit_through_main(capsys):
    assert main(["--help"]) == 0
    assert main(["loss", "--input", "x.csv", "--bootstrap", "-5"]) == 2
    assert "whole number" in capsys.readouterr().err


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("lab-fit")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    table = isoflop_table(tmp_path / "iso.csv")
    done = subprocess.run([script, "isoflop", "--input", table, "--bootstrap", "50", "--out", tmp_path / "iso.json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "per-budget optima" in done.stdout and json.loads((tmp_path / "iso.json").read_text())["N_law"]
    bad = subprocess.run([script, "hparams", "--input", table, "--out", tmp_path / "hp.json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and not (tmp_path / "hp.json").exists()
    assert_one_line_error(bad.stderr, "missing column", "lr")
