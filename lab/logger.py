"""MLflow run lifecycle under Lightning: batched background logging, exactly-once metrics across resumes and outages.

Lightning's ``MLFlowLogger`` owns run creation, params and termination; this module adds what a scaling study
needs on top of it (the store itself, without Lightning, is the ``tracking`` package):

- metrics go through ``tracking.buffer.MetricBuffer`` (a background thread that batches and retries), so training never
  waits on tracking, and an unreachable store only delays their arrival;
- a checkpoint does not wait for the store either: ``PendingMetrics`` writes the metrics the store has not yet
  acknowledged into the checkpoint, so every step up to a checkpoint is either in the store or in the checkpoint;
- on resume the steps already recorded are skipped (a resumed run recomputes them bit-for-bit) and the carried
  metrics the store never got are sent again, so each step lands once, even when the tracking server was down
  at the moment the run was killed;
- tags, the summary artifacts and the run's end are written with bounded retries (``tracking.store.retrying``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric

from tracking.buffer import MetricBuffer
from tracking.record import Artifact
from tracking.store import retrying

PENDING_KEY = "lab_pending_metrics"
"""Checkpoint entry: [key, value, timestamp_ms, step] rows the store had not acknowledged when it was written."""


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger with batched, retrying, exactly-once metric logging."""

    def __init__(self, *args: Any, skip_through: Optional[Mapping[str, int]] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._skip_through = dict(skip_through or {})
        self._buffer: Optional[MetricBuffer] = None
        self._checkpoints_carry_pending = False

    @property
    def buffer(self) -> MetricBuffer:
        if self._buffer is None:
            self._buffer = MetricBuffer(self.experiment, self.run_id, uri=self._tracking_uri)
        return self._buffer

    def _keep(self, key: str, step: int) -> bool:
        return step > self._skip_through.get(key, -1)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        step = int(step or 0)
        now_ms = int(time.time() * 1000)
        batch = [Metric(key=k, value=float(v), timestamp=now_ms, step=step)
                 for k, v in metrics.items() if self._keep(k, step) and not isinstance(v, str)]
        if batch:
            self.buffer.put(batch)

    def pending_rows(self) -> list[list[Any]]:
        """Metrics the store has not acknowledged, as plain rows a ``weights_only`` checkpoint load accepts."""
        if self._buffer is None:
            return []
        return [[m.key, m.value, m.timestamp, m.step] for m in self._buffer.pending()]

    @rank_zero_only
    def resend(self, rows: Sequence[Sequence[Any]]) -> None:
        """Send again the metrics a checkpoint carried, except those the store already has.

        The buffer sends in order and each batch is committed whole, so the recorded steps of a metric are a
        prefix of the steps logged: a carried row is missing exactly when its step is past the last recorded one
        (and one sent twice would be dropped by the store anyway: same key, timestamp, step and value).
        """
        missing = [Metric(key=str(k), value=float(v), timestamp=int(t), step=int(s))
                   for k, v, t, s in rows if self._keep(str(k), int(s))]
        if missing:
            self.buffer.put(missing)

    @rank_zero_only
    def flush(self) -> None:
        """Called before each checkpoint is written. When ``PendingMetrics`` puts the unacknowledged metrics into
        the checkpoint, there is nothing to wait for: training goes on while the store is away."""
        if self._buffer is not None and not self._checkpoints_carry_pending:
            self._buffer.flush()

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            retrying(lambda k=k, v=v: self.experiment.set_tag(self.run_id, k, str(v)),
                     f"set tag {k} of run {self.run_id}", self._tracking_uri)

    @rank_zero_only
    def log_texts(self, files: Mapping[str, str]) -> None:
        """Text artifacts, by file name."""
        for name, text in files.items():
            retrying(lambda text=text, name=name: self.experiment.log_text(self.run_id, text, name),
                     f"save {name} of run {self.run_id}", self._tracking_uri)

    @rank_zero_only
    def log_summary(self, summary: Mapping[str, Any], config_yaml: str) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
        self.log_texts({Artifact.SUMMARY: json.dumps(clean, indent=2, sort_keys=True), Artifact.CONFIG: config_yaml})

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        retrying(lambda: super(RunLogger, self).finalize(status), f"end run {self._run_id}", self._tracking_uri)


class PendingMetrics(L.Callback):
    """Carries the metrics the store has not yet acknowledged in every checkpoint, and sends them again on resume.

    With it, a checkpoint never waits on the tracking store (``RunLogger.flush`` returns at once), yet a run killed
    while the store is unreachable loses no step: whatever was logged up to the checkpoint is in the store or in
    the checkpoint.
    """

    def __init__(self, logger: RunLogger):
        self.logger = logger

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.logger._checkpoints_carry_pending = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[PENDING_KEY] = self.logger.pending_rows()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.logger.resend(checkpoint.get(PENDING_KEY, []))
