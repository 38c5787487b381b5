"""Run lifecycle in MLflow, shared by lab-train, lab-sweep and lab-study: experiments, parent runs, the source of
the code, ends with a reason and a kind, and reopening a stopped run.

Every tag name comes from ``tracking.record``; a failure is recorded twice, as words (``status_reason``) and as a
machine-readable ``status_kind`` (``FailureKind``), so nothing downstream parses a message.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Optional

from mlflow.entities import Param as MlflowParam
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.record import Tag

REASON_LIMIT = 5000
"""MLflow tag values hold at most 8,000 characters (5,000 on older stores)."""


def _git(cwd: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def source_tags(code_dir: str | Path) -> dict[str, str]:
    """Commit, dirty flag and remote of the repository holding ``code_dir`` (the code that runs, not the directory
    the run was launched from), as the project's tags and MLflow's own ``mlflow.source.git.*``; empty outside a git
    checkout (an installed wheel)."""
    cwd = Path(code_dir).resolve()
    commit = _git(cwd, "rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(_git(cwd, "status", "--porcelain", "--untracked-files=no"))
    tags = {Tag.GIT_COMMIT: commit, Tag.GIT_DIRTY: str(dirty).lower(), Tag.SOURCE_COMMIT: commit}
    remote = _git(cwd, "config", "--get", "remote.origin.url")
    return {**tags, Tag.SOURCE_REPO: remote or str(Path(_git(cwd, "rev-parse", "--show-toplevel") or cwd))}


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if missing (another process may create it at the same moment)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def find_run(client: MlflowClient, experiment: str, tags: Mapping[str, str]) -> Optional[str]:
    """The oldest active run of ``experiment`` carrying every tag of ``tags``, or None."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    where = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp.experiment_id], where, order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def open_parent(client: MlflowClient, experiment: str, key: Mapping[str, str], run_name: str,
                tags: Mapping[str, str], params: Mapping[str, object]) -> tuple[str, bool]:
    """The parent run of a sweep or a study, found again by its ``key`` tags or created with ``tags`` and
    ``params``; RUNNING either way. Returns (run id, created)."""
    found = find_run(client, experiment, key)
    if found is not None:
        client.update_run(found, status="RUNNING")
        return found, False
    run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags={**key, **tags})
    if params:
        client.log_batch(run.info.run_id, params=[MlflowParam(k, str(v)) for k, v in params.items()])
    return run.info.run_id, True


def end_run(client: MlflowClient, run_id: str, status: str, reason: str, kind: str) -> None:
    """End a run that did not finish: its MLflow status, why in words and the FailureKind."""
    client.log_batch(run_id, tags=[RunTag(Tag.STATUS_REASON, reason[:REASON_LIMIT]), RunTag(Tag.STATUS_KIND, kind)])
    client.set_terminated(run_id, status=status)


def recorded_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step recorded for each metric of a run: a resumed run logs only steps after these."""
    run = client.get_run(run_id)
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


def reopen_run(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> int:
    """A stopped run continues (resume=true): RUNNING again, why it stopped kept as ``resumed_after`` (its
    ``status_reason`` and ``status_kind`` cleared), ``resumes`` counted, this launch's tags set. Returns the resume
    count."""
    run = client.get_run(run_id)
    reason = run.data.tags.get(Tag.STATUS_REASON)
    resumes = int(run.data.tags.get(Tag.RESUMES, "0")) + 1
    new = {**tags, Tag.RESUMES: str(resumes), **({Tag.RESUMED_AFTER: reason} if reason else {})}
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in new.items()])
    for key in (Tag.STATUS_REASON, Tag.STATUS_KIND):
        if key in run.data.tags:
            client.delete_tag(run_id, key)
    client.update_run(run_id, status="RUNNING")
    return resumes


@contextlib.contextmanager
def system_metrics(run_id: Optional[str], uri: str, interval_s: Optional[float]) -> Iterator[None]:
    """CPU, memory, disk, network (and GPU where present) as ``system/*`` metrics through MLflow's own monitor,
    sampled every ``interval_s`` seconds while the block runs; nothing when ``interval_s`` or ``run_id`` is None.

    Stopped before the run ends: the monitor stops by itself once the run is no longer RUNNING."""
    if run_id is None or interval_s is None:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop notes on every run
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
