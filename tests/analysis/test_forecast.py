"""A forecast recorded in a real MLflow store round-trips, stays out of the fits, and is checked against a later run."""

import argparse
import json

import numpy as np
import polars as pl
import pytest

from analysis import cli
from analysis.cli_forecast import _fit
from analysis.cli_input import Progress
from tracking.forecasts import load_forecasts, runs_digest
from tracking.record import Artifact, Metric, Param, Tag

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. 2022, approach 3
TARGET = (3e8, 6e9)


def loss(N, D):
    return E + A / N ** ALPHA + B / D ** BETA


def log_run(client, exp, name, N, D, value, sweep="grid"):
    from mlflow.entities import Metric as M, Param as P

    run_id = client.create_run(exp, run_name=name, tags={Tag.SWEEP: sweep}).info.run_id
    params = {Param.N: int(N), Param.SEQ_LEN: 64, Param.B_TOKENS: 512, Param.LR: 3e-3}
    client.log_batch(run_id, metrics=[M(Metric.TOKENS, D, 0, 1), M(Metric.VAL_LOSS, value, 0, 1)],
                     params=[P(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def store(tmp_path, new_experiment):
    uri, client, exp = new_experiment(tmp_path, "ladder")
    rng = np.random.default_rng(0)
    for N in (1e7, 3e7, 1e8):
        for D in (2e8, 6e8, 2e9, 6e9):
            log_run(client, exp, f"grid-N{N:.0e}-D{D:.0e}", N, D, loss(N, D) * (1 + 0.001 * rng.standard_normal()))
    return uri, client, exp


def lab_fit(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_forecast_round_trips_and_is_checked_against_a_later_run(store, tmp_path, capsys):
    uri, client, exp = store
    out = tmp_path / "recorded.json"
    stdout = lab_fit(["forecast", "--tracking-uri", uri, "--law", "loss", "--target-N", TARGET[0], "--target-D",
                      TARGET[1], "--bootstrap", 30, "--out", out, "-q"], capsys)
    recorded = json.loads(out.read_text())
    run_id = recorded.pop("forecast_run")
    assert "forecast" in stdout and "leaving one budget out" in stdout and "leaving one size out" in stdout

    run = client.get_run(run_id)
    assert run.info.experiment_id == exp and run.info.status == "FINISHED"
    assert run.data.tags[Tag.FORECAST] == "loss" and run.data.tags[Tag.FORECAST_TARGET] == "N=3e+08,D=6e+09"
    predicted = recorded["predictions"]["loss"]
    assert run.data.metrics[f"{Metric.FORECAST_PREFIX}loss"] == pytest.approx(predicted["value"])
    assert predicted["lo"] < predicted["value"] < predicted["hi"]
    assert predicted["value"] == pytest.approx(loss(*TARGET), rel=0.01)
    # the payload round-trips through the artifact, with the fitted runs and their digest
    (back,) = load_forecasts(uri, [exp])
    assert {k: back[k] for k in recorded} == recorded and back["checked_run"] is None
    grid = client.search_runs([exp], filter_string=f"tags.{Tag.SWEEP} = 'grid'")
    assert sorted(recorded["runs"]) == sorted(r.info.run_id for r in grid)
    assert recorded["runs_digest"] == runs_digest([r.info.run_id for r in grid],
                                                  [r.data.metrics[Metric.VAL_LOSS] for r in grid])
    sens = {s["left_out"]: s for s in recorded["sensitivity"]}
    assert sens["size"]["summary"][0]["n_refits"] == 3

    # the forecast run is no point of a law: the same fit still sees the 12 grid runs
    fit_out = tmp_path / "fit.json"
    lab_fit(["loss", "--tracking-uri", uri, "--bootstrap", 0, "--out", fit_out, "-q"], capsys)
    assert json.loads(fit_out.read_text())["n_points"] == 12

    # nothing at the target yet
    assert "no run at the target yet" in lab_fit(["forecast", "--tracking-uri", uri, "--check", "-q"], capsys)
    assert Tag.FORECAST_CHECKED_RUN not in client.get_run(run_id).data.tags

    # the big run lands (N within 1% of the target): forecast against realised, the forecast tagged
    realised = loss(*TARGET) * 1.003
    landed = log_run(client, exp, "big", TARGET[0] * 1.01, TARGET[1], realised, sweep="big")
    check_out = tmp_path / "check.json"
    stdout = lab_fit(["forecast", "--tracking-uri", uri, "--check", "--out", check_out, "-q"], capsys)
    (check,) = json.loads(check_out.read_text())["checks"]
    error = realised / predicted["value"] - 1
    assert check["landed_run"] == landed and check["error"]["loss"] == pytest.approx(error)
    assert landed in stdout and f"{100 * error:+.3g}%" in stdout
    tags, metrics = client.get_run(run_id).data.tags, client.get_run(run_id).data.metrics
    assert tags[Tag.FORECAST_CHECKED_RUN] == landed
    assert json.loads(tags[Tag.FORECAST_ERROR])["loss"] == pytest.approx(error)
    assert metrics[f"{Metric.REALISED_PREFIX}loss"] == pytest.approx(realised)
    assert metrics[f"{Metric.FORECAST_ERROR_PREFIX}loss"] == pytest.approx(error)
    assert Artifact.FORECAST in [f.path for f in client.list_artifacts(run_id)]


def test_forecast_needs_a_store_and_a_target(store, tmp_path, capsys):
    uri, _, _ = store
    table = tmp_path / "t.csv"
    pl.DataFrame({"N": [1e7], "D": [1e9], "loss": [3.0]}).write_csv(table)
    for argv, words in ((["--input", table, "--law", "loss"], "--tracking-uri"),
                        (["--tracking-uri", uri, "--law", "loss", "--target-N", 1e8], "--target-D"),
                        (["--tracking-uri", uri, "--law", "isoflop", "--target-N", 1e8, "--target-D", 1e9],
                         "--target-C"),
                        (["--tracking-uri", uri, "--check"], "no forecast runs")):
        assert cli.main(["forecast", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_hparams_and_isoflop_forecasts_predict_with_intervals_and_sensitivity():
    from test_hparams import landscape, step_law
    from test_isoflop import parabola_runs

    args = argparse.Namespace(law="hparams", method="convex", bootstrap=20, seed=0)
    preds, (sens,), extra = _fit(args, landscape(step_law, noise=5e-4), {"N": 1e8, "D": 1e10}, Progress(True))
    lr, B = step_law(1e8, 1e10)
    assert preds["lr"]["value"] == pytest.approx(lr, rel=0.05) and preds["B"]["value"] == pytest.approx(B, rel=0.05)
    assert preds["lr"]["lo"] < preds["lr"]["value"] < preds["lr"]["hi"] and extra == {"method": "convex"}
    assert sens.left_out == "cell" and sens.refits.height == 9
    args = argparse.Namespace(law="isoflop", bootstrap=20, seed=0)
    preds, (sens,), _ = _fit(args, parabola_runs(G=0.1, a=0.5), {"C": 1e19}, Progress(True))
    assert preds["N"]["value"] == pytest.approx(0.1 * 1e19 ** 0.5, rel=0.1)
    assert preds["D"]["value"] == pytest.approx(1e19 / (6 * preds["N"]["value"]))
    assert sens.left_out == "budget" and sens.refits.height == 5
