"""Fallback path: the same raw tables as ``sql.py``, read through ``mlflow.MlflowClient``.

Works for any store MLflow can open (an ``http://`` tracking server, a file store, a database). It is slow on big
stores: ``get_metric_history`` builds one Python object per metric row (about 0.3 ms per row on this machine, see
benchmarks/load_runs.py), so ``load_runs`` asks for two histories per run (val/loss for the best value,
train/loss for the step count) and ``load_curves`` one per run and metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import polars as pl

from tracking.record import Param

from analysis.load.frames import (
    FINAL_KEYS, RAW_BEST, RAW_CURVES, RAW_KV, RAW_LATEST, RAW_RUNS, TRAIN_LOSS, VAL_LOSS, RawCurves, RawRuns,
    check_run_ids, select_experiments,
)

PAGE = 1000  # runs per search_runs page


def _client(uri: str):
    # Imported here so that the SQL path and `import analysis.load` do not pay mlflow's ~3 s import.
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_ids(client, experiments: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """Selected experiment ids, and the names of all active experiments by id."""
    from mlflow.entities import ViewType

    found, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=PAGE, page_token=token)
        found += [(e.experiment_id, e.name) for e in page]
        token = page.token
        if not token:
            break
    active = pl.DataFrame(found, schema={"experiment_id": pl.String, "name": pl.String}, orient="row")
    return select_experiments(active, experiments), dict(found)


def _runs(client, ids: list[str]) -> Iterator:
    from mlflow.entities import ViewType

    if not ids:
        return
    token = None
    while True:
        page = client.search_runs(ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            break


def _run_table(runs: list, names: dict[str, str]) -> pl.DataFrame:
    rows = [(r.info.run_id, r.info.run_name, r.info.experiment_id, names.get(r.info.experiment_id), r.info.status,
             r.info.start_time, r.info.end_time, r.info.artifact_uri) for r in runs]
    return pl.DataFrame(rows, schema=RAW_RUNS, orient="row")


def read_runs(uri: str, experiments: Sequence[str] | None) -> RawRuns:
    """Raw run tables (frames.RAW_*) of the active runs in the selected experiments."""
    client = _client(uri)
    ids, names = _experiment_ids(client, experiments)
    runs = list(_runs(client, ids))
    tags, params, latest, best = [], [], [], []
    for run in runs:
        run_id, metrics = run.info.run_id, run.data.metrics
        tags += [(run_id, k, v) for k, v in run.data.tags.items()]
        params += [(run_id, k, v) for k, v in run.data.params.items()]
        # run.data.metrics is MLflow's latest value per key (highest step, then timestamp, then value).
        steps = {}
        if TRAIN_LOSS in metrics:
            steps[TRAIN_LOSS] = max(m.step for m in client.get_metric_history(run_id, TRAIN_LOSS))
        latest += [(run_id, k, float(metrics[k]), steps.get(k)) for k in FINAL_KEYS if k in metrics]
        if VAL_LOSS in metrics:
            values = [m.value for m in client.get_metric_history(run_id, VAL_LOSS) if not math.isnan(m.value)]
            if values:
                best.append((run_id, min(values)))
    return RawRuns(
        runs=_run_table(runs, names),
        tags=pl.DataFrame(tags, schema=RAW_KV, orient="row"),
        params=pl.DataFrame(params, schema=RAW_KV, orient="row"),
        latest=pl.DataFrame(latest, schema=RAW_LATEST, orient="row"),
        best=pl.DataFrame(best, schema=RAW_BEST, orient="row"),
    )


def read_curves(uri: str, experiments: Sequence[str] | None, run_ids: Sequence[str] | None,
                keys: Sequence[str] | None, assemble: Callable[[RawCurves], pl.DataFrame]) -> pl.DataFrame:
    """Metric rows (frames.RawCurves), assembled: one get_metric_history call per selected run and metric key."""
    client = _client(uri)
    runs = list(_runs(client, _experiment_ids(client, experiments)[0]))
    check_run_ids(pl.DataFrame({"run_id": [r.info.run_id for r in runs]}, schema={"run_id": pl.String}), run_ids)
    wanted = None if run_ids is None else set(run_ids)
    runs = sorted((r for r in runs if wanted is None or r.info.run_id in wanted), key=lambda r: r.info.run_id)
    columns: dict[str, list] = {name: [] for name in RAW_CURVES}
    for code, run in enumerate(runs):
        for key in sorted(run.data.metrics):
            if keys is not None and key not in keys:
                continue
            history = client.get_metric_history(run.info.run_id, key)
            columns["run"] += [code] * len(history)
            columns["metric"] += [key] * len(history)
            columns["step"] += [m.step for m in history]
            columns["value"] += [m.value for m in history]
            columns["timestamp"] += [m.timestamp for m in history]
    return assemble(RawCurves([r.info.run_id for r in runs], pl.DataFrame(columns, schema=RAW_CURVES),
                              [r.data.params.get(Param.N) for r in runs]))
