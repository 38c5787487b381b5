"""Issue 19's small fixes in lab: unknown keys refused, the peak lr a batch schedule used recorded beside optim.lr,
and a run killed before its first checkpoint closed KILLED by the next launch of its name."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lab.config import ConfigError
from lab.run import train
from lab.train import compose_config
from tracking.record import Checkpoint, FailureKind, Param, Tag

LAB_TRAIN = str(Path(sys.executable).parent / "lab-train")


def overrides(workdir: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache", "trainer.progress_bar=false", *extra]


@pytest.mark.parametrize("bad, named, hint", [("+optim.lrr=1e-3", "optim.lrr", "optim.lr"),
                                              ("+trainer.thread=1", "trainer.thread", "trainer.threads"),
                                              ("+foo=1", "foo", None)])
def test_a_key_the_schema_lacks_is_refused_naming_it(bad, named, hint):
    with pytest.raises(ConfigError) as err:
        compose_config(["experiment=smoke", bad])
    assert f"no field {named}" in str(err.value)
    if hint:
        assert f"did you mean {hint}?" in str(err.value)


def test_free_form_tags_still_take_any_key():
    assert compose_config(["experiment=smoke", "+tracking.tags.note=x"]).tracking.tags == {"note": "x"}


def test_lab_train_refuses_a_plus_typo_before_recording_anything(tmp_path):
    proc = subprocess.run([LAB_TRAIN, *overrides(tmp_path, "+optim.lrr=1e-3")], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "optim.lrr" in proc.stderr and "did you mean optim.lr?" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_stepwise_run_records_the_peak_lr_it_used_and_closes_an_abandoned_launch(tmp_path):
    run_name = "stepwise-peak"
    # milestones at 4,096 tokens (8 -> 16 sequences of 32 tokens): the lr is rescaled by sqrt(16/8) after it
    cfg = compose_config(overrides(tmp_path, "batch=stepwise", "batch.start_sequences=4", "batch.sequences=8",
                                   "batch.micro_batch=4", "batch.milestones=[[4096,8]]", "optim=constant",
                                   "optim.lr=3e-3", f"tracking.run_name={run_name}"))
    # an earlier launch of this run name, killed before its first checkpoint: RUNNING, run.json, no last.ckpt
    client = MlflowClient(cfg.tracking.uri)
    from tracking.store import ensure_store
    ensure_store(cfg.tracking.uri)
    exp = client.create_experiment(cfg.tracking.experiment)
    stale = client.create_run(exp, run_name=run_name).info.run_id
    ckpt = Checkpoint.run_dir(cfg.checkpoint_dir, cfg.tracking.experiment, run_name)
    ckpt.mkdir(parents=True)
    (ckpt / Checkpoint.RUN_RECORD).write_text(json.dumps({"run_id": stale, "run_name": run_name}))

    result = train(cfg)
    assert result.status == "FINISHED"
    params = client.get_run(result.run_id).data.params
    assert float(params["optim.lr"]) == pytest.approx(3e-3)
    assert float(params[Param.LR_PEAK_USED]) == pytest.approx(3e-3 * math.sqrt(2))
    old = client.get_run(stale)
    assert old.info.status == "KILLED"
    assert old.data.tags[Tag.STATUS_KIND] == FailureKind.INTERRUPTED
    assert "before its first checkpoint" in old.data.tags[Tag.STATUS_REASON]
