"""Optuna studies over real lab runs: concurrent worker processes, pruning, failures, heartbeat retries.

Every trial is an `experiment=smoke` model (~2 s); workers are real `lab-study` processes with one torch thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lab.run import prepare
from lab.train import compose_config
from sweeps.pruning import make_pruner
from sweeps.study import (Param, SearchSpace, StudyError, StudySpec, load_space, make_sampler, open_storage,
                          open_study, run_trials, run_worker, validate_space)

LAB_STUDY = str(Path(sys.executable).parent / "lab-study")
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """The built-in corpus, built once before any worker reads it."""
    cache = tmp_path_factory.mktemp("cache")
    prepare(compose_config(["experiment=smoke", f"data.cache_dir={cache}"]))
    return cache


def paths(workdir: Path, cache: Path) -> tuple[str, ...]:
    return (f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt", f"data.cache_dir={cache}")


def worker(workdir: Path, cache: Path, study: str, storage: str, n_trials: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([LAB_STUDY, "--study", study, "--storage", storage, "--space", "smoke",
                             "--n-trials", str(n_trials), *args, *paths(workdir, cache)],
                            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def assert_each_trial_once(storage: str, study_name: str, tracking_uri: str, n: int) -> optuna.Study:
    """n trials in Optuna, n child runs in MLflow, linked one to one, with statuses that agree."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n))
    assert all(t.state in RUN_STATUS for t in trials), [t.state for t in trials]
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_id)
    assert parent.data.tags["optuna_study"] == study_name and parent.data.tags["optuna_role"] == "parent"
    assert parent.info.status == "FINISHED", "the last worker closes the parent once nothing is running"
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.optuna_study = '{study_name}'")
    children = {r.info.run_id: r for r in runs if r.info.run_id != parent_id}
    assert len(runs) == n + 1 and len(children) == n, "one parent and one run per trial, no duplicates"
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == n
    for t in trials:
        run = children[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["optuna_trial"] == str(t.number) and run.data.tags["sweep"] == study_name
        assert run.info.run_name == f"{study_name}-t{t.number:04d}"
        assert run.info.status == RUN_STATUS[t.state], (t.number, t.state, run.info.status)
        assert run.data.params["trainer.threads"] == "1"
        if t.state == TrialState.COMPLETE:
            assert run.data.metrics["val/loss"] == pytest.approx(t.value)
    return study


def test_shipped_spaces_load_and_validate():
    for name in ("smoke", "lr_batch"):
        space = load_space(name)
        cfg, D = validate_space(space, space.overrides)
        assert {p.name for p in space.params} == {"optim.lr", "batch.sequences"}
        assert D == pytest.approx(cfg.budget.tokens, rel=1e-3)  # whole steps
    assert load_space("smoke").grid() == {"optim.lr": [1e-3, 1e-2], "batch.sequences": [8, 16]}


@pytest.mark.parametrize("params, named", [
    ("batch.sequences: {choices: [8, 6]}", "batch.sequences=6"),
    ("optim.lrr: {low: 1.0e-3, high: 1.0e-2}", "optim.lrr"),
    ("optim.lr: {low: 1.0e-2, high: 1.0e-3, log: true}", "optim.lr range [0.01, 0.001]"),
    ("optim.lr: {low: 1.0e-3, high: 1.0e-2, step: 2}", "unknown keys ['step']"),
])
def test_bad_space_is_rejected_before_any_study_or_run(tmp_path, cache_dir, params, named):
    space_file = tmp_path / "bad.yaml"
    space_file.write_text(f"params:\n  {params}\noverrides: [experiment=smoke]\n")
    with pytest.raises(StudyError, match="bad") as err:
        run_worker(StudySpec(name="bad", space=load_space(str(space_file)), overrides=paths(tmp_path, cache_dir)), 1)
    assert named in str(err.value)
    assert not list(tmp_path.glob("*.db")), "a rejected space creates no Optuna study and no MLflow store"


def test_samplers_and_pruners_are_built_by_name():
    space = load_space("smoke")
    assert isinstance(make_sampler("tpe", space), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("gp", space), optuna.samplers.GPSampler)
    assert isinstance(make_sampler("grid", space), optuna.samplers.GridSampler)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        with pytest.raises(StudyError, match="pip install cmaes"):
            make_sampler("cmaes", space)
    else:
        assert isinstance(make_sampler("cmaes", space), optuna.samplers.CmaEsSampler)
    with pytest.raises(StudyError, match="grid: \\[v1"):
        make_sampler("grid", SearchSpace(name="x", params=(Param(name="optim.lr", low=1e-3, high=1e-2),)))
    with pytest.raises(StudyError, match="use one of tpe"):
        make_sampler("bayes", space)
    hyperband = make_pruner("hyperband", every_tokens=2560, max_tokens=12800)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none", every_tokens=1, max_tokens=1), optuna.pruners.NopPruner)


def test_diverging_trial_fails_with_reason_and_pruner_stops_a_bad_trial(tmp_path, cache_dir):
    spec = StudySpec(name="prune", space=load_space("smoke"), pruner="median", overrides=paths(tmp_path, cache_dir))
    opened = open_study(spec)
    assert opened.spec.storage == f"sqlite:///{tmp_path}/optuna.db", "default: beside the MLflow store"
    for lr in (1e-2, 10.0, 3e-3, 1e-6):  # good, diverging (loss > trainer.max_loss at step 2), good, clearly bad
        opened.study.enqueue_trial({"optim.lr": lr, "batch.sequences": 8})
    summary = run_trials(opened, 4)
    study = assert_each_trial_once(opened.spec.storage, "prune", opened.tracking_uri, 4)
    t = study.get_trials()
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED]
    assert "train/loss" in t[1].user_attrs["fail_reason"] and "trainer.max_loss" in t[1].user_attrs["fail_reason"]
    client = MlflowClient(opened.tracking_uri)
    assert client.get_run(t[1].user_attrs["mlflow_run_id"]).data.tags["status_reason"] == t[1].user_attrs["fail_reason"]
    pruned = client.get_run(t[3].user_attrs["mlflow_run_id"])
    assert pruned.data.tags["status_reason"].startswith("pruned at 2560 tokens by MedianPruner")
    assert list(t[3].intermediate_values) == [2560], "stopped at the first token checkpoint"
    assert sorted(t[0].intermediate_values) == [2560, 5120, 7680, 10240, 12800]
    assert t[3].intermediate_values[2560] > max(t[0].intermediate_values[2560], t[2].intermediate_values[2560]) + 0.5
    assert summary.best_trial == min((t[0], t[2]), key=lambda x: x.value).number
    assert summary.counts == {"COMPLETE": 2, "FAIL": 1, "PRUNED": 1}
    parent_tags = client.get_run(opened.parent_run_id).data.tags
    assert parent_tags["best_run_id"] == summary.best_run_id and parent_tags["trials_fail"] == "1"


def test_grid_study_on_journal_storage_visits_each_point_once(tmp_path, cache_dir):
    space_file = tmp_path / "grid.yaml"
    space_file.write_text("params:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true, grid: [1.0e-3, 1.0e-2]}\n"
                          "overrides: [experiment=smoke]\npruning: {every_tokens: 6400}\n")
    storage = f"journal:{tmp_path}/journal.log"
    spec = StudySpec(name="grid", space=load_space(str(space_file)), storage=storage, sampler="grid",
                     pruner="none", overrides=paths(tmp_path, cache_dir))
    summary = run_worker(spec, n_trials=5)  # the grid sampler stops the study once the grid is exhausted
    study = assert_each_trial_once(storage, "grid", f"sqlite:///{tmp_path}/mlflow.db", 2)
    assert sorted(t.params["optim.lr"] for t in study.trials) == [1e-3, 1e-2]
    assert summary.counts == {"COMPLETE": 2}
    assert all(sorted(t.intermediate_values) == [6400, 12800] for t in study.trials)


def test_a_study_wide_cap_stops_every_worker_at_k_trials(tmp_path, cache_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    out, = finish([worker(tmp_path, cache_dir, "capped", storage, 5, "--max-trials-total", "2")])
    assert "2 completed or pruned trials (cap --max-trials-total 2)" in out
    late, = finish([worker(tmp_path, cache_dir, "capped", storage, 5, "--max-trials-total", "2")])
    assert "cap --max-trials-total 2" in late, "a worker joining a study at its cap starts no trial"
    assert_each_trial_once(storage, "capped", f"sqlite:///{tmp_path}/mlflow.db", 2)
    bad = subprocess.run([LAB_STUDY, "--study", "capped", "--n-trials", "1", "--max-trials-total", "0"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--max-trials-total must be >= 1, got 0" in bad.stderr


def test_two_worker_processes_share_a_sqlite_study(tmp_path, cache_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    procs = [worker(tmp_path, cache_dir, "duo", storage, 3, "--seed", str(seed)) for seed in (1, 2)]
    outs = finish(procs)
    assert all("best: trial" in out for out in outs), outs
    assert_each_trial_once(storage, "duo", f"sqlite:///{tmp_path}/mlflow.db", 6)


def test_two_worker_processes_share_a_postgres_study(tmp_path, cache_dir, postgres_url):
    from tracking.store import ensure_store

    ensure_store(f"sqlite:///{tmp_path}/mlflow.db")  # the MLflow store stays SQLite; Optuna's is PostgreSQL
    procs = [worker(tmp_path, cache_dir, "pg-duo", postgres_url, 2, "--seed", str(seed)) for seed in (1, 2)]
    finish(procs)
    study = assert_each_trial_once(postgres_url, "pg-duo", f"sqlite:///{tmp_path}/mlflow.db", 4)
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(
        study.user_attrs["mlflow_parent_run_id"]).data.tags["optuna_storage"].startswith("postgresql+psycopg://")


def test_sigkilled_worker_trial_is_retried_and_resumes_its_run_from_the_checkpoint(tmp_path, cache_dir):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    beat = ("--heartbeat", "1", "--grace", "2")
    # budget.tokens=1e5: 391 steps of 256 tokens; a checkpoint every 25 steps, a pruning report every 10
    proc = worker(tmp_path, cache_dir, "crash", storage, 1, *beat, "--pruner", "none", "budget.tokens=1e5")
    last = tmp_path / "ckpt" / "smoke_study" / "crash-t0000" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # train and report past the checkpoint: those steps must not be recorded twice
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the trial finished before the worker could be killed: {err[-3000:]}"
    dead = optuna.load_study(study_name="crash", storage=storage).get_trials()[0]
    assert dead.state == TrialState.RUNNING and dead.intermediate_values, "killed mid-trial, after some reports"
    time.sleep(3)  # > grace period: the dead trial's last heartbeat is now stale

    spec = StudySpec(name="crash", space=load_space("smoke"), storage=storage, pruner="none", heartbeat_s=1,
                     grace_s=2, overrides=(*paths(tmp_path, cache_dir), "budget.tokens=1e5"))  # as the dead worker
    run_worker(spec, n_trials=1)  # its first trial fails the stale one and runs the queued retry
    study = optuna.load_study(study_name="crash", storage=storage)
    dead_after, retry = study.get_trials()
    assert dead_after.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == dead.number
    assert retry.params == dead.params
    assert sorted(retry.intermediate_values) == [2560 * k for k in range(1, 40)], "each checkpoint reported once"
    assert all(retry.intermediate_values[k] == v for k, v in dead.intermediate_values.items())

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = dead_after.user_attrs["mlflow_run_id"]
    assert retry.user_attrs["mlflow_run_id"] == run_id, "the retry continued the dead trial's run"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "crash-t0000"
    assert run.data.metrics["val/loss"] == pytest.approx(retry.value)
    tags = run.data.tags
    assert (tags["optuna_trial"], tags["optuna_retry_of"], tags["resumes"]) == ("1", "0", "1")
    assert "no Optuna heartbeat" in tags["resumed_after"] and "resumes this run from its checkpoint" in \
        tags["resumed_after"] and "status_reason" not in tags
    recorded = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert recorded == list(range(1, int(run.data.params["steps"]) + 1)), "every step exactly once across the kill"
    children = client.search_runs([run.info.experiment_id], "tags.optuna_study = 'crash'")
    assert len(children) == 2, "the study's parent and one run for both trials"
    assert tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]


def test_stale_trial_without_a_checkpoint_is_retried_as_a_new_run(tmp_path, cache_dir):
    spec = StudySpec(name="lost", space=load_space("smoke"), pruner="none", heartbeat_s=1, grace_s=1,
                     overrides=paths(tmp_path, cache_dir))
    opened = open_study(spec)
    # What a worker that died before its first checkpoint leaves: a RUNNING trial with its parameters, a heartbeat
    # that stopped, and a RUNNING MLflow run with nothing to resume.
    trial = opened.study.ask()
    params = {p.name: p.suggest(trial) for p in spec.space.params}
    opened.study._storage.record_heartbeat(trial._trial_id)
    client = MlflowClient(opened.tracking_uri)
    exp = client.get_experiment_by_name(opened.experiment).experiment_id
    dead_run = client.create_run(exp, run_name="lost-t0000").info.run_id
    trial.set_user_attr("mlflow_run_id", dead_run)
    time.sleep(2.5)  # > grace period

    run_trials(opened, n_trials=1)
    dead, retry = opened.study.get_trials()
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE and retry.params == params
    failed = client.get_run(dead_run)
    assert failed.info.status == "FAILED"
    assert "no Optuna heartbeat" in failed.data.tags["status_reason"]
    assert "a new run (no checkpoint)" in failed.data.tags["status_reason"]
    fresh = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert fresh.info.run_id != dead_run and fresh.info.run_name == "lost-t0001"
    assert fresh.info.status == "FINISHED" and fresh.data.tags["optuna_retry_of"] == "0"
    assert "resumes" not in fresh.data.tags and not dead.intermediate_values
