"""lab-train end to end: real Lightning training recorded in a real MLflow SQLite store."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lab.run import train
from lab.train import compose_config
from sweeps.runs import resume_after_requeue

LAB_TRAIN = str(Path(sys.executable).parent / "lab-train")


def overrides(workdir: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
            f"data.cache_dir={workdir}/cache", "trainer.progress_bar=false", *extra]


def cli(workdir: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([LAB_TRAIN, *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    result = train(compose_config(overrides(workdir, "+tracking.tags.sweep=unit")))
    return workdir, result, MlflowClient(f"sqlite:///{workdir}/mlflow.db")


def test_run_records_params_metrics_tags_and_summary(smoke_run):
    workdir, result, client = smoke_run
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.status == "FINISHED"
    p = run.data.params
    assert int(p["N"]) == result.N == 12640 and int(p["N_total"]) > result.N
    assert int(p["B_tokens"]) == 8 * 32 and int(p["B_sequences"]) == 8 and int(p["seq_len"]) == 32
    assert float(p["optim.lr"]) == 3e-3 and p["optim.schedule"] == "cosine"
    assert run.data.tags["sweep"] == "unit"
    assert run.data.tags["mlflow.runName"] == result.run_name
    prefix, digest = result.run_name.rsplit("-", 1)
    assert prefix == "N1.26e04-D1.28e04-B256-lr0.003-s0" and digest == run.data.tags["run_identity"]

    steps = [s for s, _ in history(client, result.run_id, "train/loss")]
    assert steps == list(range(1, 51)), "every optimizer step once, step = optimizer step"
    for key in ("lr", "tokens", "model_flops", "batch_tokens", "grad_norm", "noise/b_simple",
                "throughput/tokens_per_s"):
        assert history(client, result.run_id, key), f"{key} not recorded"
    # A CPU is a device without a known peak: the run trains and records model FLOPs, but no MFU (issue 14).
    assert not history(client, result.run_id, "mfu") and "peak_flops" not in p
    assert float(p["model_flops_per_token"]) > 6 * result.N, "6·(N + head) + attention, more than C's 6·N"
    assert [s for s, _ in history(client, result.run_id, "val/loss")] == [25, 50]
    tokens = history(client, result.run_id, "tokens")
    assert tokens[-1] == (50, 50 * 256.0)
    loss = history(client, result.run_id, "train/loss")
    assert loss[-1][1] < loss[0][1] - 1.0, "a real model on real text learns something in 50 steps"
    val = history(client, result.run_id, "val/loss")[-1][1]
    assert val == pytest.approx(result.final_val_loss)
    bpb = history(client, result.run_id, "val/bpb")[-1][1]
    assert bpb == pytest.approx(val / math.log(2))

    summary = json.loads((Path(client.download_artifacts(result.run_id, "summary.json"))).read_text())
    assert summary["N"] == result.N and summary["D"] == 12800 and summary["C"] == pytest.approx(6 * result.N * 12800)
    assert "optim:" in Path(client.download_artifacts(result.run_id, "config.yaml")).read_text()


@pytest.mark.parametrize(
    "bad, named",
    [
        ("batch.sequences=6", "batch.sequences=6"),
        ("optim.schedule=foo", "optim.schedule='foo'"),
        ("budget.tokens=10", "budget"),
        ("model.size=0", "model.size=0"),
        ("data=tokens", "data.train"),
    ],
)
def test_invalid_config_fails_before_any_run(tmp_path, bad, named):
    proc = cli(tmp_path, *overrides(tmp_path, bad))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert named in err and "error" in err
    assert not (tmp_path / "mlflow.db").exists(), "a rejected config must not create a store or a run"


def test_unknown_key_fails_at_compose_time(tmp_path):
    proc = cli(tmp_path, *overrides(tmp_path, "optim.lrr=1"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "optim.lrr" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_diverged_run_ends_failed_with_reason(tmp_path):
    result = train(compose_config(overrides(tmp_path, "trainer.max_loss=3.0")))
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    assert result.status == "FAILED" and run.info.status == "FAILED"
    assert "train/loss" in run.data.tags["status_reason"] and "trainer.max_loss=3.0" in run.data.tags["status_reason"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    proc = cli(tmp_path, *overrides(tmp_path, "resume=true", "tracking.run_name=never-ran"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "no checkpoint to resume" in err and "never-ran" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    first = train(compose_config(overrides(tmp_path, "tracking.run_name=planned", "trainer.threads=1")))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    recorded = len(client.get_metric_history(first.run_id, "train/loss"))
    proc = cli(tmp_path, *overrides(tmp_path, "tracking.run_name=planned", "resume=true", "optim.lr=0.01",
                                    "batch.micro_batch=2"))  # another micro-batch split is allowed on resume
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "optim.lr: 0.003 at the first launch, 0.01 now" in err and "micro_batch" not in err
    assert "drop resume=true or give another tracking.run_name" in err
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and len(client.get_metric_history(first.run_id, "train/loss")) == recorded


def test_a_requeued_job_resumes_only_a_run_that_left_a_checkpoint(tmp_path):
    launch = overrides(tmp_path, "tracking.run_name=requeued")
    cfg = compose_config(launch)
    assert resume_after_requeue(launch, cfg, restart_count=1) == launch, "no checkpoint yet: start afresh"
    ckpt = tmp_path / "ckpt" / "smoke" / "requeued"
    ckpt.mkdir(parents=True)
    (ckpt / "run.json").write_text(json.dumps({"run_id": "r", "run_name": "requeued"}))
    (ckpt / "last.ckpt").write_bytes(b"")
    assert resume_after_requeue(launch, cfg, restart_count=0) == launch, "a first start is not a requeue"
    assert resume_after_requeue([*launch, "resume=false"], cfg, restart_count=2) == [*launch, "resume=true"]
    unnamed = overrides(tmp_path)
    assert resume_after_requeue(unnamed, compose_config(unnamed), restart_count=1) == unnamed


def test_sigkilled_run_resumes_into_same_run_with_every_step_once(tmp_path):
    long = ("budget.tokens=102400", "trainer.checkpoint_every_steps=40", "trainer.val_every_steps=100",
            "tracking.run_name=killme")
    proc = cli(tmp_path, *overrides(tmp_path, *long))
    last = tmp_path / "ckpt" / "smoke" / "killme" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # Let it train past the checkpoint until the store holds steps after it, which must not repeat. (The store
    # receives metrics every 0.5 s, tracking.buffer.SEND_EVERY_S, and a smoke step takes a few ms: poll, don't sleep.)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = json.loads((last.parent / "run.json").read_text())["run_id"]
    while proc.poll() is None and time.monotonic() < deadline and \
            max((s for s, _ in history(client, run_id, "train/loss")), default=0) <= 40:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    assert client.get_run(run_id).info.status == "RUNNING"
    killed_at = max(s for s, _ in history(client, run_id, "train/loss"))
    assert 40 <= killed_at < 400

    # As SLURM would requeue the killed job (a node failure): the same overrides, SLURM_RESTART_COUNT=1; the
    # submitit launchers turn them into a resume (hydra_plugins.lab_sweeper.sized_submitit).
    first_launch = overrides(tmp_path, *long)
    requeued = resume_after_requeue(first_launch, compose_config(first_launch), restart_count=1)
    assert requeued == [*first_launch, "resume=true"]
    resumed = cli(tmp_path, *requeued)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("smoke").experiment_id])) == 1

    steps = [s for s, _ in history(client, run_id, "train/loss")]
    assert steps == list(range(1, 401)), "every step exactly once across the kill"

    reference = train(compose_config(overrides(tmp_path / "ref", *long)))
    ref = MlflowClient(f"sqlite:///{tmp_path}/ref/mlflow.db")
    got, want = history(client, run_id, "train/loss"), history(ref, reference.run_id, "train/loss")
    assert max(abs(a[1] - b[1]) for a, b in zip(got, want)) < 1e-5
    assert history(client, run_id, "val/loss")[-1][1] == pytest.approx(reference.final_val_loss, abs=1e-5)


def test_store_created_by_many_processes_at_once(tmp_path):
    code = "import sys; from tracking.store import ensure_store; ensure_store(sys.argv[1])"
    uri = f"sqlite:///{tmp_path}/fresh.db"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert MlflowClient(uri).search_experiments()
