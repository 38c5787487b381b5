"""Optuna studies over lab runs: a search space from conf/study/, a shared storage, one MLflow child run per trial.

Workers are independent processes (``lab-study``, or ``run_worker`` in-process) that open the same study on one
storage and each run ``study.optimize`` for their own number of trials; none waits for another. The process that
creates the study (an atomic insert in the storage: exactly one wins) also creates the study's MLflow parent run
and records its id on the study; every trial becomes one child run named ``<study>-t<number>``, and trial and run
point at each other (trial user attrs ``mlflow_run_id``, ``mlflow_run_name``; run tags ``optuna_study``,
``optuna_trial``).

Storages: ``sqlite:///path.db`` (default: ``optuna.db`` beside a SQLite MLflow store), ``journal:path.log``
(Optuna's journal file, no heartbeat), ``postgresql+psycopg://user@host:5432/db`` on clusters.

A trial whose worker dies is run again, and its run continues where it stopped:

- killed (SIGKILL, a lost node): on RDB storages the next worker that starts a trial finds the trial without
  heartbeat for ``grace_s``, fails it and queues a retry with the same parameters (``StaleTrialHandler``);
- preempted (SIGTERM, SLURM): the run saves a checkpoint at that step and ends KILLED (lab.preemption), and the
  worker itself fails the trial and queues the retry before it exits, on any storage.

When the dead trial's run has a checkpoint (``<checkpoint_dir>/<experiment>/<run name>/``: run.json of that run
and last.ckpt), the retry resumes it (``resume=true``): the same MLflow run, every metric step once, ending
FINISHED; meanwhile it is KILLED with the reason, and once resumed it carries ``optuna_trial=<retry>``,
``optuna_retry_of=<first trial>``, ``resumes`` and ``resumed_after`` tags. The retry inherits the dead trial's
pruning reports (the resumed run passes those token checkpoints again with the same values and does not report them
twice). Without a checkpoint the dead run ends FAILED with its reason and the retry starts a new run,
``<study>-t<retry number>``. Each trial is retried at most ``max_retry`` times.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import optuna
import sqlalchemy.exc
from mlflow.entities import Param as Param_
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lab.preemption import Preempted
from lab.run import train
from tracking import runs as tracked
from tracking.record import FailureKind, Role, Tag
from tracking.store import ensure_store, sqlite_path
from lab.train import compose_config
from sweeps.pruning import Pruned, TokenPruning, make_pruner
from sweeps.runs import checkpoint_of
from sweeps.study_space import (Param, PruningSettings, SearchSpace, StudyError, base_overrides, format_value,
                                load_space, validate_space)

__all__ = ["SAMPLERS", "OpenStudy", "Param", "PruningSettings", "SearchSpace", "StudyError", "StudySpec",
           "StudySummary", "TrialFailed", "find_parent_run", "load_space", "make_objective", "make_sampler",
           "open_storage", "open_study", "run_trials", "run_worker", "summarize", "validate_space"]

SAMPLERS = ("tpe", "cmaes", "gp", "grid", "random")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TrialFailed(RuntimeError):
    """The trial's run ended FAILED (NaN/inf loss or above trainer.max_loss): Optuna records FAIL, the study goes on."""


def default_storage(tracking_uri: str) -> str:
    """``optuna.db`` beside a SQLite MLflow store. Runs recorded elsewhere (a tracking server, a database) come
    from workers on many machines, which a file in one working directory cannot serve: --storage is required."""
    db = sqlite_path(tracking_uri)
    if db is None:
        raise StudyError(f"tracking.uri={tracking_uri} is not a SQLite file, so there is no optuna.db beside it to "
                         "share: give --storage (lab-server prints the PostgreSQL URL to use, e.g. "
                         "postgresql+psycopg://postgres@db:5432/mlflow_optuna; sqlite:///optuna.db keeps the study "
                         "on this machine)")
    return f"sqlite:///{db.parent / 'optuna.db'}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_storage(url: str, *, heartbeat_s: Optional[int] = None, grace_s: Optional[int] = None,
                 on_stale: Optional[Callable[[optuna.Study, FrozenTrial], None]] = None) -> optuna.storages.BaseStorage:
    """An Optuna storage that many processes can open at once.

    Concurrent first use of a fresh database races in table creation, so SQLite files are created under a file
    lock (and switched to WAL, so readers never block the writers), and a server database is retried.
    """
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):].removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    heartbeat = dict(heartbeat_interval=heartbeat_s, grace_period=grace_s, heartbeat_stale_trial_callback=on_stale)
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(Path(f"{db}.lock")):
            # timeout (s): how long a writer waits for SQLite's lock instead of failing with "database is locked".
            storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, **heartbeat)
            with sqlite3.connect(db) as con:
                con.execute("PRAGMA journal_mode=WAL")
        return storage
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **heartbeat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))  # another worker is creating the tables; they exist on the next try
    raise AssertionError("unreachable")


def make_sampler(name: str, space: SearchSpace, seed: Optional[int] = None) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, constant liar: running trials count as bad so parallel workers spread out), CMA-ES,
    Gaussian-process BO, grid (over each param's ``grid`` / ``choices``) or random."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  # Optuna's CMA-ES sampler imports it lazily, at the first trial
        except ImportError:
            raise StudyError("sampler cmaes needs the `cmaes` package: pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise StudyError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")


@dataclass(frozen=True)
class StudySpec:
    """What one worker needs to join a study."""

    name: str
    space: SearchSpace
    storage: Optional[str] = None
    """Optuna storage URL; None: sqlite optuna.db beside the MLflow store."""
    sampler: str = "tpe"
    pruner: str = "median"
    overrides: tuple[str, ...] = ()
    """This worker's lab-train overrides (paths, tracking.uri, ...), applied after the space's."""
    threads: int = 1
    """torch threads per worker: one per core it owns when several workers share a machine."""
    seed: Optional[int] = None
    heartbeat_s: int = 30
    grace_s: int = 90
    """A running trial without a heartbeat for this long is failed and retried."""
    max_retry: int = 2


@dataclass
class OpenStudy:
    study: optuna.Study
    spec: StudySpec
    parent_run_id: str
    tracking_uri: str
    experiment: str
    every_tokens: int
    """Pruning checkpoint interval in tokens."""
    checkpoint_root: Path
    """``<checkpoint_dir>/<experiment>``: each trial's run keeps its checkpoints in ``<run name>/`` below it."""
    retry: StaleTrialHandler
    """Fails over a trial whose worker is gone: the storage calls it on stale trials, a preempted worker itself."""


def run_name_of(study_name: str, trial: FrozenTrial) -> str:
    """The MLflow run name of a trial: its own (``<study>-t<number>``), or that of the run its retry resumes."""
    return str(trial.user_attrs.get("mlflow_run_name", f"{study_name}-t{trial.number:04d}"))


def resumable(trial: FrozenTrial, study_name: str, checkpoint_root: Path) -> Optional[str]:
    """The MLflow run id of ``trial``'s run when its checkpoint directory holds a checkpoint of that run."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    return run_id if run_id and checkpoint_of(checkpoint_root / run_name_of(study_name, trial), run_id) else None


class StaleTrialHandler:
    """Runs in the worker that fails a trial whose worker is gone (no heartbeat, or preempted): queues a retry with
    the same parameters, which inherits the trial's pruning reports and resumes its run when a checkpoint of it
    exists; meanwhile the run is KILLED when it has a checkpoint (resumable), else FAILED (module docstring)."""

    def __init__(self, tracking_uri: str, checkpoint_root: Path, grace_s: int, max_retry: int):
        self.tracking_uri, self.checkpoint_root = tracking_uri, checkpoint_root
        self.grace_s, self.max_retry = grace_s, max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial, cause: Optional[str] = None) -> None:
        """``cause``: why the trial's worker is gone, for the run's status_reason (default: no heartbeat)."""
        cause = cause or f"worker lost: no Optuna heartbeat for {self.grace_s} s"
        retry = len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) + 1
        will_retry = retry <= self.max_retry
        has_checkpoint = resumable(trial, study.study_name, self.checkpoint_root) is not None
        resume = will_retry and has_checkpoint
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            then = (f"not retried ({self.max_retry} retries used)" if not will_retry else
                    f"queued for retry {retry} of {self.max_retry}, "
                    + ("which resumes this run from its checkpoint" if resume else "a new run (no checkpoint)"))
            tracked.end_run(MlflowClient(self.tracking_uri), run_id, "KILLED" if has_checkpoint else "FAILED",
                            f"{cause}; trial {trial.number} failed and {then}", FailureKind.INTERRUPTED)
        inherited = copy.copy(trial)  # the retry inherits the user attrs, but not why this attempt failed
        inherited.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
        queue_retry = RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry, inherit_intermediate_values=resume)
        queue_retry(study, inherited)


def find_parent_run(client: MlflowClient, experiment: str, study_name: str) -> Optional[str]:
    """The MLflow parent run of a study, found again by study name."""
    return tracked.find_run(client, experiment, {Tag.OPTUNA_STUDY: study_name, Tag.OPTUNA_ROLE: Role.PARENT})


def _create_parent_run(client: MlflowClient, spec: StudySpec, experiment: str, storage: str) -> str:
    run = client.create_run(tracked.experiment_id(client, experiment), run_name=f"study-{spec.name}", tags={
        Tag.SWEEP: spec.name, Tag.DESIGN: f"optuna:{spec.space.name}", Tag.OPTUNA_STUDY: spec.name,
        Tag.OPTUNA_ROLE: Role.PARENT, Tag.OPTUNA_STORAGE: re.sub(r"//[^@/]*@", "//***@", storage)})
    client.log_batch(run.info.run_id, params=[Param_(k, v) for k, v in
                                              {"space": spec.space.name, "sampler": spec.sampler,
                                               "pruner": spec.pruner}.items()])
    client.log_text(run.info.run_id, spec.space.to_json(), "space.json")
    return run.info.run_id


def _join(study: optuna.Study, client: MlflowClient, spec: StudySpec, tracking_uri: str, experiment: str,
          wait_s: float = 60.0) -> str:
    """The parent run id of a study another worker created, once its creator has recorded it."""
    deadline = time.monotonic() + wait_s
    while "mlflow_parent_run_id" not in (attrs := study.user_attrs) and time.monotonic() < deadline:
        time.sleep(0.2)
    if "mlflow_parent_run_id" not in attrs:  # the creator died in between: adopt or create the parent here
        parent = find_parent_run(client, experiment, spec.name) or _create_parent_run(client, spec, experiment,
                                                                                      str(spec.storage))
        study.set_user_attr("space", spec.space.to_json())
        study.set_user_attr("tracking_uri", tracking_uri)
        study.set_user_attr("mlflow_parent_run_id", parent)
        return parent
    if attrs.get("space") != spec.space.to_json():
        raise StudyError(f"study {spec.name} was created with another search space ({attrs.get('space')}); "
                         "join it with the same --space and space file, or use a new --study name")
    if attrs.get("tracking_uri") != tracking_uri:
        raise StudyError(f"study {spec.name} records its runs in {attrs.get('tracking_uri')}, not {tracking_uri}; "
                         "give tracking.uri=<that store> so every trial is a child of the study's parent run")
    return attrs["mlflow_parent_run_id"]


def open_study(spec: StudySpec) -> OpenStudy:
    """Validate the space, then create the study (and its MLflow parent run) or join it."""
    if not STUDY_NAME.match(spec.name):
        raise StudyError(f"study name {spec.name!r}: use letters, digits, '_', '.', '-' (it names runs and files)")
    base, D = validate_space(spec.space, base_overrides(spec.space, spec.threads, spec.overrides))
    uri, experiment = base.tracking.uri, base.tracking.experiment
    storage_url = spec.storage or default_storage(uri)
    spec = replace(spec, storage=storage_url)
    every = int(spec.space.pruning.every_tokens or max(1, D // 10))
    checkpoint_root = Path(base.checkpoint_dir) / experiment
    ensure_store(uri)  # once, under a lock, before any worker logs (environment.md)
    retry = StaleTrialHandler(uri, checkpoint_root, spec.grace_s, spec.max_retry)
    storage = open_storage(storage_url, heartbeat_s=spec.heartbeat_s, grace_s=spec.grace_s, on_stale=retry)
    sampler = make_sampler(spec.sampler, spec.space, spec.seed)
    pruner = make_pruner(spec.pruner, every_tokens=every, max_tokens=D // every * every,
                         startup_trials=spec.space.pruning.startup_trials,
                         warmup_tokens=spec.space.pruning.warmup_tokens)
    client = MlflowClient(uri)
    try:  # the storage's unique study name elects exactly one creator among concurrent workers
        study = optuna.create_study(storage=storage, study_name=spec.name, sampler=sampler, pruner=pruner,
                                    direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=spec.name, sampler=sampler, pruner=pruner)
        parent = _join(study, client, spec, uri, experiment)
    else:
        study.set_user_attr("space", spec.space.to_json())
        study.set_user_attr("tracking_uri", uri)
        parent = _create_parent_run(client, spec, experiment, storage_url)
        study.set_user_attr("mlflow_parent_run_id", parent)
    if client.get_run(parent).info.status != "RUNNING":
        client.update_run(parent, status="RUNNING")  # a finished study got new workers
    return OpenStudy(study, spec, parent, uri, experiment, every, checkpoint_root, retry)


def frozen_trial(trial: optuna.Trial, state: TrialState = TrialState.RUNNING) -> FrozenTrial:
    """The stored state of a trial: its user attrs and reports (a retry inherits them from the dead trial)."""
    return next(t for t in trial.study.get_trials(deepcopy=False, states=(state,)) if t.number == trial.number)


def trial_overrides(opened: OpenStudy, frozen: FrozenTrial, values: dict[str, Any]) -> tuple[list[str], str]:
    """lab-train overrides of a trial and its run name: its own run, or the dead trial's that its retry resumes."""
    spec, n = opened.spec, frozen.number
    retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    resume = retry_of is not None and resumable(frozen, spec.name, opened.checkpoint_root) is not None
    run_name = run_name_of(spec.name, frozen) if resume else f"{spec.name}-t{n:04d}"
    overrides = [*base_overrides(spec.space, spec.threads, spec.overrides),
                 *(f"{k}={format_value(v)}" for k, v in values.items()),
                 f"tracking.run_name={run_name}", f"tracking.parent_run_id={opened.parent_run_id}",
                 f"++tracking.tags.sweep={spec.name}", f"++tracking.tags.design=optuna:{spec.space.name}",
                 f"++tracking.tags.{Tag.OPTUNA_STUDY}={spec.name}", f"++tracking.tags.{Tag.OPTUNA_TRIAL}={n}",
                 *([f"++tracking.tags.{Tag.OPTUNA_RETRY_OF}={retry_of}"] if retry_of is not None else []),
                 *(["resume=true"] if resume else [])]
    return overrides, run_name


def make_objective(opened: OpenStudy) -> Callable[[optuna.Trial], float]:
    """One trial = one lab run; returns its final val/loss (nats/token), the value the study minimises."""

    def objective(trial: optuna.Trial) -> float:
        values = {p.name: p.suggest(trial) for p in opened.spec.space.params}
        frozen = frozen_trial(trial)
        overrides, run_name = trial_overrides(opened, frozen, values)
        cfg = compose_config(overrides)
        trial.set_user_attr("mlflow_run_name", run_name)
        pruning = TokenPruning(trial, opened.every_tokens, reported=frozen.intermediate_values)
        try:
            result = train(cfg, callbacks=[pruning])
        except Pruned as err:  # lab ended the run KILLED with the reason; Optuna records the trial PRUNED
            trial.set_user_attr("prune_reason", str(err))
            raise
        except Preempted as err:
            # The run is checkpointed and KILLED. Hand the trial back now (not after the heartbeat grace period, and
            # on journal storages too): FAIL, then a retry that resumes the run; then let the worker exit.
            trial.set_user_attr("fail_reason", str(err))
            opened.study.tell(trial, state=TrialState.FAIL)
            opened.retry(opened.study, frozen_trial(trial, TrialState.FAIL), cause=str(err))
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        if result.status != "FINISHED":
            trial.set_user_attr("fail_reason", result.reason)
            raise TrialFailed(f"trial {trial.number} (run {result.run_name}): {result.reason}")
        return result.final_val_loss

    return objective


@dataclass(frozen=True)
class StudySummary:
    name: str
    parent_run_id: str
    counts: dict[str, int]
    """Trials per state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    best_trial: Optional[int]
    best_value: Optional[float]
    """Final val/loss of the best trial, nats/token."""
    best_params: dict[str, Any]
    best_run_id: Optional[str]


def summarize(opened: OpenStudy) -> StudySummary:
    trials = opened.study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value) if done else None
    return StudySummary(opened.spec.name, opened.parent_run_id, dict(Counter(t.state.name for t in trials)),
                        best.number if best else None, best.value if best else None,
                        dict(best.params) if best else {}, best.user_attrs.get("mlflow_run_id") if best else None)


def record_on_parent(opened: OpenStudy, summary: StudySummary) -> None:
    """The study's state on its parent run; the parent ends FINISHED once no trial is running or queued."""
    client = MlflowClient(opened.tracking_uri)
    tags = {f"trials_{state.lower()}": str(n) for state, n in summary.counts.items()}
    if summary.best_trial is not None:
        tags.update(best_trial=str(summary.best_trial), best_run_id=str(summary.best_run_id))
        client.log_metric(opened.parent_run_id, "best/val_loss", summary.best_value, step=sum(summary.counts.values()))
    # One log_batch, not set_tag per key: MLflow's SQL set_tag is a select-then-insert that fails with a unique-key
    # violation when two workers record the same tag at once; log_batch retries that race.
    client.log_batch(opened.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    if not (summary.counts.get("RUNNING") or summary.counts.get("WAITING")):
        client.set_terminated(opened.parent_run_id, status="FINISHED")


FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
"""What a study-wide trial cap counts: trials that told the sampler something (failed ones are not counted)."""


def run_trials(opened: OpenStudy, n_trials: int, max_total: Optional[int] = None) -> StudySummary:
    """Run ``n_trials`` trials of an opened study in this process; other workers may run meanwhile.

    ``max_total`` caps the study across all its workers: no trial starts once that many have completed or been
    pruned (Optuna's MaxTrialsCallback, checked after each trial and here before the first one). Trials already
    running on other workers at that moment still finish, so the study can end up to workers - 1 above the cap.
    """
    if max_total is None or len(opened.study.get_trials(deepcopy=False, states=FINISHED_STATES)) < max_total:
        callbacks = [optuna.study.MaxTrialsCallback(max_total, states=FINISHED_STATES)] if max_total else []
        opened.study.optimize(make_objective(opened), n_trials=n_trials, catch=(TrialFailed,), callbacks=callbacks)
    summary = summarize(opened)
    record_on_parent(opened, summary)
    return summary


def run_worker(spec: StudySpec, n_trials: int, max_total: Optional[int] = None) -> StudySummary:
    """Join (or create) the study, then run ``n_trials`` trials in this process (see run_trials for max_total)."""
    return run_trials(open_study(spec), n_trials, max_total)
