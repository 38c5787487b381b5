"""The tabulated LR schedule (optim.schedule=table): exact interpolated values, validation before any run starts,
and a real smoke run that trains with it, logs the lr the table gives and records the table as an artifact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.config import ConfigError, OptimConfig
from lab.schedules import LRSchedule, ScheduleError, lr_multiplier, read_lr_table
from tracking.record import Artifact, Metric

TABLE = ((0.0, 0.0), (0.1, 1.0), (0.8, 1.0), (1.0, 0.2))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_table_interpolates_linearly_in_the_fraction_of_tokens():
    s = LRSchedule("table", 0, 1000, table=TABLE)
    assert [lr_multiplier(t, s) for t in (0, 50, 100, 500, 800, 900, 1000, 2000)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 1.0, 0.6, 0.2, 0.2])


@pytest.mark.parametrize("table, words", [
    (((0.0, 1.0),), "at least (0, m0) and (1, m1)"),
    (((0.1, 1.0), (1.0, 0.5)), "make it start at 0 and end at 1"),
    (((0.0, 1.0), (0.5, 0.5), (0.5, 0.4), (1.0, 0.1)), "does not increase"),
    (((0.0, 1.0), (1.0, 1.5)), "outside [0, 1]"),
])
def test_bad_tables_are_refused(table, words):
    with pytest.raises(ScheduleError, match=None) as err:
        LRSchedule("table", 0, 1000, table=table)
    assert words in str(err.value)


def test_optim_config_reads_and_checks_the_table_up_front(tmp_path):
    good = write(tmp_path / "good.csv", "fraction,lr_multiplier\n0,0\n0.1,1\n1,0.1\n")
    assert read_lr_table(str(good)) == ((0.0, 0.0), (0.1, 1.0), (1.0, 0.1))
    OptimConfig(schedule="table", table=str(good))
    cases = [({"schedule": "table"}, "optim.table=path/to/schedule.csv"),
             ({"schedule": "cosine", "table": str(good)}, "only read with optim.schedule=table"),
             ({"schedule": "table", "table": str(tmp_path / "nope.csv")}, "cannot read LR table"),
             ({"schedule": "table", "table": str(write(tmp_path / "cols.csv", "f,m\n0,1\n1,1\n"))}, "lacks columns"),
             ({"schedule": "table", "table": str(write(tmp_path / "nan.csv", "fraction,lr_multiplier\n0,1\n1,\n"))},
              "not a number")]
    for kwargs, words in cases:
        with pytest.raises(ConfigError) as err:
            OptimConfig(**kwargs)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_smoke_run_trains_with_a_table(tmp_path):
    from mlflow import MlflowClient

    from lab.run import train
    from lab.train import compose_config

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    table = write(tmp_path / "chosen.csv", "fraction,lr_multiplier\n0,0\n0.1,1\n0.8,1\n1,0.2\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(compose_config(["experiment=smoke", f"tracking.uri={uri}", f"checkpoint_dir={tmp_path}/ckpt",
                                   f"data.cache_dir={tmp_path}/cache", "trainer.progress_bar=false",
                                   "trainer.threads=1", "budget.tokens=5120", "optim.lr=1e-3",
                                   "optim.schedule=table", f"optim.table={table}"]))
    assert result.status == "FINISHED"
    client = MlflowClient(uri)
    lrs = {m.step: m.value for m in client.get_metric_history(result.run_id, Metric.LR)}
    steps = len(lrs)  # 20 steps: step s (1-based) is evaluated at the fraction s/20 of the tokens
    assert lrs[1] == pytest.approx(1e-3 * 0.5) and lrs[10] == pytest.approx(1e-3)
    assert lrs[steps] == pytest.approx(1e-3 * 0.2) and lrs[18] == pytest.approx(1e-3 * 0.6)
    artifact = Path(client.download_artifacts(result.run_id, Artifact.LR_TABLE, str(tmp_path / "dl")))
    assert artifact.read_text() == table.read_text()
