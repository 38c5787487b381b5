"""Fault scenarios (issue 8): a worker SIGKILLed mid-trial, a worker and a SLURM job preempted by SIGTERM.

Each ``scenario_*(workdir) -> dict`` runs real processes (``lab-study``, ``lab-sweep`` with submitit's local
executor) and returns the counts ``benchmarks/reliability.py`` sums, with one training run as the unit (one trial of
a study, however often it is retried; one run of a sweep, however often its job is requeued): ``launched``,
``recorded`` (found exactly once in MLflow, FINISHED, every metric step once), ``lost``, ``duplicated``,
``faults_injected`` and ``faults_survived`` (the fault happened mid-run and the run still ended FINISHED in the
*same* MLflow run, resumed from a checkpoint), plus what the scenario observed. Counting and auditing are shared
with reliability_scenarios.py.

    .venv/bin/python benchmarks/fault_scenarios.py --json faults.json     # these scenarios alone
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_scenarios import BIN, audit_run, build_corpus, env, problems, tally  # noqa: E402
from tracking.record import Checkpoint, Metric, Tag

PREEMPTED = re.compile(r"preempted by (SIG\w+) after step (\d+) of (\d+)")


def wait_for(ready: Callable[[], Any], proc: subprocess.Popen, what: str, timeout_s: float = 600) -> Any:
    """Poll ``ready()`` until it returns something truthy while ``proc`` runs."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if found := ready():
            return found
        time.sleep(0.05)
    raise RuntimeError(f"{what} never happened (process status {proc.poll()})")


def output(proc: subprocess.Popen, timeout_s: float = 900) -> str:
    """The output of a process that ends by itself."""
    out, _ = proc.communicate(timeout=timeout_s)
    return out or ""


def ensure_ended(proc: subprocess.Popen) -> None:
    """Kill a process a scenario started if it is still running (a scenario that failed half-way)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def study_worker(workdir: Path, study: str, *args: str) -> subprocess.Popen:
    """A ``lab-study`` worker of ``study``: smoke trials of 391 steps (budget.tokens=1e5), a checkpoint every 25
    steps, Optuna and MLflow in SQLite, heartbeat every second, a trial stale after 2 s."""
    return subprocess.Popen(
        [str(BIN / "lab-study"), "--study", study, "--storage", f"sqlite:///{workdir}/optuna.db", "--space", "smoke",
         "--n-trials", "1", "--pruner", "none", "--heartbeat", "1", "--grace", "2", *args,
         f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"checkpoint_dir={workdir}/ckpt",
         f"data.cache_dir={workdir}/cache", "budget.tokens=1e5"],
        cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def audit_retried_study(workdir: Path, study: str) -> tuple[list[Any], Any, list[Any]]:
    """(trials, the audit of the first trial's run, every MLflow run of the study but its parent)."""
    import optuna
    from mlflow.tracking import MlflowClient

    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{workdir}/optuna.db").get_trials()
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.optuna_study = '{study}'")
    runs = [r for r in found if r.data.tags.get(Tag.OPTUNA_ROLE) != "parent"]
    run_id = trials[0].user_attrs.get("mlflow_run_id")
    return trials, (audit_run(client, run_id) if run_id else None), runs


def killed_study_worker(workdir: Path, signum: int) -> dict[str, Any]:
    """A study worker gets ``signum`` once its trial has a checkpoint; a second worker takes the retry."""
    from lab.preemption import PREEMPTED_EXIT  # the exit status of a preempted worker (torch loads with lab)

    workdir.mkdir(parents=True, exist_ok=True)
    build_corpus(workdir / "cache")
    study = f"{signal.Signals(signum).name.lower()}-worker"
    first = study_worker(workdir, study)
    try:
        wait_for((workdir / "ckpt" / "smoke_study" / f"{study}-t0000" / Checkpoint.LAST).exists, first, "a checkpoint")
        time.sleep(0.3)  # train and report past it: steps the retry must not record twice
        first.send_signal(signum)
        first_out = output(first)
    finally:
        ensure_ended(first)
    mid_run = first.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else PREEMPTED_EXIT)
    if signum == signal.SIGKILL:
        time.sleep(3)  # past the grace period: the trial's heartbeat is stale
    second = study_worker(workdir, study)
    try:
        second_out = output(second)
    finally:
        ensure_ended(second)
    trials, audit, runs = audit_retried_study(workdir, study)
    retry = trials[-1] if len(trials) > 1 else None
    tags = runs[0].data.tags if len(runs) == 1 else {}
    survived = (mid_run and retry is not None and retry.state.name == "COMPLETE" and tags.get(Tag.RESUMES) == "1"
                and retry.user_attrs.get("mlflow_run_id") == trials[0].user_attrs.get("mlflow_run_id"))
    return tally(1, [audit], [len(runs)], faults=1, survived=survived, signal=signal.Signals(signum).name,
                 trials=[t.state.name for t in trials], first_exit=first.returncode, second_exit=second.returncode,
                 resumed_after=tags.get(Tag.RESUMED_AFTER),
                 output_tail="" if survived else (first_out[-1500:] + second_out[-1500:]))


def scenario_sigkill_study_worker(workdir: Path) -> dict[str, Any]:
    """SIGKILL a lab-study worker mid-trial: another worker finds the trial without heartbeat, retries it, and the
    retry resumes the trial's run from its last periodic checkpoint."""
    return killed_study_worker(workdir, signal.SIGKILL)


def scenario_sigterm_study_worker(workdir: Path) -> dict[str, Any]:
    """SIGTERM (preemption) to a lab-study worker mid-trial: the run checkpoints at that step and ends KILLED, the
    worker hands the trial back for a retry and exits; the next worker resumes the run."""
    return killed_study_worker(workdir, signal.SIGTERM)


def scenario_sigterm_slurm_job(workdir: Path) -> dict[str, Any]:
    """SIGTERM (SLURM preemption) to a sweep job of hydra/launcher=slurm_local (submitit's local executor: the signal
    goes to the job's controller, which forwards it to the task): the run checkpoints at that step and ends KILLED,
    submitit requeues the job with resume=true, the requeued job finishes the same MLflow run."""
    from mlflow.tracking import MlflowClient

    workdir.mkdir(parents=True, exist_ok=True)
    build_corpus(workdir / "cache")
    uri = f"sqlite:///{workdir}/mlflow.db"
    submitit_dir, ckpt = workdir / "multirun" / ".submitit", workdir / "ckpt" / "smoke_sweep"
    sweep = subprocess.Popen(
        [str(BIN / "lab-sweep"), "experiment=smoke_sweep", "hydra.sweeper.design.sizes=[1]",
         "hydra.sweeper.design.k=1", "hydra.sweeper.design.budgets=[1e10]", "trainer.checkpoint_every_steps=100000",
         "hydra/launcher=slurm_local", f"tracking.uri={uri}", f"checkpoint_dir={workdir}/ckpt",
         f"data.cache_dir={workdir}/cache", f"hydra.sweep.dir={workdir}/multirun"],
        cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def training_job() -> Optional[tuple[int, str]]:
        """(job id = its controller's pid, run id) once the job's run has taken 20 steps."""
        runs, jobs = list(ckpt.glob("*/run.json")), [p for p in submitit_dir.glob("*") if p.name.isdigit()]
        if not (runs and jobs):
            return None
        run_id = json.loads(runs[0].read_text())["run_id"]
        steps = len(MlflowClient(uri).get_metric_history(run_id, Metric.TRAIN_LOSS))
        return (int(jobs[0].name), run_id) if steps >= 20 else None

    try:
        job, run_id = wait_for(training_job, sweep, "a training job")
        os.kill(job, signal.SIGTERM)
        out = output(sweep)
    finally:
        ensure_ended(sweep)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    same_name = client.search_runs([run.info.experiment_id], f"tags.mlflow.runName = '{run.info.run_name}'")
    job_log = (submitit_dir / str(job) / f"{job}_0_log.out").read_text()
    stopped = PREEMPTED.search(run.data.tags.get(Tag.RESUMED_AFTER, ""))
    survived = (sweep.returncode == 0 and stopped is not None and "Requeued job" in job_log
                and run.data.tags.get(Tag.RESUMES) == "1")
    return tally(1, [audit_run(client, run_id)], [len(same_name)], faults=1, survived=survived,
                 preempted_at_step=int(stopped[2]) if stopped else None, steps=int(run.data.params["steps"]),
                 job_starts=job_log.count("Starting with JobEnvironment"), sweep_exit=sweep.returncode,
                 output_tail="" if survived else out[-3000:])


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run these scenarios only")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        for name in args.only or SCENARIOS:
            t0 = time.monotonic()
            results[name] = {**SCENARIOS[name](Path(tmp) / name), "wall_s": round(time.monotonic() - t0, 1)}
            r = results[name]
            print(f"{name}: launched {r['launched']} recorded {r['recorded']} lost {r['lost']} duplicated "
                  f"{r['duplicated']} faults survived {r['faults_survived']}/{r['faults_injected']} "
                  f"({r['wall_s']} s) {'; '.join(problems(r))}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(not problems(r) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
