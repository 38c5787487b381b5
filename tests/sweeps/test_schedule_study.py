"""The schedule study end to end: the design (names, roles, shared settings, refusals, the shipped config), then a
real tiny study of the smoke model in two launches (the fitted schedules, then the held-out one), the planned lr
sequence against the one the run logged, and `lab-fit schedule --sweep` fitting the role=fit runs by default.

Tiny runs (experiment=smoke: seq_len 32, batch 8 sequences) on D = 8,192 tokens: 32 steps per run.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lab.config import BatchConfig, ModelConfig
from sweeps.catalog import expand
from sweeps.demo_schedules import shipped_design
from sweeps.designs import Base, DesignError
from sweeps.schedule_study import planned_lr, schedules
from tracking.record import Design, Metric, Role, Tag

D = 8192
SCHEDULES = {"cosine": {"schedule": "cosine", "min_lr_ratio": 0.1}, "constant": {"schedule": "constant"},
             "wsd": {"schedule": "wsd", "decay_fraction": 0.25, "min_lr_ratio": 0.0}}
# the shipped schedules (cosine, constant, two_stage; wsd held out) less two_stage: a command-line dict merges into
# the shipped one, so a schedule is dropped with ~
DESIGN = ["sweep=schedule_study", "hydra.sweeper.design.sizes=[1]", f"hydra.sweeper.design.tokens={D}",
          "hydra.sweeper.design.lr=3e-3", "~hydra.sweeper.design.schedules.two_stage"]
SHIPPED = shipped_design()


def smoke_base() -> Base:
    return Base.from_config(ModelConfig(size=1, seq_len=32), BatchConfig(sequences=8, micro_batch=4), sizes=[1])


def design(**changes):
    return schedules(smoke_base(), **{"tokens": D, "lr": 3e-3, "schedules": SCHEDULES, "held_out": ["wsd"],
                                      **changes})


def test_one_run_per_schedule_sharing_everything_but_the_schedule():
    cosine, constant, wsd = design()
    assert [s.tags[Tag.SCHEDULE_NAME] for s in (cosine, constant, wsd)] == ["cosine", "constant", "wsd"]
    assert [s.tags[Tag.ROLE] for s in (cosine, constant, wsd)] == [Role.FIT, Role.FIT, Role.HELD_OUT]
    assert {s.tags[Tag.DESIGN] for s in (cosine, constant, wsd)} == {Design.SCHEDULES}
    assert len({s.tags[Tag.POINT] for s in (cosine, constant, wsd)}) == 1
    for s in (cosine, constant, wsd):
        assert {f"budget.tokens={D}", "optim.lr=0.003", "seed=0", "model.size=1"} <= set(s.overrides)
    assert "optim.schedule=wsd" in wsd.overrides and "optim.decay_fraction=0.25" in wsd.overrides
    # the name covers the schedule's settings: a redefined name is a new run, not a skip to the old one
    other = design(schedules={**SCHEDULES, "wsd": {"schedule": "wsd", "decay_fraction": 0.5}})[2]
    assert other.name != wsd.name and other.name.startswith(wsd.name.split("-wsd-")[0])
    assert [s.name for s in design(train_held_out=False)] == [cosine.name, constant.name]


@pytest.mark.parametrize("changes, message", [
    ({"schedules": {"cosine": {"schedule": "cosine"}}}, "at least two named schedules"),
    ({"schedules": {**SCHEDULES, "bad": {"min_lr_ratio": 0.1}}}, "at least schedule"),
    ({"schedules": {**SCHEDULES, "bad": {"schedule": "cosine", "lr": 1e-3}}}, "unknown setting"),
    ({"held_out": ["step"]}, "not among the schedules"),
    ({"held_out": ["cosine", "constant", "wsd"]}, "no schedule to fit"),
    ({"tokens": 8000}, "e.g. 8192"),
    ({"lr": -1.0}, "positive peak lr"),
])
def test_bad_designs_are_refused_with_the_fix(changes, message):
    with pytest.raises(DesignError, match=message):
        design(**changes)


def test_the_shipped_design_expands_and_composes_into_valid_runs():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lab.train import CONF_MODULE, compose_config

    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = compose("lab_sweep", overrides=["sweep=schedule_study"], return_hydra_config=True)
    specs = expand(OmegaConf.to_container(cfg.hydra.sweeper.design), OmegaConf.to_object(cfg.model),
                   OmegaConf.to_object(cfg.batch))
    assert [s.tags[Tag.SCHEDULE_NAME] for s in specs] == ["cosine", "constant", "two_stage", "wsd"]
    assert [s.tags[Tag.ROLE] for s in specs] == [Role.FIT] * 3 + [Role.HELD_OUT]
    for spec in design():
        compose_config(["experiment=smoke", *spec.overrides])  # validated as lab-train validates it


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study in two launches under one sweep id: the fitted schedules, then all (only the held-out one trains)."""
    from sweeps.cli import run_sweep

    workdir = tmp_path_factory.mktemp("schedule_study")
    overrides = ["experiment=smoke", "tracking.experiment=schedules", f"tracking.uri=sqlite:///{workdir}/mlflow.db",
                 f"checkpoint_dir={workdir}/ckpt", f"data.cache_dir={workdir}/cache", "trainer.val_every_steps=4",
                 f"hydra.sweep.dir={workdir}/multirun", "hydra.sweeper.id=sch-test"]
    cwd = os.getcwd()
    os.chdir(workdir)  # MLflow's default artifact root is ./mlruns
    try:
        first = run_sweep([*DESIGN, "hydra.sweeper.design.train_held_out=false", *overrides])
        second = run_sweep([*DESIGN, *overrides])
    finally:
        os.chdir(cwd)
    return workdir, first, second


def test_held_out_runs_train_in_a_second_launch_on_the_lr_sequence_planned_before(study):
    from mlflow.tracking import MlflowClient

    workdir, first, second = study
    assert [o.status for o in first.outcomes] == ["FINISHED"] * 2
    assert [o.status for o in second.outcomes] == ["SKIPPED", "SKIPPED", "FINISHED"]
    wsd_spec = schedules(smoke_base(), D, 3e-3, SHIPPED["schedules"], held_out=["wsd"])[-1]
    assert wsd_spec.tags[Tag.SCHEDULE_NAME] == "wsd"
    planned = planned_lr(["experiment=smoke", *wsd_spec.overrides])
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("schedules").experiment_id],
                             f"tags.{Tag.SCHEDULE_NAME} = 'wsd'")[0]
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, Metric.LR))
    assert planned.size == D // (8 * 32) == len(logged)
    np.testing.assert_allclose([v for _, v in logged], planned, rtol=1e-6)  # lr logged at s is step s − 1's
    assert planned[-1] == 0.0 and planned.max() == pytest.approx(3e-3)


def test_lab_fit_schedule_fits_the_role_fit_runs_and_predicts_the_held_out_one(study, tmp_path, capsys):
    from analysis.cli import main

    workdir, _, second = study
    out = tmp_path / "fit.json"
    code = main(["schedule", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--experiment", "schedules",
                 "--sweep", second.sweep_id, "--bootstrap", "0", "--skip-fraction", "0.2", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(out.read_text())
    names = {r["run_name"]: r for r in result["runs"]}
    fitted = sorted(n.split("-lr3e-3-")[1].split("-")[0] for n, r in names.items() if r["fitted"])
    assert fitted == ["constant", "cosine"] and len(names) == 3
    (held,) = [r for r in names.values() if not r["fitted"]]
    assert np.isfinite(held["predicted_final"]) and held["mean_rel_error"] < 0.5
    assert "predicting" in printed.err


def test_lab_fit_schedule_without_fit_runs_or_a_study_says_what_to_give(study, capsys):
    from analysis.cli import main

    workdir, *_ = study
    code = main(["schedule", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", "--experiment", "schedules",
                 "--sweep", "nothing", "-q"])
    assert code == 2 and "error:" in capsys.readouterr().err
