"""MLflow run lifecycle: store creation, batched background logging, exactly-once metrics across resumes.

Lightning's ``MLFlowLogger`` owns run creation, params and termination; this module adds what a scaling study
needs on top of it:

- the store is created once, under a file lock, before any worker logs (concurrent first use of a fresh SQLite
  store crashes in MLflow's schema migration, see environment.md), and SQLite is switched to WAL;
- metrics go through a background thread that batches them into ``log_batch`` calls and *retries* while the
  store is unreachable (MLflow's own async queue drops a batch on error), so training never waits on tracking;
- ``flush()`` runs before every checkpoint is written, so every step up to a checkpoint is durable, and on resume
  the steps already recorded are skipped (a resumed run recomputes them bit-for-bit), so each step lands once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import queue
import sqlite3
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI, None for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def ensure_store(uri: str) -> None:
    """Create the tracking store once, before workers start, and put SQLite in WAL mode.

    Safe to call from many processes at once: the first one migrates the schema under an exclusive file lock,
    the others wait for it and find the store ready.
    """
    db = sqlite_path(uri)
    if db is None:
        MlflowClient(uri).search_experiments(max_results=1)
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            with sqlite3.connect(db) as con:
                # WAL lets readers (the dashboard) and many writers share the file without "database is locked".
                con.execute("PRAGMA journal_mode=WAL")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def git_state(cwd: str | Path = ".") -> dict[str, str]:
    """Commit and dirty flag of the code that runs, for the run's tags; empty outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": str(bool(status.stdout.strip())).lower()}


def recorded_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step recorded for each metric of a run: a resumed run logs only steps after these."""
    run = client.get_run(run_id)
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


class MetricBuffer:
    """A background thread that sends metrics in batches and retries until the store takes them."""

    def __init__(self, client: MlflowClient, run_id: str, max_wait_s: float = 1.0, max_backoff_s: float = 10.0):
        self._client = client
        self._run_id = run_id
        self._queue: queue.Queue[Optional[Metric]] = queue.Queue()  # None: close() waking the thread
        self._max_wait_s = max_wait_s
        self._max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def put(self, metrics: list[Metric]) -> None:
        for m in metrics:
            self._queue.put(m)

    def flush(self, timeout_s: float = 300.0) -> None:
        """Block until every metric put so far is in the store."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self._queue.unfinished_tasks} metrics of run {self._run_id} could not be written to the "
                    f"tracking store within {timeout_s:.0f} s ({self.failures} failed attempts); check that the "
                    "store is reachable, then resume the run (resume=true) to record them")
            time.sleep(0.01)

    def close(self, timeout_s: float = 300.0) -> None:
        self.flush(timeout_s)
        self._stop.set()
        self._queue.put(None)  # wake the thread now, not after its max_wait_s poll (~1 s per run otherwise)
        self._thread.join(timeout=5)

    def _take_batch(self) -> list[Metric]:
        try:
            first = self._queue.get(timeout=self._max_wait_s)
        except queue.Empty:
            return []
        if first is None:  # close(): everything before it is flushed already
            self._queue.task_done()
            return []
        batch = [first]
        while len(batch) < MAX_METRICS_PER_CALL:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            backoff = 0.2
            while batch:
                try:
                    self._client.log_batch(self._run_id, metrics=batch, synchronous=True)
                except Exception as err:  # noqa: BLE001 - any store error is retried; nothing is dropped
                    self.failures += 1
                    log.warning("tracking store unavailable (%s); retrying %d metrics in %.1f s",
                                err, len(batch), backoff)
                    time.sleep(backoff)
                    backoff = min(2 * backoff, self._max_backoff_s)
                    continue
                for _ in batch:
                    self._queue.task_done()
                batch = []


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger with batched, retrying, exactly-once metric logging."""

    def __init__(self, *args: Any, skip_through: Optional[Mapping[str, int]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._skip_through = dict(skip_through or {})
        self._buffer: Optional[MetricBuffer] = None

    @property
    def buffer(self) -> MetricBuffer:
        if self._buffer is None:
            self._buffer = MetricBuffer(self.experiment, self.run_id)
        return self._buffer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        step = int(step or 0)
        now_ms = int(time.time() * 1000)
        batch = [
            Metric(key=k, value=float(v), timestamp=now_ms, step=step)
            for k, v in metrics.items()
            if step > self._skip_through.get(k, -1) and not isinstance(v, str)
        ]
        if batch:
            self.buffer.put(batch)

    @rank_zero_only
    def flush(self) -> None:
        if self._buffer is not None:
            self._buffer.flush()

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.experiment.set_tag(self.run_id, k, str(v))

    @rank_zero_only
    def log_summary(self, summary: Mapping[str, Any], config_yaml: str) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
        self.experiment.log_text(self.run_id, json.dumps(clean, indent=2, sort_keys=True), "summary.json")
        self.experiment.log_text(self.run_id, config_yaml, "config.yaml")

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        super().finalize(status)
