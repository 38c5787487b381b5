"""Preemption of sweep jobs and study workers: SIGTERM mid-run -> a checkpoint at that step, the job requeued (submitit)
or the trial handed back (Optuna), and the same MLflow run resumed to FINISHED with every step recorded once.

Real components throughout: submitit's local executor through `hydra/launcher=slurm_local` (the job is a controller
process and its task, and the signal goes to the controller, which forwards it to the task as SLURM signals every
process of a job), Optuna on SQLite, MLflow on SQLite, Lightning training of `experiment=smoke` models.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lab.preemption import Preempted
from sweeps.cli import run_sweep
from sweeps.study import StudySpec, load_space, open_study, run_trials

REASON = re.compile(r"^preempted by SIGTERM after step (\d+) of (\d+)")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def when(ready: Callable[[], object], then: Callable[[object], None], timeout_s: float = 300.0) -> threading.Thread:
    """Calls ``then(x)`` from a background thread once ``ready()`` returns something truthy."""
    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            x = ready()
            if x:
                then(x)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def train_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


def test_sigterm_to_a_slurm_job_checkpoints_requeues_it_and_the_run_resumes(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    submitit_dir = tmp_path / "multirun" / ".submitit"
    ckpt = tmp_path / "ckpt" / "smoke_sweep"

    def training_job() -> int | None:
        """The job's id (its controller's pid) once its run has taken a few steps."""
        runs = list(ckpt.glob("*/run.json"))
        jobs = [p for p in submitit_dir.glob("*") if p.name.isdigit()] if submitit_dir.exists() else []
        if not (runs and jobs):
            return None
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        return int(jobs[0].name) if len(train_steps(client, json.loads(runs[0].read_text())["run_id"])) >= 20 \
            else None

    signalled: list[int] = []
    watcher = when(training_job, lambda job: (os.kill(job, signal.SIGTERM), signalled.append(job)))
    # One run of ~490 steps; no periodic checkpoint, so last.ckpt can only be the one written at the signal.
    summary = run_sweep(["experiment=smoke_sweep", "hydra.sweeper.design.sizes=[1]", "hydra.sweeper.design.k=1",
                         "hydra.sweeper.design.budgets=[1e10]", "trainer.checkpoint_every_steps=100000",
                         "hydra/launcher=slurm_local", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                         f"checkpoint_dir={tmp_path}/ckpt", f"data.cache_dir={cache_dir}",
                         f"hydra.sweep.dir={tmp_path}/multirun"])
    watcher.join(timeout=1)
    assert signalled, "the job was never seen training"
    assert summary.counts()["finished"] == 1, summary.table()

    (outcome,) = summary.outcomes
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumes"] == "1"
    stopped = REASON.match(run.data.tags["resumed_after"])
    assert stopped, run.data.tags["resumed_after"]
    step, steps = int(stopped[1]), int(stopped[2])
    assert 20 <= step < steps == int(run.data.params["steps"])
    last = ckpt / outcome.name / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == step, "the checkpoint was written at the signal"
    assert train_steps(client, outcome.run_id) == list(range(1, steps + 1)), "every step once across the requeue"
    same_name = client.search_runs([run.info.experiment_id], f"tags.mlflow.runName = '{outcome.name}'")
    assert len(same_name) == 1 and run.data.tags["mlflow.parentRunId"] == summary.parent_run_id

    log = (submitit_dir / str(signalled[0]) / f"{signalled[0]}_0_log.out").read_text()  # submitit logs to stdout
    assert "Requeued job" in log, log[-3000:]
    assert log.count("Starting with JobEnvironment") == 2, "the job ran twice: before and after the requeue"


def test_sigterm_to_a_study_worker_hands_the_trial_back_and_its_retry_resumes_the_run(tmp_path, cache_dir):
    overrides = (f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/ckpt",
                 f"data.cache_dir={cache_dir}", "budget.tokens=1e5")  # 391 steps, a checkpoint every 25
    spec = StudySpec(name="pre", space=load_space("smoke"), pruner="none", overrides=overrides)
    opened = open_study(spec)
    outside_training: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: outside_training.append(signum))
    try:
        # The periodic checkpoint at step 25 exists only while the trial trains: this worker is signalled then.
        when(lambda: (tmp_path / "ckpt" / "smoke_study" / "pre-t0000" / "last.ckpt").exists(),
             lambda _: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Preempted) as stop:
            run_trials(opened, n_trials=1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not outside_training, "the signal arrived before or after training"

    dead, queued = opened.study.get_trials()
    assert dead.state == TrialState.FAIL and queued.state == TrialState.WAITING and queued.params == dead.params
    assert dead.user_attrs["fail_reason"] == str(stop.value) and "fail_reason" not in queued.user_attrs
    client = MlflowClient(opened.tracking_uri)
    run_id = dead.user_attrs["mlflow_run_id"]
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["status_reason"].startswith(f"preempted by SIGTERM after step {stop.value.step} ")
    assert "queued for retry 1 of 2, which resumes this run from its checkpoint" in killed.data.tags["status_reason"]
    assert train_steps(client, run_id) == list(range(1, stop.value.step + 1))

    summary = run_trials(opened, n_trials=1)  # a worker (here the same one, restarted) takes the retry
    retry = opened.study.get_trials()[1]
    assert retry.state == TrialState.COMPLETE and summary.best_run_id == run_id == retry.user_attrs["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optuna_trial"] == "1" and run.data.tags["resumes"] == "1"
    assert train_steps(client, run_id) == list(range(1, int(run.data.params["steps"]) + 1))
    assert sorted(retry.intermediate_values) == [2560 * k for k in range(1, 40)]
