"""Run identity end to end: two runs that differ only in a setting the name leaves out never share a name or a
checkpoint directory; a fresh launch into another run's directory refuses; one bad job of a multirun does not stop
the others; the record carries the code's commit and system metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lab.config import ConfigError
from lab.identity import run_identity
from lab.run import prepare, train
from lab.train import compose_config
from tracking.record import Checkpoint, Tag

LAB_TRAIN = str(Path(sys.executable).parent / "lab-train")


def overrides(workdir: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache", "trainer.progress_bar=false", *extra]


def test_identity_follows_the_trajectory_settings_only():
    base = compose_config(["experiment=smoke"])
    assert run_identity(base) == run_identity(compose_config(["experiment=smoke", "trainer.progress_bar=false",
                                                              "batch.micro_batch=2", "tracking.experiment=x"]))
    assert len({run_identity(compose_config(["experiment=smoke", o])) for o in
                ("optim=wsd", "optim=cosine", "model=mup", "model.init_std=0.01", "seed=1")}) == 5


def test_multirun_gives_each_run_its_own_name_and_directory_and_a_bad_job_fails_alone(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([LAB_TRAIN, "-m", *overrides(tmp_path, "optim=cosine,wsd", "optim.lr=3e-3,-1"),
                          f"hydra.sweep.dir={tmp_path}/multirun"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0, "the multirun reports its failed jobs"
    assert out.stderr.count("optim.lr=-1") >= 2, out.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert sorted(r.data.params["optim.schedule"] for r in runs) == ["cosine", "wsd"], "the good jobs ran"
    assert all(r.info.status == "FINISHED" for r in runs)
    names = {r.info.run_name for r in runs}
    assert len(names) == 2 and all(n.startswith("N1.26e04-D1.28e04-B256-lr0.003-s0-") for n in names)
    dirs = {n: tmp_path / "ckpt" / "smoke" / n for n in names}
    assert all((d / Checkpoint.LAST).is_file() and (d / Checkpoint.RUN_RECORD).is_file() for d in dirs.values())
    for r in runs:
        assert r.data.tags[Tag.IDENTITY] == r.info.run_name.rsplit("-", 1)[1]


def test_fresh_launch_into_another_runs_directory_refuses(tmp_path):
    first = train(compose_config(overrides(tmp_path, "tracking.run_name=mine", "tracking.system_metrics_s=0.2")))
    with pytest.raises(ConfigError, match=r"belongs to run mine .*optim\.schedule: 'cosine' there, 'wsd' now"):
        prepare(compose_config(overrides(tmp_path, "tracking.run_name=mine", "optim=wsd")))
    again = prepare(compose_config(overrides(tmp_path, "tracking.run_name=mine")))  # the same run started over
    assert again.run_name == "mine"

    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(first.run_id)
    tags = run.data.tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                            text=True).stdout.strip()
    assert tags[Tag.SOURCE_COMMIT] == tags[Tag.GIT_COMMIT] == commit, "the commit of the code that ran"
    assert Tag.SOURCE_REPO in tags
    assert any(k.startswith("system/cpu") for k in run.data.metrics), sorted(run.data.metrics)


def test_a_batch_schedule_logs_the_lr_rescaling_it_applies(tmp_path):
    result = train(compose_config(overrides(tmp_path, "batch=stepwise", "batch.start_sequences=4", "batch.sequences=8",
                                            "batch.micro_batch=4", "batch.milestones=[[4096,8]]")))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    plan = Path(client.download_artifacts(result.run_id, "plan.txt", str(tmp_path))).read_text()
    assert "batch 4 -> 8 sequences" in plan and "lr x1.414 vs the initial batch" in plan, plan
