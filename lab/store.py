"""The MLflow tracking store: created once, written through a retrying background buffer, survived when it goes away.

No torch or Lightning here (``lab.tracking`` adds the Lightning logger), so sweep and study drivers that only need
``ensure_store`` do not pay Lightning's ~8 s import.

- The store is created once before any worker logs: concurrent first use of a fresh SQLite store crashes in
  MLflow's schema migration (environment.md), so SQLite is created under a file lock and switched to WAL, and a
  PostgreSQL store is migrated under a PostgreSQL advisory lock. A tracking server (``http://``) is asked whether
  it answers, and a missing one is named with the fix instead of hanging in MLflow's four-minute HTTP retry.
- Metrics go through ``MetricBuffer``: a background thread that batches them into ``log_batch`` calls and retries,
  never dropping a batch (MLflow's own async queue drops one on error). Against a server it sends without MLflow's
  HTTP retries (exponential, up to ~4 min per call) and retries itself every few seconds, so metrics buffered
  during an outage arrive seconds after the server is back, not minutes.
- Synchronous calls (tags, summary artifacts, run termination) go through ``retrying``: transient errors are
  retried up to ``STORE_TIMEOUT_S``, then fail with a message naming the store and what could not be written.

A retried ``log_batch`` cannot duplicate a metric: each metric keeps the timestamp it was logged with, and MLflow's
SQL stores drop a metric identical in (key, timestamp, step, value) to one already recorded.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import math
import os
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional, TypeVar

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
STORE_TIMEOUT_S = float(os.environ.get("LAB_TRACKING_TIMEOUT_S", "900"))
"""How long a run keeps retrying an unreachable store before it fails with a clear error (seconds); also how long
the end of a run waits for buffered metrics. LAB_TRACKING_TIMEOUT_S overrides it."""
MAX_BACKOFF_S = 5.0
"""Longest pause between two attempts: buffered metrics arrive at most this long after the store is back."""
SEND_EVERY_S = 0.5
"""Metrics gather this long before one store call sends them: a call costs ~15 ms of CPU on SQLite, a tiny model's
step ~40 ms, so one call per step slowed small runs by a third. A flush (checkpoint without PendingMetrics, end of
run) sends at once; a checkpoint carries what is still gathering, so nothing waits on this and nothing is lost."""
SEND_TIMEOUT_S = 15.0
"""A metric batch not answered within this long is sent again (a hung server; a healthy one answers in ~50 ms)."""
SERVER_START_WAIT_S = min(30.0, STORE_TIMEOUT_S)
"""How long a run waits at start for a tracking server that does not answer (one being restarted) before failing
(LAB_TRACKING_TIMEOUT_S shortens it)."""

T = TypeVar("T")


class StoreUnavailable(ConnectionError):
    """The tracking store did not answer within the allowed time; the message names it and the fix."""


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI, None for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def is_server(uri: str) -> bool:
    """An MLflow tracking server (REST API) rather than a database the client writes itself."""
    return uri.startswith(("http://", "https://"))


def is_postgres(uri: str) -> bool:
    return uri.startswith(("postgresql://", "postgresql+"))


def hide_password(url: str) -> str:
    """A database URL fit for logs and tags: ``user:secret@`` becomes ``user:***@``."""
    head, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{head}://{creds.split(':', 1)[0]}:***@{host}"


def server_health(uri: str, timeout_s: float = 5.0) -> Optional[str]:
    """None when the tracking server at ``uri`` answers ``/health``, else why not."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"/health answered HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return f"/health answered HTTP {err.code}"
    except (OSError, ValueError) as err:  # refused, timed out, unknown host, malformed URL
        return str(getattr(err, "reason", err))


def wait_for_server(uri: str, wait_s: float = SERVER_START_WAIT_S) -> None:
    """Return once the tracking server answers; StoreUnavailable naming it and the fix after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while (reason := server_health(uri)) is not None:
        if time.monotonic() > deadline:
            raise StoreUnavailable(
                f"no MLflow tracking server answers at {uri} ({reason}; waited {wait_s:.0f} s): start one with "
                "`lab-server` (it prints the URI to give), or point tracking.uri (MLFLOW_TRACKING_URI for "
                "tracking=server) at a running server")
        time.sleep(1.0)


def _advisory_key(name: str) -> int:
    return zlib.crc32(name.encode())  # a stable 32-bit id: every process locks the same key for the same store


def libpq_url(url: str, database: Optional[str] = None) -> str:
    """SQLAlchemy's ``postgresql+psycopg://`` URL as libpq takes it (optionally naming another database)."""
    from sqlalchemy.engine import make_url

    u = make_url(url).set(drivername="postgresql")
    return (u.set(database=database) if database else u).render_as_string(hide_password=False)


def init_postgres_store(url: str, artifact_root: Optional[str] = None) -> None:
    """Create or check MLflow's tables in a PostgreSQL database, one process at a time (an advisory lock), so
    workers and server processes that start together never race in the schema migration.

    ``artifact_root``: where the Default experiment keeps its artifacts; ``mlflow-artifacts:/`` for a server that
    serves them (what ``mlflow server`` gives it), None for MLflow's client default (./mlruns).
    """
    import psycopg
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    key = _advisory_key("mlflow-schema")
    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10) as con:
        con.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:  # creates the tables, or verifies that an existing schema is current
            if artifact_root is None:
                MlflowClient(url).search_experiments(max_results=1)
            else:
                SqlAlchemyStore(url, artifact_root)
        finally:
            con.execute("SELECT pg_advisory_unlock(%s)", (key,))


def ensure_store(uri: str, wait_s: float = SERVER_START_WAIT_S) -> None:
    """Make the tracking store ready before workers start: create it once, or check that its server answers.

    Safe to call from many processes at once: SQLite is created under an exclusive file lock and switched to WAL,
    PostgreSQL under an advisory lock; the others wait and find the store ready. A tracking server that does not
    answer within ``wait_s`` seconds raises StoreUnavailable naming the URI and how to start one.
    """
    if is_server(uri):
        wait_for_server(uri, wait_s)
        return
    if is_postgres(uri):
        init_postgres_store(uri)
        return
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


def is_transient(err: BaseException) -> bool:
    """Worth retrying: connection failures, timeouts, locked databases, server errors (5xx, 429).

    A request the store understood and refused (any other 4xx: a deleted run, a bad value, a rejected Host
    header) fails the same way every time, so it is reported at once.
    """
    import sqlalchemy.exc

    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return status >= 500 or status in (408, 429)
    # OSError covers refused connections and timeouts (requests' errors too); OperationalError a locked or lost
    # database. Anything else is a bug, which retrying would only hide.
    return isinstance(err, (OSError, sqlite3.OperationalError, sqlalchemy.exc.OperationalError))


def retrying(call: Callable[[], T], what: str, uri: str, timeout_s: Optional[float] = None) -> T:
    """``call()``, retried while the store is unreachable, for at most ``timeout_s`` (default STORE_TIMEOUT_S)."""
    timeout_s = STORE_TIMEOUT_S if timeout_s is None else timeout_s
    deadline, backoff, attempts = time.monotonic() + timeout_s, 0.5, 0
    while True:
        try:
            return call()
        except Exception as err:
            attempts += 1
            if not is_transient(err):
                raise
            if time.monotonic() + backoff > deadline:
                raise StoreUnavailable(
                    f"could not {what} in the tracking store {hide_password(uri)} for {timeout_s:.0f} s "
                    f"({attempts} attempts; last error: {err}); check that the store is reachable (for a server: "
                    "`lab-server` running, its PostgreSQL up), then resume the run (resume=true)") from err
            log.warning("tracking store unavailable (%s); retrying to %s in %.1f s", err, what, backoff)
            time.sleep(backoff)
            backoff = min(2 * backoff, MAX_BACKOFF_S)


def recorded_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step recorded for each metric of a run: a resumed run logs only steps after these."""
    run = client.get_run(run_id)
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


def _batch_sender(client: MlflowClient, run_id: str) -> Callable[[list[Metric]], None]:
    """``log_batch`` for one run; against a server, one HTTP attempt per call (MetricBuffer does the retrying).

    MLflow's REST client retries a refused connection with exponential backoff for up to ~4 minutes inside one
    call, so a batch sent during a 30 s outage would land some 30 s after the server came back. The REST store is
    reached through the client's private ``_tracking_client``; should MLflow rename it, the plain (slower to
    recover, equally safe) ``log_batch`` is used.
    """
    from mlflow.store.tracking.rest_store import RestStore

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not isinstance(store, RestStore):
        return lambda batch: client.log_batch(run_id, metrics=batch, synchronous=True)

    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    endpoint = "/api/2.0/mlflow/runs/log-batch"

    def send(batch: list[Metric]) -> None:
        body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in batch])))
        response = http_request(store.get_host_creds(), endpoint, "POST", max_retries=0, timeout=SEND_TIMEOUT_S,
                                json=body)
        verify_rest_response(response, endpoint)

    return send


class MetricBuffer:
    """A background thread that sends metrics in batches and retries until the store takes them.

    A metric stays in ``pending()`` until the store has acknowledged it, so a checkpoint can carry whatever the
    store has not yet taken instead of waiting for it (``lab.tracking.PendingMetrics``).
    """

    def __init__(self, client: MlflowClient, run_id: str, max_backoff_s: float = MAX_BACKOFF_S,
                 uri: str = "the tracking store", send_every_s: float = SEND_EVERY_S):
        self._send = _batch_sender(client, run_id)
        self._send_every_s = send_every_s
        self._last_send = -math.inf
        self._flushing = 0  # flush() callers waiting: send without gathering
        self._run_id, self._uri = run_id, uri
        self._pending: collections.deque[Metric] = collections.deque()  # oldest first; popped once acknowledged
        self._cond = threading.Condition()
        self._max_backoff_s = max_backoff_s
        self._stop = False
        self.failures = 0
        """Failed attempts so far (each is retried)."""
        self.sends = 0
        """Batches the store has taken so far."""
        self.outage_s = 0.0
        """Longest time the store was unreachable during this run, seconds."""
        self.error: Optional[BaseException] = None
        """A refusal that retrying cannot fix (the run was deleted, a value was rejected): put() and flush()
        raise it."""
        self._thread = threading.Thread(target=self._loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def put(self, metrics: Iterable[Metric]) -> None:
        with self._cond:
            if self.error is not None:
                raise self._refused()
            self._pending.extend(metrics)
            self._cond.notify_all()

    def _refused(self) -> RuntimeError:
        return RuntimeError(f"the tracking store {hide_password(self._uri)} refused metrics of run {self._run_id}: "
                            f"{self.error}")

    def pending(self) -> list[Metric]:
        """Metrics not yet acknowledged by the store, oldest first (a batch in flight included)."""
        with self._cond:
            return list(self._pending)

    def flush(self, timeout_s: Optional[float] = None) -> None:
        """Block until every metric put so far is in the store (at most ``timeout_s``, default STORE_TIMEOUT_S)."""
        timeout_s = STORE_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending and self.error is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StoreUnavailable(
                            f"{len(self._pending)} metrics of run {self._run_id} could not be written to the "
                            f"tracking store {hide_password(self._uri)} within {timeout_s:.0f} s ({self.failures} "
                            "failed attempts); check that the store is reachable, then resume the run (resume=true) "
                            "to record them")
                    self._cond.wait(min(left, 1.0))
            finally:
                self._flushing -= 1
            if self.error is not None:
                raise self._refused() from self.error

    def close(self, timeout_s: Optional[float] = None) -> None:
        try:
            self.flush(timeout_s)
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                while not self._stop and not self._flushing and len(self._pending) < MAX_METRICS_PER_CALL:
                    left = self._last_send + self._send_every_s - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._stop:
                    return
                batch = [self._pending[i] for i in range(min(len(self._pending), MAX_METRICS_PER_CALL))]
            if not self._send_until_taken(batch):
                return  # refused for good (self.error), or closed while the store was away
            with self._cond:
                self._last_send = time.monotonic()
                self.sends += 1
                for _ in batch:
                    self._pending.popleft()
                self._cond.notify_all()

    def _send_until_taken(self, batch: list[Metric]) -> bool:
        """True once the store took the batch; False if it refused it for good or close() gave up on it."""
        backoff, down_since = 0.2, None
        while True:
            try:
                self._send(batch)
            except Exception as err:  # noqa: BLE001 - transient errors are retried; nothing is dropped
                if not is_transient(err):
                    with self._cond:
                        self.error = err
                        self._cond.notify_all()
                    log.error("tracking store refused %d metrics of run %s: %s", len(batch), self._run_id, err)
                    return False
                self.failures += 1
                down_since = down_since or time.monotonic()
                log.warning("tracking store unavailable (%s); retrying %d metrics in %.1f s",
                            err, len(batch), backoff)
                with self._cond:  # close() does not wait for a retry that can no longer be flushed
                    if self._stop:
                        return False
                time.sleep(backoff)
                backoff = min(2 * backoff, self._max_backoff_s)
                continue
            if down_since is not None:
                down_s = time.monotonic() - down_since
                self.outage_s = max(self.outage_s, down_s)
                log.warning("tracking store back after %.1f s; sending the buffered metrics", down_s)
            return True
