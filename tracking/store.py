"""The MLflow tracking store: created once before workers start, reached with bounded retries.

No torch or Lightning here, so sweep and study drivers that only need ``ensure_store`` do not pay Lightning's ~8 s
import. Metrics go through ``tracking.buffer.MetricBuffer``; run lifecycle is ``tracking.runs``.

- The store is created once before any worker logs: concurrent first use of a fresh SQLite store crashes in
  MLflow's schema migration (environment.md), so SQLite is created under a file lock and switched to WAL, and a
  PostgreSQL store is migrated under a PostgreSQL advisory lock. A tracking server (``http://``) is asked whether
  it answers, and a missing one is named with the fix instead of hanging in MLflow's four-minute HTTP retry.
- Synchronous calls (tags, summary artifacts, run termination) go through ``retrying``: transient errors are
  retried up to ``STORE_TIMEOUT_S``, then fail with a message naming the store and what could not be written.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Optional, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

STORE_TIMEOUT_S = float(os.environ.get("LAB_TRACKING_TIMEOUT_S", "900"))
"""How long a run keeps retrying an unreachable store before it fails with a clear error (seconds); also how long
the end of a run waits for buffered metrics. LAB_TRACKING_TIMEOUT_S overrides it."""
MAX_BACKOFF_S = 5.0
"""Longest pause between two attempts: buffered metrics arrive at most this long after the store is back."""
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
