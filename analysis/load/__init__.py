"""Recorded runs into tidy polars frames: MLflow stores (runs, curves) and CSV/Parquet tables.

The only place in ``analysis`` that knows how MLflow stores runs (``sql.py`` reads its tables). Two paths give
identical frames: ``path="sql"`` reads a SQLite or PostgreSQL store's tables directly (metric rows through
Arrow-native ADBC drivers, in parallel blocks of runs; ~100x faster than the client on a 1,000-run store, see
benchmarks/load_runs.py), ``path="client"`` goes through
``mlflow.MlflowClient`` and works for any store (an ``http://`` tracking server, a file store); ``"auto"`` picks
``sql`` for ``sqlite:///`` and ``postgresql[+driver]://`` URIs and ``client`` otherwise. Deleted runs and runs of
deleted experiments are never loaded, and a store that does not exist (or an empty or in-memory URI) is an
error, never created.

``load_runs`` frame, one row per run, sorted by (experiment, start_time, run_id):

    run_id, run_name, experiment_id, experiment, status          String
    start_time, end_time                                          Datetime(ms, UTC) (end_time null while running)
    sweep, design, parent_run_id, status_reason, status_kind, git_commit, git_dirty
                                                                  String tags (parent_run_id = mlflow.parentRunId)
    N, N_total                                                    Float64 params (non-embedding / total params)
    D                                                             Float64 last `tokens` metric (tokens seen)
    C                                                             Float64 6·N·D (tracking.record.compute), else the
                                                                  C param: the compute of the laws
    model_flops                                                   Float64 last `model_flops` metric (attention and
                                                                  head included: throughput, not C); null in
                                                                  stores written before it existed
    B, B_sequences                                                Float64 params B_tokens, B_sequences
    lr, seq_len                                                   Float64 params optim.lr, seq_len
    loss (= final_val_loss), final_val_loss, best_val_loss, final_train_loss
                                                                  Float64 last / minimum val/loss, last train/loss
    steps                                                         Int64 step of the last train/loss row
    tag.<key>                                                     String, every other tag but MLflow's own mlflow.*
    param.<key>                                                   every param, Float64 when all of its values are
                                                                  numbers (None/null strings → null), else String

"Last" is MLflow's latest value: highest step, then timestamp, then value. best_val_loss ignores NaN rows. When
N, N_total, D or final_val_loss is missing from the store, the run's ``summary.json`` artifact (local artifact
stores only) fills it.

``load_curves`` frame, one row per recorded metric row, sorted by (run_id, metric, step, timestamp, value):

    run_id, metric String; step Int64 (optimizer step); value Float64 (NaN kept); timestamp Datetime(ms, UTC);
    tokens, model_flops Float64: the `tokens` / `model_flops` metrics recorded at the same (run_id, step), null if
    none; C Float64: 6·N·tokens, the compute spent so far (N the run's param).

A metric logged twice at one step appears twice (MLflow keeps both rows; the training side logs each step once);
the tokens/flops lookup takes the later timestamp, so the join never duplicates rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

import polars as pl

from analysis.load import client, sql
from analysis.load.files import load_table
from analysis.load.frames import MODEL_FLOPS, TOKENS, LoadError, assemble_curves, assemble_runs, normalise_experiments

__all__ = ["LoadError", "load_curves", "load_runs", "load_table"]

Path_ = Literal["auto", "sql", "client"]


def _reader(tracking_uri: str | Path, path: Path_):
    """The module (sql or client) that reads this store, after checking the store exists."""
    uri = str(tracking_uri)
    if path not in ("auto", "sql", "client"):
        raise LoadError(f"path must be 'auto', 'sql' or 'client', got {path!r}")
    if not uri.strip():
        # MlflowClient("") would fall back to its default store and create ./mlflow.db there.
        raise LoadError("tracking_uri is empty; pass the store the runs were logged to, e.g. "
                        "'sqlite:///path/to/mlflow.db', 'postgresql://user@host/db' or 'http://host:5000'")
    if uri.startswith("sqlite:") and not uri.startswith(sql.SQLITE_PREFIX):
        raise LoadError(f"{uri!r} names no SQLite file (sqlite:// alone is an in-memory database, which holds no "
                        "logged runs); use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if sql.is_sql_uri(uri):
        if uri.startswith(sql.SQLITE_PREFIX):
            sql.check_sqlite_exists(uri)  # before the client path too: MlflowClient would create an empty store
        return client if path == "client" else sql
    if path == "sql":
        raise LoadError(f"path='sql' reads sqlite:/// and postgresql:// stores only, not {uri!r}; use path='auto'")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        local = Path(unquote(parsed.path) if parsed.scheme == "file" else uri)
        if local.is_file():
            raise LoadError(f"tracking_uri {uri!r} is a file, not an MLflow file store; if it is a SQLite store, "
                            f"pass 'sqlite:///{local}'")
        if not local.is_dir():
            raise LoadError(f"MLflow store not found: {local.resolve()} does not exist; check tracking_uri")
    return client


def load_runs(tracking_uri: str | Path, experiment: str | Sequence[str] | None = None,
              filter_tags: Mapping[str, object] | None = None, path: Path_ = "auto") -> pl.DataFrame:
    """One row per active run of the named experiment(s) (all active experiments for None).

    filter_tags keeps runs whose MLflow tags equal every given value (compared as strings), e.g.
    {"sweep": "isoflop-1"} or {"mlflow.parentRunId": parent_id}. Schema: see this module's docstring.
    """
    reader = _reader(tracking_uri, path)
    raw = reader.read_runs(str(tracking_uri), normalise_experiments(experiment))
    return assemble_runs(raw, filter_tags)


def load_curves(tracking_uri: str | Path, experiment: str | Sequence[str] | None = None,
                run_ids: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                path: Path_ = "auto") -> pl.DataFrame:
    """Every recorded row of the chosen metrics (all for None) of the chosen runs, with tokens and flops joined.

    run_ids must be active runs of the selected experiments (an unknown or deleted id is an error).
    Schema: see this module's docstring.
    """
    if isinstance(run_ids, str) or isinstance(metrics, str):
        raise LoadError("run_ids and metrics take lists, e.g. metrics=['val/loss'], not a single string")
    reader = _reader(tracking_uri, path)
    keys = None if metrics is None else sorted(set(metrics) | {TOKENS, MODEL_FLOPS})
    return reader.read_curves(str(tracking_uri), normalise_experiments(experiment),
                              None if run_ids is None else list(run_ids), keys,
                              partial(assemble_curves, metrics=metrics))
