"""Reliability scenarios (issue 8): concurrent workers on each store, and a tracking server that goes away mid-run.

Each ``scenario_*(workdir) -> dict`` runs real processes (``lab-study``, ``lab-train``, ``lab-server``) and returns
the counts ``benchmarks/reliability.py`` sums, with runs as the unit:

- ``launched``: runs started (trials for a study);
- ``recorded``: runs found exactly once in MLflow, FINISHED, with every metric step once;
- ``lost``: launched runs missing from MLflow, not FINISHED, or missing any metric step;
- ``duplicated``: runs recorded more than once, or with any (metric, step) recorded twice;
- ``faults_injected`` / ``faults_survived``: faults caused, and those after which the above still held;

plus ``metric_steps`` (rows expected of the per-step metrics, lost, duplicated; rows read) and what the scenario
observed. tests/test_concurrency.py and tests/lab/test_server.py run the same scenarios and assert on the results.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from tracking.record import Checkpoint, Metric, Tag

PG = "postgresql+psycopg://postgres@127.0.0.1:{port}/{db}"
PG_PORT = int(os.environ.get("LAB_POSTGRES_PORT", "5432"))
BIN = Path(sys.executable).parent
PER_STEP_KEYS = (Metric.TRAIN_LOSS, Metric.LR, Metric.TOKENS, Metric.BATCH_TOKENS, Metric.MODEL_FLOPS, Metric.GRAD_NORM)
"""Metrics lab logs at every optimizer step 1..S: each must appear exactly once per step."""
COUNT_KEYS = ("launched", "recorded", "lost", "duplicated", "faults_injected", "faults_survived")


# --- stores ------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def postgres_database(prefix: str = "lab_rel") -> Iterator[str]:
    """A fresh PostgreSQL database (and its ``_optuna`` sibling, which lab-server creates) dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="test", autocommit=True,
                            connect_timeout=5)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG.format(port=PG_PORT, db=name)
        finally:
            for db in (name, f"{name}_optuna"):
                # FORCE: connections pooled by the code under test must not keep the database alive.
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def maybe_database(url: Optional[str]) -> contextlib.AbstractContextManager[str]:
    return contextlib.nullcontext(url) if url else postgres_database()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tracking_server(workdir: Path, backend: str, workers: int = 2) -> Iterator[Any]:
    """lab-server on a free port over ``backend`` (artifacts under workdir), stopped afterwards."""
    from tracking.server import ServerConfig, ServerProcess

    cfg = ServerConfig(backend_store_uri=backend, artifacts_destination=workdir / "mlartifacts", port=free_port(),
                       workers=workers)
    server = ServerProcess(cfg, workdir / "lab-server.log")
    with server:
        yield server


def build_corpus(cache: Path) -> None:
    """The built-in corpus, built once before any worker reads it."""
    from lab.run import prepare
    from lab.train import compose_config

    prepare(compose_config(["experiment=smoke", f"data.cache_dir={cache}"]))


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


# --- auditing ----------------------------------------------------------------------------------------------------

@dataclass
class RunAudit:
    run_id: str
    status: str
    steps: int
    """S, the run's optimizer steps (its `steps` param)."""
    missing: dict[str, list[int]] = field(default_factory=dict)
    """Per-step metric -> steps in 1..S never recorded."""
    duplicated: dict[str, list[int]] = field(default_factory=dict)
    """Any metric -> steps recorded more than once."""
    rows: int = 0

    @property
    def complete(self) -> bool:
        return self.status == "FINISHED" and not self.missing and not self.duplicated


def audit_run(client: Any, run_id: str) -> RunAudit:
    """Every metric step of a run, counted from its full histories."""
    run = client.get_run(run_id)
    S = int(run.data.params["steps"])
    audit = RunAudit(run_id, run.info.status, S)
    for key in sorted(set(run.data.metrics) | set(PER_STEP_KEYS)):
        counts = Counter(m.step for m in client.get_metric_history(run_id, key))
        audit.rows += sum(counts.values())
        if dup := sorted(s for s, n in counts.items() if n > 1):
            audit.duplicated[key] = dup
        if key in PER_STEP_KEYS and (miss := sorted(set(range(1, S + 1)) - set(counts))):
            audit.missing[key] = miss
    return audit


def tally(launched: int, audits: Sequence[Optional[RunAudit]], copies: Sequence[int], faults: int = 0,
          survived: Optional[bool] = None, **observed: Any) -> dict[str, Any]:
    """The six counts from one audit per launched run (None: no run found) and how many runs each unit has."""
    found = [a for a in audits if a is not None]
    lost = sum(1 for a in audits if a is None or a.status != "FINISHED" or a.missing)
    duplicated = sum(1 for a, n in zip(audits, copies) if n > 1 or (a is not None and a.duplicated))
    recorded = sum(1 for a, n in zip(audits, copies) if a is not None and a.complete and n == 1)
    expected = sum(a.steps * len(PER_STEP_KEYS) for a in found)
    missing = sum(len(v) for a in found for k, v in a.missing.items())
    dup_rows = sum(len(v) for a in found for v in a.duplicated.values())
    ok = lost == 0 and duplicated == 0 and recorded == launched
    return {"launched": launched, "recorded": recorded, "lost": lost, "duplicated": duplicated,
            "faults_injected": faults, "faults_survived": faults if (ok and survived is not False) else 0,
            "metric_steps": {"expected": expected, "lost": missing, "duplicated": dup_rows,
                             "rows": sum(a.rows for a in found)},
            "runs": [{"run_id": a.run_id, "status": a.status, "missing": a.missing, "duplicated": a.duplicated}
                     for a in found if not a.complete], **observed}


def problems(result: dict[str, Any]) -> list[str]:
    """What a scenario's result shows went wrong; empty when every run landed once and every fault was survived."""
    found = [f"{k}: {result[k]}" for k in ("worker_errors", "store_errors") if result.get(k)]
    if result["recorded"] != result["launched"]:
        found.append(f"{result['recorded']} of {result['launched']} runs recorded completely: {result['runs']}")
    if result["lost"] or result["duplicated"]:
        found.append(f"runs lost {result['lost']}, duplicated {result['duplicated']}: {result['runs']}")
    if result["metric_steps"]["lost"] or result["metric_steps"]["duplicated"]:
        found.append(f"metric steps: {result['metric_steps']}")
    if result["faults_survived"] != result["faults_injected"]:
        found.append(f"{result['faults_survived']} of {result['faults_injected']} faults survived: "
                     f"{result.get('output_tail', '')}")
    return found


# --- concurrency: 8 lab-study workers on one study ---------------------------------------------------------------

def study_argv(workdir: Path, study: str, storage: str, tracking: Sequence[str], n_trials: int,
               seed: int) -> list[str]:
    """One ``lab-study`` worker: tiny smoke trials of S = 20 or 10 steps (B = 8 or 16 sequences), one torch thread,
    no pruning (every run trains to the end)."""
    return ["--study", study, "--storage", storage, "--space", "smoke", "--n-trials", str(n_trials),
            "--pruner", "none", "--sampler", "random", "--seed", str(seed), *tracking, "budget.tokens=5120",
            f"checkpoint_dir={workdir}/ckpt", f"data.cache_dir={workdir}/cache"]


def forked_workers(workdir: Path, argvs: Sequence[Sequence[str]], extra_env: Optional[dict[str, str]] = None,
                   timeout_s: float = 900) -> list[tuple[int, str]]:
    """(exit status, output) of ``lab-study`` workers forked from one process that imports the stack once.

    Each worker is its own process running the lab-study entry point (``sweeps.study_cli.main``) with its own
    database connections, as separate ``lab-study`` commands would; they skip only the ~12 s per process of
    importing torch, Lightning and MLflow, which is what lets eight of them share two cores in a test.
    """
    spec = workdir / "workers.json"
    spec.write_text(json.dumps([list(a) for a in argvs]))
    proc = subprocess.run([sys.executable, __file__, "fork-lab-study", str(spec)], cwd=workdir,
                          env=env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"the worker launcher failed (status {proc.returncode}): {proc.stderr[-3000:]}")
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return [(code, (workdir / f"worker-{i}.log").read_text()) for i, code in enumerate(codes)]


def _fork_lab_study(spec: Path) -> None:
    """Import lab-study once, fork one child per argv list in ``spec``, print their exit statuses as JSON."""
    import traceback

    from sweeps import study_cli

    pids = []
    for i, argv in enumerate(json.loads(spec.read_text())):
        pid = os.fork()
        if pid == 0:  # the worker: never return into this loop
            code = 1
            try:
                log = os.open(spec.parent / f"worker-{i}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(log, 1)
                os.dup2(log, 2)
                code = study_cli.main(argv)
            except SystemExit as err:
                code = err.code if isinstance(err.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))


def finish(procs: Sequence[subprocess.Popen], timeout_s: float = 600) -> list[tuple[int, str]]:
    """(exit status, output) of each process; kills the rest if one hangs."""
    deadline, out = time.monotonic() + timeout_s, []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stdout + stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


STORE_ERRORS = ("database is locked", "duplicate column", "_alembic_tmp", "already exists", "UniqueViolation",
                "IntegrityError", "Traceback")
"""Signs of a race or a failed write in a worker's output."""


def audit_study(storage: str, study_name: str, tracking_uri: str) -> tuple[int, list[Optional[RunAudit]], list[int]]:
    """Trials of a study, each trial's MLflow run audited, and how many runs claim each trial."""
    import optuna
    from mlflow.tracking import MlflowClient

    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.optuna_study = '{study_name}'", max_results=10000)
    per_trial = Counter(r.data.tags.get(Tag.OPTUNA_TRIAL) for r in runs if r.data.tags.get(Tag.OPTUNA_ROLE) != "parent")
    audits = [audit_run(client, t.user_attrs["mlflow_run_id"]) if "mlflow_run_id" in t.user_attrs else None
              for t in trials]
    return len(trials), audits, [per_trial[str(t.number)] for t in trials]


def concurrent_study(workdir: Path, storage: str, tracking: Sequence[str], tracking_uri: str, workers: int,
                     trials_per_worker: int, extra_env: Optional[dict[str, str]] = None,
                     launch: str = "exec") -> dict[str, Any]:
    study = f"conc-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    argvs = [study_argv(workdir, study, storage, tracking, trials_per_worker, seed) for seed in range(workers)]
    if launch == "fork":
        results = forked_workers(workdir, argvs, extra_env)
    else:
        results = finish([subprocess.Popen([str(BIN / "lab-study"), *argv], cwd=workdir, env=env(**(extra_env or {})),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                          for argv in argvs])
    wall = time.monotonic() - t0
    errors = [f"worker {i} exit {code}: {err[-1500:]}" for i, (code, err) in enumerate(results) if code != 0]
    store_errors = sorted({e for _, err in results for e in STORE_ERRORS if e in err})
    launched, audits, copies = audit_study(storage, study, tracking_uri)
    retries = sum(out.count("tracking store unavailable") for _, out in results)
    counts = tally(launched, audits, copies, workers=workers, expected_trials=workers * trials_per_worker,
                   worker_errors=errors, store_errors=store_errors, store_retries=retries, wall_s=round(wall, 1))
    if launched != workers * trials_per_worker:  # a trial that never started is a lost run too
        counts["lost"] += workers * trials_per_worker - launched
        counts["launched"] = workers * trials_per_worker
    return counts


def scenario_concurrency_sqlite(workdir: Path, workers: int = 8, trials_per_worker: int = 1,
                                launch: str = "exec") -> dict[str, Any]:
    """8 workers on one study: MLflow in SQLite, Optuna in SQLite, both created by whichever worker comes first.
    ``launch``: ``exec`` (a ``lab-study`` command per worker) or ``fork`` (forked_workers)."""
    workdir.mkdir(parents=True, exist_ok=True)
    build_corpus(workdir / "cache")
    uri = f"sqlite:///{workdir}/mlflow.db"
    return concurrent_study(workdir, f"sqlite:///{workdir}/optuna.db", [f"tracking.uri={uri}"], uri, workers,
                            trials_per_worker, launch=launch)


def scenario_concurrency_server(workdir: Path, workers: int = 8, trials_per_worker: int = 1,
                                backend: Optional[str] = None, launch: str = "exec") -> dict[str, Any]:
    """8 workers on one study: MLflow through lab-server (PostgreSQL), Optuna on PostgreSQL (lab-server's).
    ``backend``: an empty PostgreSQL database to use (default: a new one, dropped afterwards)."""
    workdir.mkdir(parents=True, exist_ok=True)
    build_corpus(workdir / "cache")
    with maybe_database(backend) as db, tracking_server(workdir, db) as server:
        return study_on_server(workdir, server, workers, trials_per_worker, launch)


def study_on_server(workdir: Path, server: Any, workers: int = 8, trials_per_worker: int = 1,
                    launch: str = "exec") -> dict[str, Any]:
    """Concurrent workers against a running lab-server (``ServerProcess``) and its Optuna database."""
    return concurrent_study(workdir, server.cfg.optuna_url, ["tracking=server"], server.uri, workers,
                            trials_per_worker, extra_env={"MLFLOW_TRACKING_URI": server.uri}, launch=launch)


# --- a tracking server that goes away mid-run --------------------------------------------------------------------

def metric_count(client: Any, run_id: str, key: str = Metric.TRAIN_LOSS) -> int:
    try:
        return len(client.get_metric_history(run_id, key))
    except Exception:  # noqa: BLE001 - the run or the server may not be there yet
        return 0


def watch_mtime(path: Path, since: float, seen: set[float], stop: threading.Event) -> None:
    """Collect the modification times of ``path`` after ``since`` until ``stop``: checkpoints written meanwhile."""
    while not stop.wait(0.1):
        with contextlib.suppress(FileNotFoundError):
            if (mtime := path.stat().st_mtime) > since:
                seen.add(mtime)


@dataclass
class TrainProcess:
    """A ``lab-train`` subprocess recording into a tracking server, and where its run and checkpoint are."""

    proc: subprocess.Popen
    cmd: list[str]
    run_json: Path
    last: Path
    run_id: Optional[str] = None

    def output(self, timeout_s: float = 900) -> str:
        out, _ = self.proc.communicate(timeout=timeout_s)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_training(workdir: Path, server: Any, name: str, steps: int, checkpoint_every: int,
                   *extra: str) -> TrainProcess:
    ckpt = workdir / "ckpt"
    cmd = [str(BIN / "lab-train"), "experiment=smoke", "tracking=server", f"tracking.run_name={name}",
           f"budget.tokens={steps * 256}", f"trainer.checkpoint_every_steps={checkpoint_every}",
           "trainer.threads=1", "trainer.progress_bar=false", f"checkpoint_dir={ckpt}",
           f"data.cache_dir={workdir}/cache", f"hydra.run.dir={workdir}/outputs/{name}", *extra]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env(MLFLOW_TRACKING_URI=server.uri), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # Hydra logs warnings to stdout
    run_dir = ckpt / "smoke" / name
    return TrainProcess(proc, cmd, run_dir / Checkpoint.RUN_RECORD, run_dir / Checkpoint.LAST)


def wait_for_steps(run: TrainProcess, client: Any, at_least: int, timeout_s: float = 300) -> int:
    """Wait until the run has recorded ``at_least`` steps; the number it has then."""
    deadline = time.monotonic() + timeout_s
    while run.proc.poll() is None and time.monotonic() < deadline:
        if run.run_id is None and run.run_json.exists():
            run.run_id = json.loads(run.run_json.read_text())["run_id"]
        if run.run_id and (n := metric_count(client, run.run_id)) >= at_least:
            return n
        time.sleep(0.2)
    run.kill()
    raise RuntimeError(f"lab-train recorded fewer than {at_least} steps (status {run.proc.returncode}): "
                       f"{run.output()[-3000:]}")


def outage_run(workdir: Path, server: Any, outage_s: float, mode: str = "kill", steps: Optional[int] = None,
               checkpoint_every: int = 50) -> dict[str, Any]:
    """A lab-train run through a tracking server outage of at least ``outage_s`` seconds, starting once the run has
    logged some steps. ``mode``: ``kill`` (server SIGKILLed, then started again on the same port and database after
    ``outage_s``: connections refused until it answers) or ``freeze`` (SIGSTOP, SIGCONT after ``outage_s``:
    connections accepted, never answered meanwhile)."""
    from mlflow.tracking import MlflowClient

    # Long enough to be training when the server goes (~40 ms a step unloaded); a run that reaches its end during
    # the outage waits there for its metrics to be taken.
    steps = steps or max(200, int(outage_s * 10))
    client = MlflowClient(server.uri)
    run = start_training(workdir, server, f"outage-{mode}-{uuid.uuid4().hex[:6]}", steps, checkpoint_every)
    try:
        before = wait_for_steps(run, client, 20)
        t_down = time.time()
        ckpt_writes: set[float] = set()
        watching = threading.Event()
        threading.Thread(target=watch_mtime, args=(run.last, t_down, ckpt_writes, watching), daemon=True).start()
        server.crash() if mode == "kill" else server.freeze()
        time.sleep(max(0.0, t_down + outage_s - time.time()))
        server.start() if mode == "kill" else server.thaw()  # a restarted server answers some seconds later
        t_up = time.time()
        watching.set()
        out = run.output()
    finally:
        run.kill()
    t_end = time.time()
    audit = audit_run(client, run.run_id)
    stamps = [m.timestamp / 1000 for m in client.get_metric_history(run.run_id, Metric.TRAIN_LOSS)]
    during = sum(1 for t in stamps if t_down <= t <= t_up)
    survived = run.proc.returncode == 0 and during > 0
    return tally(1, [audit], [1], faults=1, survived=survived, mode=mode, outage_s=round(t_up - t_down, 1),
                 restart_s=round(server.start_s, 1) if mode == "kill" else 0.0,
                 exit_status=run.proc.returncode, steps=audit.steps, steps_before_outage=before,
                 steps_during_outage=during, checkpoints_during_outage=len(ckpt_writes),
                 run_end_after_return_s=round(t_end - t_up, 1),
                 buffer_retries=out.count("tracking store unavailable"), run_id=run.run_id,
                 output_tail="" if survived else out[-3000:])


def pending_in_checkpoint(path: Path) -> int:
    """Metric rows a checkpoint carries for the store (lab.logger.PendingMetrics)."""
    import shutil
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:  # a copy: the run may be rewriting it
        copy = Path(tmp) / Checkpoint.LAST
        shutil.copy(path, copy)
        return len(torch.load(copy, weights_only=True, map_location="cpu").get("lab_pending_metrics", []))


def crash_during_outage_run(workdir: Path, server: Any, steps: int = 300, checkpoint_every: int = 20,
                            mode: str = "kill") -> dict[str, Any]:
    """The server goes away, the run checkpoints while it is away (the checkpoint carries the metrics the server
    never got), the run is SIGKILLed, the server comes back, ``resume=true`` continues the same run: every step
    once, FINISHED. Two faults: the outage and the kill."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    name = f"crash-{mode}-{uuid.uuid4().hex[:6]}"
    run = start_training(workdir, server, name, steps, checkpoint_every)
    resumed: Optional[TrainProcess] = None
    try:
        wait_for_steps(run, client, 10)
        server.crash() if mode == "kill" else server.freeze()
        t_down = time.time()
        deadline = time.monotonic() + 120
        while not (run.last.exists() and run.last.stat().st_mtime > t_down + 0.5) and run.proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        if run.proc.poll() is not None or not run.last.exists() or run.last.stat().st_mtime <= t_down:
            raise RuntimeError(f"no checkpoint while the server was down (status {run.proc.returncode}); "
                               f"give more steps: {run.output()[-2000:]}")
        run.proc.kill()  # SIGKILL: no cleanup, no last flush
        run.proc.wait()
        carried = pending_in_checkpoint(run.last)
        server.start() if mode == "kill" else server.thaw()
        resumed = start_training(workdir, server, name, steps, checkpoint_every, "resume=true")
        out = resumed.output()
    finally:
        for p in (run, resumed):
            if p is not None:
                p.kill()
    audit = audit_run(client, run.run_id)
    survived = resumed.proc.returncode == 0 and carried > 0
    return tally(1, [audit], [1], faults=2, survived=survived, mode=mode, carried_in_checkpoint=carried,
                 exit_status=resumed.proc.returncode, steps=audit.steps, run_id=run.run_id,
                 output_tail="" if survived else out[-3000:])


def scenario_server_outage(workdir: Path, outage_s: float = 30.0, mode: str = "kill",
                           backend: Optional[str] = None) -> dict[str, Any]:
    """The tracking server goes away for ``outage_s`` seconds while a run trains: training goes on, the buffered
    metrics arrive when the server is back, every step once, the run FINISHED."""
    workdir.mkdir(parents=True, exist_ok=True)
    build_corpus(workdir / "cache")
    with maybe_database(backend) as db, tracking_server(workdir, db, workers=1) as server:
        return outage_run(workdir, server, outage_s, mode)


def scenario_crash_during_outage(workdir: Path, backend: Optional[str] = None) -> dict[str, Any]:
    """A run killed while the tracking server is down resumes into the same run once it is back: nothing lost."""
    workdir.mkdir(parents=True, exist_ok=True)
    build_corpus(workdir / "cache")
    with maybe_database(backend) as db, tracking_server(workdir, db, workers=1) as server:
        return crash_during_outage_run(workdir, server)


def scenario_server_frozen(workdir: Path, outage_s: float = 30.0) -> dict[str, Any]:
    """As scenario_server_outage, with the server hung (SIGSTOP) instead of gone: requests wait instead of failing."""
    return scenario_server_outage(workdir, outage_s, mode="freeze")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fork-lab-study":
        _fork_lab_study(Path(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} fork-lab-study SPEC.json (used by forked_workers); "
                 "run the scenarios with benchmarks/reliability.py")
