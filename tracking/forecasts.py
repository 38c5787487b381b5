"""Forecasts in the record: a forecast is an MLflow run of its own, in the experiment of the runs it was fitted on.

A forecast run carries the tag ``Tag.FORECAST`` (its value: the law), the target (``Tag.FORECAST_TARGET``), a
digest of the fitted runs (``Tag.FORECAST_RUNS_DIGEST``), one metric per predicted quantity with its 95% interval
(``forecast/<q>``, ``forecast/<q>_lo``, ``forecast/<q>_hi``) and the whole payload as the artifact
``Artifact.FORECAST`` (law, target, predictions, sensitivity, fitted run ids). Once a run lands at the target,
``record_check`` adds what it realised and the error (``realised/<q>``, ``forecast_error/<q>`` =
realised / forecast − 1, ``Tag.FORECAST_CHECKED_RUN``, ``Tag.FORECAST_ERROR``). Writes go through MlflowClient.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from tracking.record import Artifact, Metric, Tag

RUN_NAME_PREFIX = "forecast-"


def runs_digest(run_ids: Iterable[str], values: Iterable[float] | None = None) -> str:
    """sha256 over the sorted (run id, value fitted) pairs: the same runs with the same values, the same digest."""
    ids = [str(r) for r in run_ids]
    vals = [float(v) for v in values] if values is not None else [None] * len(ids)
    if len(vals) != len(ids):
        raise ValueError(f"{len(ids)} run ids but {len(vals)} values; give one value per run or none")
    return hashlib.sha256(json.dumps(sorted(zip(ids, vals), key=lambda p: p[0])).encode()).hexdigest()


def _client(tracking_uri: str):
    from mlflow import MlflowClient  # ~3 s to import: only where a forecast is written or read

    return MlflowClient(tracking_uri)


def record_forecast(tracking_uri: str, experiment_id: str, payload: Mapping[str, Any]) -> str:
    """Write the forecast run; returns its run id. payload: law, target (dict), target_label (str),
    predictions {q: {value, lo, hi}}, runs (ids), runs_digest, and anything else (kept in the artifact)."""
    missing = {"law", "target_label", "predictions", "runs_digest"} - set(payload)
    if missing:
        raise ValueError(f"a forecast payload needs {sorted(missing)}; build it with analysis.cli_forecast")
    client = _client(tracking_uri)
    run = client.create_run(experiment_id, run_name=f"{RUN_NAME_PREFIX}{payload['law']}-{payload['target_label']}",
                            tags={Tag.FORECAST: str(payload["law"]), Tag.FORECAST_TARGET: payload["target_label"],
                                  Tag.FORECAST_RUNS_DIGEST: payload["runs_digest"]})
    run_id = run.info.run_id
    try:
        metrics = {}
        for q, p in payload["predictions"].items():
            for suffix, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi")):
                if p.get(key) is not None:
                    metrics[f"{Metric.FORECAST_PREFIX}{q}{suffix}"] = float(p[key])
        client.log_batch(run_id, metrics=_metrics(metrics))
        client.log_dict(run_id, dict(payload), Artifact.FORECAST)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _metrics(values: Mapping[str, float]) -> list:
    import time

    from mlflow.entities import Metric as MlflowMetric

    now = int(time.time() * 1000)
    return [MlflowMetric(k, v, now, 0) for k, v in values.items()]


def load_forecasts(tracking_uri: str, experiment_ids: list[str]) -> list[dict[str, Any]]:
    """Every forecast run of these experiments: its payload plus run_id, experiment_id and checked_run (or None)."""
    client = _client(tracking_uri)
    out = []
    runs = client.search_runs(experiment_ids, filter_string=f"tags.{Tag.FORECAST} LIKE '%'", max_results=10_000)
    for run in runs:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, Artifact.FORECAST, tmp)
            payload = json.loads(Path(path).read_text())
        out.append({**payload, "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                    "checked_run": run.data.tags.get(Tag.FORECAST_CHECKED_RUN)})
    return out


def record_check(tracking_uri: str, forecast_run_id: str, landed_run_id: str, realised: Mapping[str, float],
                 errors: Mapping[str, float]) -> None:
    """Tag the forecast with the landed run it was checked against and log realised values and errors."""
    client = _client(tracking_uri)
    client.log_batch(forecast_run_id, metrics=_metrics(
        {**{f"{Metric.REALISED_PREFIX}{q}": float(v) for q, v in realised.items()},
         **{f"{Metric.FORECAST_ERROR_PREFIX}{q}": float(v) for q, v in errors.items()}}))
    client.set_tag(forecast_run_id, Tag.FORECAST_CHECKED_RUN, landed_run_id)
    client.set_tag(forecast_run_id, Tag.FORECAST_ERROR, json.dumps({q: float(v) for q, v in errors.items()}))
