"""lab-sweep end to end: real Hydra launchers, real Lightning training, a real MLflow SQLite store.

Tiny models (experiment=smoke sizes, budgets of ~10-150 steps). The runs of one sweep are found in MLflow by the tag
``sweep``; the parent by ``sweep_parent``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lab.config import ConfigError
from sweeps.cli import run_sweep
from sweeps.designs import RunSpec
from sweeps.runs import Previous, SweepError, outcome_after_crash, plan_jobs
from tracking.record import FailureKind

SMOKE_C = {"1e9": 1e9, "3e9": 3e9}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")  # the built-in corpus is cached once for every test here


def overrides(workdir: Path, cache: Path, *extra: str) -> list[str]:
    return [f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={cache}", f"hydra.sweep.dir={workdir}/multirun", *extra]


def children(client: MlflowClient, experiment: str, sweep: str) -> dict[str, object]:
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id], f"tags.sweep = '{sweep}'")}


def steps(client: MlflowClient, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("joblib")
    cwd = os.getcwd()
    os.chdir(workdir)  # MLflow's default artifact root is ./mlruns
    try:
        summary = run_sweep(["experiment=smoke_sweep", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             *overrides(workdir, cache_dir)])
    finally:
        os.chdir(cwd)
    return workdir, summary, MlflowClient(f"sqlite:///{workdir}/mlflow.db")


def test_joblib_sweep_records_every_run_under_one_parent(joblib_sweep):
    workdir, summary, client = joblib_sweep
    assert summary.counts()["finished"] == 4 and summary.complete, summary.table()
    runs = children(client, "smoke_sweep", summary.sweep_id)
    assert set(runs) == {o.name for o in summary.outcomes} and len(runs) == 4
    for name, run in runs.items():
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == summary.parent_run_id
        assert tags["sweep"] == summary.sweep_id and tags["design"] == "isoflop" and tags["seed"] == "0"
        assert name.startswith(f"isoflop-C{tags['budget']}-N") and name.endswith("-B256-s0")
        assert params["trainer.threads"] == "1", "each of the 2 workers owns one core"
        # IsoFLOP: every size spends the budget C = 6·N·D (to within the rounding of D to whole steps)
        assert abs(float(params["C"]) - SMOKE_C[tags["budget"]]) <= 6 * float(params["N"]) * int(params["B_tokens"])
    assert {r.data.params["model.size"] for r in runs.values()} == {"1", "2"}

    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == f"sweep-{summary.sweep_id}"
    assert {k: parent.data.tags[k] for k in ("sweep_parent", "sweep_design", "sweep_status", "sweep_finished",
                                             "sweep_failed", "sweep_skipped")} == {
        "sweep_parent": summary.sweep_id, "sweep_design": "isoflop", "sweep_status": "complete",
        "sweep_finished": "4", "sweep_failed": "0", "sweep_skipped": "0"}
    assert "sweep" not in parent.data.tags, "a loader selecting the sweep's runs by tag must not get the parent"
    assert len(list((workdir / "multirun").glob("isoflop-*/.hydra/overrides.yaml"))) == 4


def test_one_C_in_params_summaries_and_the_loader(joblib_sweep):
    """C = 6·N·D in the C param, the summary artifact and the loader's frame; model FLOPs a column of their own."""
    from analysis.load import load_runs

    workdir, summary, client = joblib_sweep
    frame = load_runs(f"sqlite:///{workdir}/mlflow.db", experiment="smoke_sweep",
                      filter_tags={"sweep": summary.sweep_id})
    assert frame.height == 4 and "model_flops" in frame.columns
    for row in frame.iter_rows(named=True):
        run = client.get_run(row["run_id"])
        summary_C = json.loads(Path(run.info.artifact_uri.removeprefix("file://"), "summary.json").read_text())["C"]
        assert row["C"] == float(run.data.params["C"]) == summary_C == 6 * row["N"] * row["D"]


def test_rerun_skips_finished_resumes_interrupted_and_redoes_missing(joblib_sweep, cache_dir, monkeypatch):
    workdir, first, client = joblib_sweep
    monkeypatch.chdir(workdir)
    ids = {o.name: o.run_id for o in first.outcomes}
    killed, missing = "isoflop-C1e9-N1.26e4-B256-s0", "isoflop-C3e9-N9.76e4-B256-s0"  # 52 steps, ckpt at 25
    client.set_tag(ids[killed], "status_reason", "killed by the test")
    client.set_terminated(ids[killed], status="KILLED")
    client.delete_run(ids[missing])

    again = run_sweep(["experiment=smoke_sweep", *overrides(workdir, cache_dir)])  # basic launcher, in-process

    assert again.sweep_id == first.sweep_id and again.parent_run_id == first.parent_run_id
    by_name = {o.name: o for o in again.outcomes}
    assert again.counts() == {"finished": 2, "skipped": 2, "failed": 0, "error": 0, "active": 0, "not_run": 0}
    assert by_name[killed].resumed and by_name[killed].run_id == ids[killed], "resumed into the same run"
    assert not by_name[missing].resumed and by_name[missing].run_id != ids[missing]
    resumed = client.get_run(ids[killed])
    assert resumed.info.status == "FINISHED" and "status_reason" not in resumed.data.tags
    assert steps(client, ids[killed]) == list(range(1, 53)), "every step exactly once across the interruption"
    runs = children(client, "smoke_sweep", first.sweep_id)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[missing].data.tags["mlflow.parentRunId"] == first.parent_run_id
    parent = client.get_run(first.parent_run_id).data.tags
    assert (parent["sweep_finished"], parent["sweep_skipped"], parent["sweep_status"]) == ("2", "2", "complete")


def test_diverging_run_ends_failed_and_the_sweep_finishes(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    design = ["experiment=smoke", "sweep=lr_batch", "hydra.sweeper.design.sizes=[1]",
              "hydra.sweeper.design.tokens_per_param=[1]", "hydra.sweeper.design.lr_min=3e-3",
              "hydra.sweeper.design.lr_max=10", "hydra.sweeper.design.n_lr=2",
              "hydra.sweeper.design.batch_sequences=[8]"]
    summary = run_sweep([*design, *overrides(tmp_path, cache_dir)])
    by_lr = {o.name.split("-lr")[1]: o for o in summary.outcomes}
    assert by_lr["3e-3-s0"].status == "FINISHED"
    assert by_lr["1e1-s0"].status == "FAILED" and "trainer.max_loss=20.0" in by_lr["1e1-s0"].reason
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    failed = client.get_run(by_lr["1e1-s0"].run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["status_reason"].startswith("train/loss=")
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["sweep_failed"], parent.data.tags["sweep_status"]) == ("1", "partial")

    again = run_sweep([*design, *overrides(tmp_path, cache_dir)])  # a diverged run is run afresh, not resumed
    redo = {o.name.split("-lr")[1]: o for o in again.outcomes}
    assert redo["3e-3-s0"].status == "SKIPPED"
    assert redo["1e1-s0"].status == "FAILED" and not redo["1e1-s0"].resumed
    assert redo["1e1-s0"].run_id != by_lr["1e1-s0"].run_id


def test_a_raising_job_is_recorded_and_the_sweep_goes_on(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run_sweep(["experiment=smoke_sweep", "hydra.sweeper.design.budgets=[1e9]", "data=tokens",
                         f"data.train={tmp_path}/missing.bin", f"data.val={tmp_path}/missing.bin",
                         *overrides(tmp_path, cache_dir)])
    assert [o.status for o in summary.outcomes] == ["ERROR", "ERROR"]
    assert all("missing.bin" in o.reason for o in summary.outcomes)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["sweep_error"], parent.data.tags["sweep_status"]) == ("2", "partial")


@pytest.mark.parametrize("bad, error, named", [
    ("batch.sequences=6", ConfigError, "batch.sequences=6"),
    ("tracking.run_name=mine", SweepError, "tracking.run_name is set per run by the sweep"),
    ("model.size=3", SweepError, "model.size is set per run by the design"),
    ("hydra.sweeper.design.k=9", ValueError, "k=9 but the ladder has 3 sizes"),
])
def test_bad_sweeps_fail_before_anything_is_recorded(tmp_path, cache_dir, monkeypatch, bad, error, named):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=named):
        run_sweep(["experiment=smoke_sweep", bad, *overrides(tmp_path, cache_dir)])
    assert not (tmp_path / "mlflow.db").exists()


def test_submitit_local_runs_a_two_job_sweep_with_resources_by_size(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run_sweep(["experiment=smoke_sweep", "hydra.sweeper.design.budgets=[1e9]",
                         "hydra/launcher=slurm_local", *overrides(tmp_path, cache_dir)])
    assert summary.counts()["finished"] == 2, summary.table()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = children(client, "smoke_sweep", summary.sweep_id)
    # N = 1.26e4 falls in the first tier (max_N 5e4), N = 9.76e4 in the last: one submitit array each
    assert {n.split("-")[2]: r.data.tags["resources"] for n, r in runs.items()} == {"N1.26e4": "small",
                                                                                    "N9.76e4": "large"}
    assert all(r.data.params["trainer.threads"] == "1" for r in runs.values()), "threads = tier cpus_per_task"
    assert all(r.data.tags["mlflow.parentRunId"] == summary.parent_run_id for r in runs.values())
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2


def test_plan_skips_finished_and_resumes_only_a_checkpoint_of_the_same_run(tmp_path):
    specs = [RunSpec(f"r{i}", (f"seed={i}",)) for i in range(5)]
    prev = {"r0": Previous("a", "FINISHED", None, None, 1, 1, 1, 3.0),
            "r1": Previous("b", "KILLED", "interrupted", FailureKind.INTERRUPTED, 1, 1, 1, None),
            "r2": Previous("c", "RUNNING", None, None, 1, 1, 1, None),
            "r3": Previous("d", "FAILED", "train/loss=nan at step 3 (ceiling trainer.max_loss=20.0)",
                           FailureKind.DIVERGED, 1, 1, 1, None),
            "r4": Previous("f", "RUNNING", None, None, 1, 1, 1, None, last_active_s=1000.0)}
    for name, run_id in (("r1", "b"), ("r2", "someone-else"), ("r3", "d")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"run_id": run_id}))
        (tmp_path / name / "last.ckpt").write_bytes(b"")
    plan = plan_jobs(specs, prev, tmp_path, now_s=1000.0 + 60)
    assert [s.name for s, _ in plan.skipped] == ["r0"]
    assert [s.name for s, _ in plan.active] == ["r4"], "logged a minute ago: may still be training elsewhere"
    assert [(j.spec.name, j.resume) for j in plan.jobs] == [("r1", True), ("r2", False), ("r3", False)]
    later = plan_jobs(specs, prev, tmp_path, now_s=1000.0 + 301, resume=False)
    assert [j.spec.name for j in later.jobs][-1] == "r4" and not any(j.resume for j in later.jobs)

    crash = RuntimeError("worker died")
    fresh, resumed = plan.jobs[1], plan.jobs[0]
    assert outcome_after_crash(fresh, {"r2": prev["r2"]}, crash).status == "ERROR", "the old leftover is not news"
    assert outcome_after_crash(fresh, {"r2": Previous("e", "FINISHED", None, None, 1, 1, 1, 2.5)}, crash).status == \
        "FINISHED"
    assert outcome_after_crash(resumed, {"r1": Previous("b", "FINISHED", None, None, 1, 1, 1, 2.5)}, crash).resumed
