"""A sweep's record in MLflow: its parent run and what its children became (sweeps.runs plans from this)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from sweeps.designs import RunSpec
from sweeps.runs import Job, Previous, SweepSummary, _number
from tracking import runs as tracked
from tracking.record import Artifact, FailureKind, Metric, Param, SweepStatus, Tag
from tracking.store import ensure_store


class SweepTracker:
    """The sweep's parent run and its children in one MLflow experiment."""

    def __init__(self, uri: str, experiment: str):
        ensure_store(uri)  # once, here, before any worker: concurrent first use of a SQLite store crashes
        self.client = MlflowClient(uri)
        self.experiment = experiment
        self.experiment_id = tracked.experiment_id(self.client, experiment)

    def _search(self, filter_string: str) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000,
                                           order_by=["attributes.start_time ASC"], page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def open_parent(self, sweep: str, design: Mapping[str, Any], specs: Sequence[RunSpec],
                    task_overrides: Sequence[str]) -> str:
        """The sweep's parent run, created on first launch and found again (by tag sweep_parent) afterwards."""
        params = {f"design.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in design.items()}
        run_id, _ = tracked.open_parent(
            self.client, self.experiment, {Tag.SWEEP_PARENT: sweep}, f"sweep-{sweep}",
            {Tag.SWEEP_DESIGN: str(design.get("name"))},
            {**params, "overrides": " ".join(task_overrides)[:6000]})
        self.client.log_text(run_id, json.dumps([s.to_dict() for s in specs], indent=1), Artifact.DESIGN)
        # this launch's run count: a relaunch may add runs (a schedule study's held-out runs, more seeds)
        self.client.log_batch(run_id, tags=[RunTag(Tag.SWEEP_RUNS, str(len(specs))),
                                            RunTag(Tag.SWEEP_STATUS, SweepStatus.RUNNING)])
        return run_id

    def previous_runs(self, sweep: str) -> dict[str, Previous]:
        """Runs of this sweep by name; of several with one name, a FINISHED one, else the latest."""
        by_name: dict[str, Previous] = {}
        for run in self._search(f"tags.{Tag.SWEEP} = '{sweep}'"):  # oldest first: later runs replace earlier ones
            name = run.data.tags.get(Tag.RUN_NAME, run.info.run_name)
            if by_name.get(name) is not None and by_name[name].status == "FINISHED":
                continue
            p, m, t = run.data.params, run.data.metrics, run.data.tags
            by_name[name] = Previous(run.info.run_id, run.info.status, t.get(Tag.STATUS_REASON),
                                     t.get(Tag.STATUS_KIND), _number(p.get(Param.N)),
                                     _number(m.get(Metric.TOKENS, p.get(Param.D))), _number(p.get(Param.C)),
                                     _number(m.get(Metric.VAL_LOSS)),
                                     self._last_active_s(run) if run.info.status == "RUNNING" else None)
        return by_name

    def _last_active_s(self, run: Any) -> float:
        history = self.client.get_metric_history(run.info.run_id, Metric.TRAIN_LOSS)
        return max([run.info.start_time] + [m.timestamp for m in history]) / 1000.0

    def prepare(self, job: Job, sweep: str) -> None:
        """Before a leftover is launched again afresh: a RUNNING run is marked KILLED so that it does not look alive
        forever. (A resumed run is reopened by lab itself: RUNNING, its reason kept as ``resumed_after``.)"""
        prev = job.previous
        if prev is None or job.resume:
            return
        if prev.status == "RUNNING":
            tracked.end_run(self.client, prev.run_id, "KILLED", f"interrupted; run again by sweep {sweep}",
                            FailureKind.INTERRUPTED)

    def close_parent(self, parent_run_id: str, summary: SweepSummary, interrupted: bool = False) -> None:
        counts = summary.counts()
        status = (SweepStatus.INTERRUPTED if interrupted else
                  SweepStatus.COMPLETE if summary.complete else SweepStatus.PARTIAL)
        tags = {**{f"{Tag.SWEEP_COUNT_PREFIX}{k}": str(v) for k, v in counts.items()}, Tag.SWEEP_STATUS: status}
        self.client.log_batch(parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.log_text(parent_run_id, json.dumps(summary.to_dict(), indent=1), Artifact.SUMMARY)
        self.client.set_terminated(parent_run_id, status="KILLED" if interrupted else "FINISHED")
