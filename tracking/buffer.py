"""Metrics sent in batches by a background thread that retries until the store takes them, never dropping one.

Against a server it sends without MLflow's HTTP retries (exponential, up to ~4 min per call) and retries itself
every few seconds, so metrics buffered during an outage arrive seconds after the server is back, not minutes
(MLflow's own async queue drops a batch on error). A retried ``log_batch`` cannot duplicate a metric: each metric
keeps the timestamp it was logged with, and MLflow's SQL stores drop a metric identical in (key, timestamp, step,
value) to one already recorded.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Optional

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tracking.store import MAX_BACKOFF_S, STORE_TIMEOUT_S, StoreUnavailable, hide_password, is_transient

log = logging.getLogger(__name__)

MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
SEND_EVERY_S = 0.5
"""Metrics gather this long before one store call sends them: a call costs ~15 ms of CPU on SQLite, a tiny model's
step ~40 ms, so one call per step slowed small runs by a third. A flush (checkpoint without PendingMetrics, end of
run) sends at once; a checkpoint carries what is still gathering, so nothing waits on this and nothing is lost."""
SEND_TIMEOUT_S = 15.0
"""A metric batch not answered within this long is sent again (a hung server; a healthy one answers in ~50 ms)."""

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
    store has not yet taken instead of waiting for it (``lab.logger.PendingMetrics``).
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
