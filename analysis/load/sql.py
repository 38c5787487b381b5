"""Fast path: read MLflow's SQL tables straight into polars, one query per table.

The only module in ``analysis`` that knows MLflow's storage schema (checked against mlflow 3.17's store, created
by ``MlflowClient``; every column read here also exists in mlflow 2.x stores). What it relies on:

- ``experiments(experiment_id, name, lifecycle_stage)``, ``runs(run_uuid, name, experiment_id, status, start_time,
  end_time, artifact_uri, lifecycle_stage)``; deleted runs and experiments have ``lifecycle_stage = 'deleted'``.
- ``tags`` / ``params(key, value, run_uuid)``.
- ``metrics(key, value, timestamp, run_uuid, step, is_nan)`` with primary key (key, timestamp, step, run_uuid, value,
  is_nan): the same (key, step) may appear more than once if it was logged twice. NaN is stored as value 0 with
  is_nan true; ±inf as ±1.7976931348623157e308 (MLflow's own reader returns that too, so both paths agree).
- ``latest_metrics(key, value, timestamp, step, is_nan, run_uuid)``: MLflow's latest value per (run, key), the one
  with the highest (step, timestamp, value).

Runs, tags, params and latest values (a few rows per run) go through plain DB-API connections (``sqlite3`` in
read-only mode, ``psycopg`` 3) handed to ``polars.read_database``. Metric rows (millions) are read in blocks of runs
on parallel connections, each run named by an integer code (see ``read_curves``): from PostgreSQL through the
Arrow-native ADBC driver (``adbc-driver-postgresql``: columnar batches, no Python object per row, GIL released).
From SQLite, never through ADBC's SQLite driver in this process: it links a second copy of SQLite, and closing its
file descriptor drops the POSIX locks that the process's other copy (Python's sqlite3, MLflow's) holds on the same
file, so a concurrent writer corrupts the store ("database disk image is malformed"; SQLite's "How To Corrupt An
SQLite Database File", §2.2.1; `lab-demo` hit exactly that). Small reads go through Python's own sqlite3 (a
Python object per value: ~3 us a row); a block of at least ARROW_MIN_RUNS runs goes through ADBC's SQLite driver in
a child process of its own (its locks are its own), which sends the rows back as an Arrow stream: on 1,000 runs x
3,100 rows (benchmarks/load_runs.py) that is several times faster than sqlite3, the child's start included. A
read-only connection can never create or migrate a store.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import polars as pl

from tracking.record import Param

from analysis.load.frames import (
    FINAL_KEYS, RAW_BEST, RAW_CURVES, RAW_KV, RAW_LATEST, RAW_RUNS, VAL_LOSS, LoadError, RawCurves, RawRuns,
    check_run_ids, conform, empty, select_experiments,
)

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")
READERS = min(4, os.cpu_count() or 1)
"""Connections reading metric rows at once, a block of at least MIN_RUNS_PER_READER runs each."""
MIN_RUNS_PER_READER = 100  # fewer runs are read on one connection: opening more costs more than it saves
ARROW_MIN_RUNS = 100
"""SQLite blocks of at least this many runs are read through ADBC in a child process (its start, ~0.3 s, pays
for itself from about this size); smaller ones through sqlite3."""
RUNS_PER_QUERY = 10_000  # one bound parameter per run: far below SQLite's 32,766 and PostgreSQL's 65,535

# MLflow stores NaN as value 0 with is_nan set; the query turns it into NULL (value is NOT NULL in MLflow's
# schema, so NULL can only mean NaN) and _nan_restored gives the NaN back. One column fewer to fetch row by row
# (about a fifth of the read time).
_VALUE = "CASE WHEN {t}.is_nan THEN NULL ELSE {t}.value END AS value"


def _nan_restored() -> pl.Expr:
    return pl.col("value").fill_null(float("nan"))


def is_sql_uri(uri: str) -> bool:
    """True for the stores this module reads: sqlite:/// and postgresql[+driver]:// URIs."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    return uri.startswith(SQLITE_PREFIX) or scheme in POSTGRES_SCHEMES


def sqlite_file(uri: str) -> Path:
    """The database file of a sqlite:/// URI (sqlite:///rel/path.db or sqlite:////abs/path.db)."""
    return Path(uri[len(SQLITE_PREFIX):].split("?", 1)[0])


def check_sqlite_exists(uri: str) -> None:
    """A missing SQLite file is an error: opening it (sqlite3 or MlflowClient) would create an empty store."""
    path = sqlite_file(uri)
    if path.name in ("", ":memory:") or path.is_dir():
        raise LoadError(f"{uri!r} names no SQLite database file (an in-memory database or a directory holds no "
                        "logged runs); use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if not path.is_file():
        raise LoadError(
            f"MLflow store not found: {uri!r} points at {path.resolve()}, which does not exist. Check the path "
            "(sqlite:///relative/path.db or sqlite:////absolute/path.db); the loader never creates a store")


def _libpq_conninfo(uri: str) -> str:
    # postgresql+psycopg://... is SQLAlchemy's spelling; libpq wants postgresql://...
    return "postgresql://" + uri.split("://", 1)[1]


@dataclass(frozen=True)
class _Db:
    """An open connection and its driver's placeholder for bound parameters."""

    connection: object
    mark: str  # "?" for sqlite3 (qmark), "%s" for psycopg (format)
    params_name: str  # the driver's name for cursor.execute's parameters, which polars passes by keyword

    def marks(self, values: Sequence[object]) -> str:
        return ", ".join([self.mark] * len(values))

    def read(self, query: str, params: Sequence[object], schema: dict) -> pl.DataFrame:
        # Explicit dtypes: a column that is null in the first rows (end_time of running runs) is not inferred
        # as Null, and no full scan is needed to infer.
        df = pl.read_database(query, self.connection, execute_options={self.params_name: list(params)},
                              schema_overrides=dict(schema))
        return empty(schema) if df.height == 0 else df


@contextmanager
def _connect(uri: str) -> Iterator[_Db]:
    if uri.startswith(SQLITE_PREFIX):
        path = sqlite_file(uri)
        check_sqlite_exists(uri)
        # mode=ro: a read can neither create nor migrate the store.
        connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        db = _Db(connection, "?", "parameters")
    else:
        import psycopg

        try:
            connection = psycopg.connect(_libpq_conninfo(uri), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as err:
            raise LoadError(f"cannot open MLflow store {uri!r}: {err}. Check host, port, user and database "
                            "name; the loader never creates a store") from err
        db = _Db(connection, "%s", "params")
    try:
        _check_mlflow_schema(db, uri)
        yield db
    finally:
        connection.close()


def _check_mlflow_schema(db: _Db, uri: str) -> None:
    try:
        pl.read_database("SELECT run_uuid FROM runs WHERE 1 = 0", db.connection)
    except Exception as err:  # the driver's "no such table" error: sqlite3 and psycopg raise different types
        raise LoadError(f"{uri!r} is not an MLflow tracking store (no readable 'runs' table: {err}); point "
                        "tracking_uri at the store the runs were logged to") from err


def _active_runs_where(db: _Db, experiment_ids: Sequence[int], alias: str = "r") -> tuple[str, list]:
    where = f"{alias}.lifecycle_stage = 'active' AND {alias}.experiment_id IN ({db.marks(experiment_ids)})"
    return where, list(experiment_ids)


def _experiment_ids(db: _Db, experiments: Sequence[str] | None) -> tuple[list[int], pl.DataFrame]:
    active = db.read("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'", [],
                     {"experiment_id": pl.Int64, "name": pl.String})
    active = active.with_columns(pl.col("experiment_id").cast(pl.String))
    return [int(i) for i in select_experiments(active, experiments)], active


def _runs(db: _Db, ids: list[int], names: pl.DataFrame) -> pl.DataFrame:
    where, params = _active_runs_where(db, ids)
    runs = db.read(
        "SELECT r.run_uuid AS run_id, r.name AS run_name, r.experiment_id, r.status, r.start_time, r.end_time, "
        f"r.artifact_uri FROM runs r WHERE {where}", params,
        {**{k: t for k, t in RAW_RUNS.items() if k != "experiment"}, "experiment_id": pl.Int64})
    runs = runs.with_columns(pl.col("experiment_id").cast(pl.String))
    runs = runs.join(names.rename({"name": "experiment"}), on="experiment_id", how="left")
    return conform(runs, RAW_RUNS)


def read_runs(uri: str, experiments: Sequence[str] | None) -> RawRuns:
    """Raw run tables of the active runs in the selected experiments: six queries, one per table."""
    with _connect(uri) as db:
        ids, names = _experiment_ids(db, experiments)
        if not ids:
            return RawRuns(empty(RAW_RUNS), empty(RAW_KV), empty(RAW_KV), empty(RAW_LATEST), empty(RAW_BEST))
        where, params = _active_runs_where(db, ids)
        runs = _runs(db, ids, names)
        kv = {}
        for table in ("tags", "params"):
            kv[table] = conform(db.read(
                f"SELECT t.run_uuid AS run_id, t.key, t.value FROM {table} t "
                f"JOIN runs r ON r.run_uuid = t.run_uuid WHERE {where}", params, RAW_KV), RAW_KV)
        latest = db.read(
            f"SELECT l.run_uuid AS run_id, l.key, {_VALUE.format(t='l')}, l.step FROM latest_metrics l "
            f"JOIN runs r ON r.run_uuid = l.run_uuid WHERE {where} AND l.key IN ({db.marks(FINAL_KEYS)})",
            params + list(FINAL_KEYS), RAW_LATEST)
        latest = latest.with_columns(_nan_restored())
        best = db.read(
            "SELECT m.run_uuid AS run_id, MIN(m.value) AS best_val_loss FROM metrics m "
            f"JOIN runs r ON r.run_uuid = m.run_uuid WHERE {where} AND m.key = {db.mark} AND NOT m.is_nan "
            "GROUP BY m.run_uuid", params + [VAL_LOSS], RAW_BEST)
    return RawRuns(runs, kv["tags"], kv["params"], conform(latest, RAW_LATEST), conform(best, RAW_BEST))


def read_curves(uri: str, experiments: Sequence[str] | None, run_ids: Sequence[str] | None,
                keys: Sequence[str] | None, assemble: Callable[[RawCurves], pl.DataFrame]) -> pl.DataFrame:
    """Metric rows of the selected active runs and keys (all keys for None), assembled by `assemble` per block of
    runs and concatenated: blocks hold consecutive runs in run_id order, each read and assembled on its own
    connection and thread (the driver, pyarrow and polars release the GIL), so the blocks' frames, each sorted,
    concatenate into one sorted frame."""
    with _connect(uri) as db:
        ids, names = _experiment_ids(db, experiments)
        runs = _runs(db, ids, names) if ids else empty(RAW_RUNS)
        sizes = _param(db, ids, Param.N) if ids else {}
    check_run_ids(runs, run_ids)
    selected = sorted(set(runs["run_id"].to_list() if run_ids is None else run_ids))
    if not selected:
        return assemble(RawCurves([], empty(RAW_CURVES)))
    n_blocks = max(math.ceil(len(selected) / RUNS_PER_QUERY),
                   min(READERS, len(selected) // MIN_RUNS_PER_READER or 1))
    size = math.ceil(len(selected) / n_blocks)
    blocks = [selected[start:start + size] for start in range(0, len(selected), size)]

    def block(run_ids: list[str]) -> pl.DataFrame:
        return assemble(RawCurves(run_ids, _read_metric_rows(uri, run_ids, keys), [sizes.get(r) for r in run_ids]))

    if len(blocks) == 1:
        return block(blocks[0])
    with ThreadPoolExecutor(max_workers=len(blocks)) as pool:
        return pl.concat(list(pool.map(block, blocks)))


def _param(db: _Db, ids: list[int], key: str) -> dict[str, str]:
    """One param of every active run of the experiments, by run id (its string value)."""
    where, params = _active_runs_where(db, ids)
    rows = db.read(f"SELECT t.run_uuid AS run_id, t.value FROM params t JOIN runs r ON r.run_uuid = t.run_uuid "
                   f"WHERE {where} AND t.key = {db.mark}", params + [key], {"run_id": pl.String, "value": pl.String})
    return dict(zip(rows["run_id"].to_list(), rows["value"].to_list()))


def _read_metric_rows(uri: str, run_ids: Sequence[str], keys: Sequence[str] | None) -> pl.DataFrame:
    """RAW_CURVES rows of the runs run_ids[i] (coded i): sqlite3 for SQLite, the Arrow-native ADBC driver for
    PostgreSQL (module docstring).

    The run codes come from a VALUES table joined to `metrics`, so the database returns a small integer per row
    instead of the run's 32-character id, and its index on metrics.run_uuid serves the join. NaN comes as
    value 0 with is_nan set; NULL never appears in these columns, so the SQLite driver's type inference (from
    the first rows of each batch) cannot go wrong.
    """
    if uri.startswith(SQLITE_PREFIX):
        return _read_sqlite_metric_rows(uri, run_ids, keys)
    with _arrow_connect(uri) as (connection, mark):
        query, params = _metric_rows_query(run_ids, keys, mark)
        cursor = connection.cursor()
        try:
            cursor.execute(query, params)
            table = cursor.fetch_arrow_table()  # pyarrow reads the stream without the GIL
        finally:
            cursor.close()
    if table.num_rows == 0:
        return empty(RAW_CURVES)
    rows = pl.from_arrow(table)
    rows = rows.with_columns(pl.when(pl.col("is_nan").cast(pl.Boolean)).then(float("nan")).otherwise(pl.col("value"))
                             .alias("value"))
    return conform(rows, RAW_CURVES)


def _metric_rows_query(run_ids: Sequence[str], keys: Sequence[str] | None,
                       mark: Callable[[int], str]) -> tuple[str, list[str]]:
    """The metric rows query of `_read_metric_rows` and its parameters; mark(n): the n-th placeholder."""
    values = ", ".join(f"({mark(i + 1)}, {i})" for i in range(len(run_ids)))
    params = list(run_ids)
    where = ""
    if keys is not None:
        where = f" WHERE m.key IN ({', '.join(mark(len(params) + j + 1) for j in range(len(keys)))})"
        params += list(keys)
    return (f"WITH rs (run_uuid, run) AS (VALUES {values}) SELECT rs.run, m.key AS metric, m.step, m.value, "
            f"m.is_nan, m.timestamp FROM rs JOIN metrics m ON m.run_uuid = rs.run_uuid{where}"), params


_ARROW_CHILD = """
import json, sys
import adbc_driver_sqlite.dbapi as adbc
import pyarrow as pa
spec = json.load(sys.stdin)
connection = adbc.connect(spec["uri"])
try:
    cursor = connection.cursor()
    cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "65536"})
    cursor.execute(spec["query"], spec["params"])
    table = cursor.fetch_arrow_table()
    cursor.close()
finally:
    connection.close()
with pa.ipc.new_stream(sys.stdout.buffer, table.schema) as out:
    out.write_table(table)
"""
"""The child process that reads a large block from SQLite through ADBC (module docstring): the query and its
parameters on stdin as JSON, the rows as an Arrow IPC stream on stdout."""


def _read_sqlite_metric_rows(uri: str, run_ids: Sequence[str], keys: Sequence[str] | None) -> pl.DataFrame:
    """RAW_CURVES rows from a SQLite store: through Python's sqlite3 (the SQLite MLflow uses in this process), or
    for a block of at least ARROW_MIN_RUNS runs through ADBC in a child process (module docstring)."""
    query, params = _metric_rows_query(run_ids, keys, lambda n: "?")
    target = f"file:{quote(str(sqlite_file(uri).resolve()))}?mode=ro"
    if len(run_ids) >= ARROW_MIN_RUNS:
        rows = pl.from_arrow(_arrow_child(target, query, params))
        if rows.height == 0:
            return empty(RAW_CURVES)
        rows = rows.with_columns(pl.col("is_nan").cast(pl.Boolean))
    else:
        connection = sqlite3.connect(target, uri=True)
        try:
            found = connection.execute(query, params).fetchall()
        finally:
            connection.close()
        if not found:
            return empty(RAW_CURVES)
        rows = pl.DataFrame(found, orient="row", schema={
            "run": pl.UInt32, "metric": pl.String, "step": pl.Int64, "value": pl.Float64, "is_nan": pl.Boolean,
            "timestamp": pl.Int64})
    rows = rows.with_columns(pl.when(pl.col("is_nan")).then(float("nan")).otherwise(pl.col("value")).alias("value"))
    return conform(rows, RAW_CURVES)


def _arrow_child(target: str, query: str, params: list[str]) -> Any:
    """The rows of `query` as a pyarrow Table, read by ADBC's SQLite driver in a child process (_ARROW_CHILD)."""
    import pyarrow as pa

    proc = subprocess.run([sys.executable, "-c", _ARROW_CHILD], capture_output=True,
                          input=json.dumps({"uri": target, "query": query, "params": params}).encode())
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise LoadError(f"reading metric rows from {target} in a child process failed: {last}")
    return pa.ipc.open_stream(proc.stdout).read_all()


def _numbered(n: int) -> str:
    return f"${n}"


@contextmanager
def _arrow_connect(uri: str) -> Iterator[tuple[object, Callable[[int], str]]]:
    """An ADBC connection to PostgreSQL and the driver's placeholder for the n-th bound parameter."""
    import adbc_driver_postgresql.dbapi as adbc

    connection, mark = adbc.connect(_libpq_conninfo(uri)), _numbered
    try:
        yield connection, mark
    finally:
        connection.close()
