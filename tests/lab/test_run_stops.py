"""Preemption inside lab: a signal in the middle of a step -> a checkpoint of that step, the MLflow run KILLED with
its reason and ``Preempted`` raised; ``resume=true`` then continues the same run, every step recorded once. A run
stopped on purpose by a callback (``StopRun``) ends KILLED, not FAILED.

Runs are in-process `experiment=smoke` models sharing one MLflow store; the test's own callback sends this process
the signal at the start of a chosen step, so the step the run stops at is known exactly.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from lab.preemption import Preempted, StopRun
from lab.run import train
from lab.train import compose_config

STEPS = 100  # budget.tokens = 100 steps x 256 tokens
HANDLED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def overrides(workdir: Path, name: str, *extra: str) -> list[str]:
    return ["experiment=smoke", f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache", "trainer.progress_bar=false", f"budget.tokens={STEPS * 256}",
            "trainer.val_every_steps=20", f"tracking.run_name={name}", *extra]


class SignalAt(L.Callback):
    """Sends this process ``signum`` as optimizer step ``step`` (1-based) begins: it lands mid-step."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if int(batch["step"]) + 1 == self.step:
            os.kill(os.getpid(), self.signum)


class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(batch["step"]) + 1 == self.step:
            raise StopRun(f"stopped by the test at step {self.step}")


def steps(client: MlflowClient, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One MLflow store and corpus for the module (a new store costs seconds); runs differ by name."""
    return tmp_path_factory.mktemp("preemption")


@pytest.fixture(scope="module")
def reference(workdir) -> dict[int, float]:
    """train/loss of the same run, never interrupted."""
    result = train(compose_config(overrides(workdir, "reference")))
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    return {m.step: m.value for m in client.get_metric_history(result.run_id, "train/loss")}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_signal_mid_step_checkpoints_that_step_and_resume_continues_the_run(workdir, reference, signum):
    name = signal.Signals(signum).name
    handlers = {s: signal.getsignal(s) for s in HANDLED}
    cfg = compose_config(overrides(workdir, name, "trainer.checkpoint_every_steps=25"))
    with pytest.raises(Preempted) as stop:
        train(cfg, callbacks=[SignalAt(signum, step=37)])
    ckpt_dir = workdir / "ckpt" / "smoke" / name
    assert stop.value.step == 37 and stop.value.checkpoint == ckpt_dir / "last.ckpt" and stop.value.code == 75
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 37, "not the periodic one at 25"

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run_id = json.loads((ckpt_dir / "run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["status_reason"].startswith(f"preempted by {name} after step 37 of {STEPS}")
    assert steps(client, run_id) == list(range(1, 38)), "every step up to the checkpoint is in the store"

    result = train(compose_config(overrides(workdir, name, "trainer.checkpoint_every_steps=25", "resume=true")))
    run = client.get_run(run_id)
    assert result.run_id == run_id and result.status == "FINISHED" and run.info.status == "FINISHED"
    assert "status_reason" not in run.data.tags and run.data.tags["resumes"] == "1"
    assert run.data.tags["resumed_after"].startswith(f"preempted by {name} after step 37")
    assert steps(client, run_id) == list(range(1, STEPS + 1)), "every step exactly once across the preemption"
    got = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert max(abs(got[s] - reference[s]) for s in reference) < 1e-5, "the resumed run is the uninterrupted one"
    assert len(client.search_runs([run.info.experiment_id], f"tags.mlflow.runName = '{name}'")) == 1
    assert {s: signal.getsignal(s) for s in HANDLED} == handlers, "the process's own handlers are back"


def test_a_run_stopped_by_a_callback_ends_killed_with_its_reason(workdir):
    handlers = {s: signal.getsignal(s) for s in HANDLED}
    with pytest.raises(StopRun, match="stopped by the test at step 10"):
        train(compose_config(overrides(workdir, "stopped")), callbacks=[StopAt(10)])
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                "tags.mlflow.runName = 'stopped'")
    assert run.info.status == "KILLED" and run.data.tags["status_reason"] == "stopped by the test at step 10"
    assert steps(client, run.info.run_id) == list(range(1, 11))
    assert {s: signal.getsignal(s) for s in HANDLED} == handlers
