"""The Schedules and Forecasts pages under AppTest: each shows what `lab-fit schedule` and `lab-fit forecast`
compute on the same input (the forecast itself is recorded by the real `lab-fit forecast`), and the law pages
warn when their runs trained on different data (analysis.lineage)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.laws import schedule_forms as sf
from app import pages
from app.ui import fmt
from schedule_curves import MEASURED, SHAPES, STEPS, schedule_curves
from tracking.forecasts import load_forecasts
from tracking.record import Design, Metric, Param, Role, Tag

ROOT = Path(__file__).resolve().parents[2]
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. 2022
TARGET = (3e8, 6e9)


def open_page(uri: str, page: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("LAB_TRACKING_URI", uri)
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=240).run()
    return checked(at.switch_page(page).run())


def checked(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def shown(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [w.value for w in at.warning]
    return "\n".join(parts + [f"{m.label}: {m.value}" for m in at.metric])


def lab_fit(*argv) -> dict:
    from analysis.cli import main

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "fit.json"
        assert main([*map(str, argv), "--quiet", "--out", str(out)]) == 0
        return json.loads(out.read_text())


def new_store(directory: Path, name: str):
    from mlflow import MlflowClient

    uri = f"sqlite:///{directory}/mlflow.db"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment(name, artifact_location=(directory / "artifacts").as_uri())


def log_run(client, exp, name: str, N: float, D: float, loss: float, params: dict | None = None,
            tags: dict | None = None) -> str:
    from mlflow.entities import Metric as M, Param as P

    run_id = client.create_run(exp, run_name=name, tags={Tag.SWEEP: "grid-1", Tag.DESIGN: Design.GRID, **(tags or {})}
                               ).info.run_id
    params = {Param.N: int(N), Param.SEQ_LEN: 64, Param.B_TOKENS: 512, Param.LR: 3e-3, **(params or {})}
    client.log_batch(run_id, metrics=[M(Metric.TOKENS, D, 0, 1), M(Metric.VAL_LOSS, loss, 0, 1)],
                     params=[P(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def chinchilla(N: float, D: float) -> float:
    return E + A / N ** ALPHA + B / D ** BETA


def grid_store(directory: Path, digests: tuple[str, ...] = ("a" * 64,)) -> tuple[str, object, str]:
    """A 3 x 4 grid of runs on the Chinchilla law (0.1% noise), their data digests cycling through `digests`."""
    uri, client, exp = new_store(directory, "grid")
    rng = np.random.default_rng(0)
    k = 0
    for N in (1e7, 3e7, 1e8):
        for D in (2e8, 6e8, 2e9, 6e9):
            lineage = {Param.DATA_DIGEST: digests[k % len(digests)], Param.DATA_NAME: f"corpus{k % len(digests)}",
                       Param.TOKENIZER_DIGEST: "t" * 64}
            log_run(client, exp, f"grid-N{N:.0e}-D{D:.0e}", N, D,
                    chinchilla(N, D) * (1 + 0.001 * rng.standard_normal()), lineage)
            k += 1
    return uri, client, exp


def test_forecasts_page_shows_recorded_forecasts_against_the_run_that_landed(tmp_path, monkeypatch):
    uri, client, exp = grid_store(tmp_path)
    lab_fit("forecast", "--tracking-uri", uri, "--law", "loss", "--target-N", TARGET[0], "--target-D", TARGET[1],
            "--bootstrap", 30)
    lab_fit("forecast", "--tracking-uri", uri, "--law", "loss", "--target-N", 1e9, "--target-D", 2e10,
            "--bootstrap", 30, "--no-sensitivity")  # nothing lands there
    realised = chinchilla(*TARGET) * 1.004
    landed = log_run(client, exp, "big-run", TARGET[0] * 1.01, TARGET[1], realised, tags={Tag.SWEEP: "big"})

    at = open_page(uri, pages.FORECASTS.path, monkeypatch)
    (at_target,) = [f for f in load_forecasts(uri, [exp]) if f["target"]["N"] == TARGET[0]]
    forecast = at_target["predictions"]["loss"]["value"]
    text = shown(at)
    assert "2 forecasts, 1 with a run at their target" in [s.value for s in at.subheader]
    summary = at.dataframe[0].value
    row = summary[summary["forecast run"] == at_target["run_id"]].iloc[0]
    assert row["landed run"] == "big-run" and row["error (realised / forecast − 1)"] == \
        f"loss {100 * (realised / forecast - 1):+.3g}%"
    assert (summary["landed run"] == "no run at the target yet").sum() == 1
    assert "Sensitivity: the forecast refitted leaving one **budget** out" in text  # the recorded sensitivity

    at.button(key="fc_record").click().run()  # tags the forecast as --check does
    tagged = {f["run_id"]: f["checked_run"] for f in load_forecasts(uri, [exp])}
    assert tagged[at_target["run_id"]] == landed and list(tagged.values()).count(None) == 1
    assert "tagged with a check" in checked(at).dataframe[0].value.columns

    # lab-fit forecast --check computes the same error (the same function) and tags the forecast with it
    checks = {c["forecast_run"]: c for c in lab_fit("forecast", "--tracking-uri", uri, "--check")["checks"]}
    assert checks[at_target["run_id"]]["landed_run"] == landed
    assert checks[at_target["run_id"]]["error"]["loss"] == pytest.approx(realised / forecast - 1)


def test_law_pages_warn_when_their_runs_trained_on_different_data(tmp_path, monkeypatch):
    uri, _, _ = grid_store(tmp_path, digests=("a" * 64, "b" * 64))
    at = open_page(uri, pages.LOSS_LAWS.path, monkeypatch)
    assert any("trained on 2 datasets" in w.value and "not points of one law" in w.value for w in at.warning)


def test_schedules_page_fits_predicts_and_chooses_as_lab_fit_schedule_does(curves_csv, tmp_path, monkeypatch):
    uri, _, _ = new_store(tmp_path, "empty")
    at = open_page(uri, pages.SCHEDULES.path, monkeypatch)
    at.radio(key="sched_source").set_value("a CSV/Parquet table").run()
    at.text_input(key="sched_path").input(str(curves_csv)).run()
    checked(at)
    assert at.multiselect(key="sched_fit").value == ["cosine", "constant", "two-stage"]
    expected = lab_fit("schedule", "--input", curves_csv, "--fit-runs", "cosine", "constant", "two-stage",
                       "--bootstrap", 200, "--choose-steps", STEPS)
    text = shown(at)
    for name, value in expected["params"].items():
        assert f"**{name}** = {fmt(value)}" in text
    errors = at.dataframe[0].value.set_index("run_name")
    wsd = next(r for r in expected["runs"] if r["run_id"] == "wsd")
    assert not errors.loc["wsd", "fitted"] and errors.loc["wsd", "mean rel err %"] == pytest.approx(
        100 * wsd["mean_rel_error"])
    curves = [c for c in at.get("plotly_chart") if c.proto.id.endswith("-sched_curves")]
    assert len(json.loads(curves[0].proto.spec)["data"]) == 2 * len(SHAPES)  # observed and predicted per run
    metrics = {m.label: m.value for m in at.metric}
    for name, value in expected["choice"]["predicted_final"].items():
        assert metrics[f"{name}: predicted final loss"] == fmt(value)
    assert any("optim.schedule=table" in c.value for c in at.code)

    at.selectbox(key="sched_form").set_value(sf.ANNEALING).run()
    assert "**C** =" in shown(checked(at)) and "**gamma**" not in shown(at)


def schedule_study(directory: Path) -> tuple[str, dict[str, str]]:
    """A store holding a schedule study (design schedules, sweep sched-1: the Multi-Power Law curves of
    schedule_curves, one model, one batch size; WSD held out) beside a grid of other model sizes; (uri, shape ->
    run id). lr and val/loss are logged at MLflow step s for the schedule law's step s - 1, as lab-train logs them."""
    from mlflow.entities import Metric as M, Param as P

    uri, client, exp = grid_store(directory)
    ids = {}
    for shape, (lr, loss) in schedule_curves().items():
        tags = {Tag.SWEEP: "sched-1", Tag.DESIGN: Design.SCHEDULES, Tag.SCHEDULE_NAME: shape,
                Tag.ROLE: Role.HELD_OUT if shape == "wsd" else Role.FIT}
        run_id = ids[shape] = client.create_run(exp, run_name=f"sched-{shape}", tags=tags).info.run_id
        metrics = [M(Metric.LR, float(v), 0, i + 1) for i, v in enumerate(lr)]
        metrics += [M(Metric.VAL_LOSS, float(v), 0, int(step) + 1) for step, v in zip(MEASURED, loss)]
        metrics.append(M(Metric.TOKENS, STEPS * 512.0, 0, STEPS))
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1,000 metrics a batch
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        params = {Param.N: int(2e6), Param.SEQ_LEN: 64, Param.B_TOKENS: 512, Param.LR: 3e-4 * 24}
        client.log_batch(run_id, params=[P(k, str(v)) for k, v in params.items()])
        client.set_terminated(run_id, "FINISHED")
    return uri, ids


def test_schedules_page_fits_the_schedule_study_s_fit_runs_and_predicts_its_held_out_one(tmp_path, monkeypatch):
    uri, ids = schedule_study(tmp_path)
    at = open_page(uri, pages.SCHEDULES.path, monkeypatch)
    fit_runs = [ids[s] for s in ("cosine", "constant", "two-stage")]
    assert at.multiselect(key="sched_fit").value == fit_runs
    assert sorted(at.multiselect(key="sched_runs").value) == sorted(ids.values())
    assert any("schedule study `sched-1`" in c.value for c in at.caption)
    expected = lab_fit("schedule", "--tracking-uri", uri, "--fit-runs", *fit_runs, "--bootstrap", 200)
    text = shown(at)
    for name, value in expected["params"].items():
        assert f"**{name}** = {fmt(value)}" in text
    errors = at.dataframe[0].value.set_index("run_name")
    wsd = next(r for r in expected["runs"] if r["run_id"] == ids["wsd"])
    assert not errors.loc["sched-wsd", "fitted"] and errors.loc["sched-wsd", "fitted":].notna().all()
    assert errors.loc["sched-wsd", "mean rel err %"] == pytest.approx(100 * wsd["mean_rel_error"])
    assert errors.loc["sched-wsd", "final rel err %"] == pytest.approx(
        100 * (wsd["predicted_final"] / wsd["final_loss"] - 1))
    assert errors.loc["sched-wsd", "mean rel err %"] < 0.1  # the law predicts the run it was not fitted to

    at.multiselect(key="sched_runs").unselect(fit_runs[0]).run()  # a run no longer read is no longer fitted
    assert fit_runs[0] not in checked(at).multiselect(key="sched_fit").value


def test_schedules_page_without_a_schedule_study_says_how_to_run_one_and_fits_nothing(tmp_path, monkeypatch):
    uri, _, _ = grid_store(tmp_path)  # one run per (N, D): no model trained under two schedules
    at = open_page(uri, pages.SCHEDULES.path, monkeypatch)
    assert any(f"lab-sweep sweep={Design.SCHEDULES}" in i.value for i in at.info)
    assert at.multiselect(key="sched_fit").value == []
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("-sched_curves")] and not at.dataframe
