"""tracking.store without a training run: the metric buffer against a real SQLite store, errors that name the fix.

The buffer's behaviour during a tracking-server outage is tested end to end in tests/lab/test_server.py.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tracking.buffer import MetricBuffer
from tracking.store import StoreUnavailable, ensure_store, retrying


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_store(uri)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("buffer"))
    return uri, client, run.info.run_id


def test_buffer_sends_every_metric_once_in_batches(store):
    uri, client, run_id = store
    buffer = MetricBuffer(client, run_id, uri=uri)
    now = int(time.time() * 1000)
    for step in range(1, 1201):  # more than one log_batch call (1000 metrics each)
        buffer.put([Metric("train/loss", 1.0 / step, now, step), Metric("lr", 1e-3, now, step)])
    buffer.flush(timeout_s=60)
    assert buffer.pending() == [] and buffer.failures == 0
    for key in ("train/loss", "lr"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, 1201))
    buffer.put([Metric("train/loss", 1.0, now, 1)])  # the very same metric again: the store keeps one row
    buffer.close(timeout_s=60)
    assert len(client.get_metric_history(run_id, "train/loss")) == 1200


def test_metrics_gather_into_few_store_calls_and_a_flush_sends_at_once(store):
    uri, client, run_id = store
    buffer = MetricBuffer(client, run_id, uri=uri, send_every_s=30.0)
    now = int(time.time() * 1000)
    for step in range(1, 201):  # a training loop logging every step, faster than the store is called
        buffer.put([Metric("train/loss", 1.0 / step, now, step)])
        time.sleep(0.002)
    assert buffer.sends <= 1, "one store call per step is what gathering avoids"
    started = time.monotonic()
    buffer.flush(timeout_s=60)
    assert time.monotonic() - started < 10, "a flush does not wait for the gathering interval"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 201))
    assert buffer.sends <= 2
    buffer.close(timeout_s=60)


def test_metrics_the_store_refuses_fail_the_run_with_the_reason(store):
    uri, client, run_id = store
    client.delete_run(run_id)  # a deleted run takes no more metrics: retrying cannot help
    buffer = MetricBuffer(client, run_id, uri=uri)
    buffer.put([Metric("train/loss", 1.0, int(time.time() * 1000), 1)])
    with pytest.raises(RuntimeError, match=f"refused metrics of run {run_id}"):
        buffer.flush(timeout_s=60)
    with pytest.raises(RuntimeError, match="refused"):
        buffer.put([Metric("train/loss", 1.0, int(time.time() * 1000), 2)])
    assert len(buffer.pending()) == 1, "nothing is dropped silently"


def test_an_unreachable_store_fails_after_the_timeout_naming_it(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket closes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would take minutes
    client = MlflowClient(uri)
    with pytest.raises(StoreUnavailable, match=f"could not end run r1 in the tracking store {uri} for 2 s"):
        retrying(lambda: client.set_terminated("r1"), "end run r1", uri, timeout_s=2)


def test_tracking_does_not_import_lightning():
    code = ("import sys, tracking.store, tracking.buffer, tracking.runs; "
            "sys.exit(1 if 'lightning' in sys.modules or 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
