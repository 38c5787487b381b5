"""tracking=server: `lab-server` (MLflow on PostgreSQL, artifacts served through it) with real runs, eight
concurrent study workers, and a server that goes away mid-run.

One server for the module (a fresh PostgreSQL database; started as `python -m tracking.server` on a free port, stopped
at the end). The outage tests take that server away while a `lab-train` process trains: stopped and restarted on
the same port and database for LAB_TEST_OUTAGE_S (default 30 s, the issue's figure), or frozen (SIGSTOP) while the
run is killed and resumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from lab.run import quiet_lightning, train  # noqa: E402
from tracking.server import ServerConfig, ServerError, ServerProcess  # noqa: E402
from tracking.store import StoreUnavailable, ensure_store, hide_password  # noqa: E402
from lab.train import compose_config  # noqa: E402
from sweeps.study import StudyError, StudySpec, load_space, open_study  # noqa: E402
from reliability_scenarios import (build_corpus, crash_during_outage_run, free_port, outage_run,  # noqa: E402
                                   problems, study_on_server)

OUTAGE_S = float(os.environ.get("LAB_TEST_OUTAGE_S", "30"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("server")
    build_corpus(path / "cache")
    return path


@pytest.fixture(scope="module")
def server(postgres_url, workdir):
    import psycopg
    from sqlalchemy.engine import make_url

    cfg = ServerConfig(backend_store_uri=postgres_url, artifacts_destination=workdir / "mlartifacts",
                       port=free_port(), workers=2)
    srv = ServerProcess(cfg, workdir / "lab-server.log")
    srv.start()
    try:
        yield srv
    finally:
        try:
            srv.stop()
        finally:
            url = make_url(postgres_url)
            with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="test",
                                 autocommit=True) as admin:  # lab-server created the Optuna database beside it
                admin.execute(f'DROP DATABASE IF EXISTS "{make_url(cfg.optuna_url).database}" WITH (FORCE)')


def test_lab_train_records_a_run_through_the_server(server, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)  # what tracking=server reads
    cfg = compose_config(["experiment=smoke", "tracking=server", "tracking.run_name=via-server",
                          "trainer.progress_bar=false", f"checkpoint_dir={workdir}/ckpt",
                          f"data.cache_dir={workdir}/cache"])
    assert cfg.tracking.uri == server.uri
    monkeypatch.chdir(workdir)
    quiet_lightning()
    assert train(cfg).status == "FINISHED"
    client = MlflowClient(server.uri)
    found = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                               filter_string="attributes.run_name = 'via-server'")
    assert len(found) == 1
    r = found[0]
    assert r.info.status == "FINISHED"
    assert int(r.data.params["N"]) == 12640 and r.data.params["tracking.uri"] == server.uri
    steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train/loss"))
    assert steps == list(range(1, 51)), "every optimizer step once"
    assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "val/loss")) == [25, 50]
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"config.yaml", "summary.json"}
    summary = json.loads(Path(client.download_artifacts(r.info.run_id, "summary.json", str(workdir))).read_text())
    assert summary["N"] == 12640 and summary["final_val_loss"] == pytest.approx(r.data.metrics["val/loss"])
    # Artifacts went through the server into its --artifacts-destination, nothing into the run's working dir.
    assert list((workdir / "mlartifacts").rglob("summary.json"))
    assert not (workdir / "mlruns").exists() and not (workdir / "mlflow.db").exists()


def test_eight_study_workers_share_the_server_and_its_optuna_database(server, workdir):
    result = study_on_server(workdir, server, workers=8, launch="fork")
    assert problems(result) == []
    assert result["launched"] == result["recorded"] == 8


def test_training_goes_on_while_the_server_is_unreachable(server, workdir):
    result = outage_run(workdir, server, OUTAGE_S, mode="kill")  # stopped, then restarted on the same port and DB
    assert problems(result) == []
    assert result["outage_s"] >= OUTAGE_S - 1
    assert result["steps_during_outage"] > 0, "training did not wait for the server"
    assert result["checkpoints_during_outage"] > 0, "checkpoints did not wait for the server"
    assert result["buffer_retries"] > 0, "metric batches sent during the outage are retried"


def test_run_killed_while_the_server_is_down_resumes_with_every_step_once(server, workdir):
    result = crash_during_outage_run(workdir, server, mode="freeze")  # hung: requests accepted, never answered
    assert result["carried_in_checkpoint"] > 0, "the checkpoint carries the metrics the server never got"
    assert problems(result) == []


def test_a_study_on_the_server_needs_a_shared_optuna_storage(server, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.chdir(workdir)  # where the old default put optuna.db
    spec = StudySpec(name="no-storage", space=load_space("smoke"), overrides=("tracking=server",
                                                                             f"data.cache_dir={workdir}/cache"))
    with pytest.raises(StudyError, match="give --storage"):
        open_study(spec)
    assert not list(workdir.glob("optuna.db")), "no study file left in the working directory"


def test_lab_train_without_its_server_fails_in_one_line_naming_it(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "LAB_TRACKING_TIMEOUT_S": "2"}
    out = subprocess.run([str(Path(sys.executable).parent / "lab-train"), "experiment=smoke", "tracking=server"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: no MLflow tracking server answers at {uri}")
    assert not list(tmp_path.rglob("*.ckpt")), "nothing trained without a store to record it"


def test_unreachable_postgres_is_named_with_the_fix(tmp_path):
    url = "postgresql+psycopg://postgres@127.0.0.1:1/lab_nowhere"
    out = subprocess.run([sys.executable, "-m", "tracking.server", "--backend-store-uri", url, "--port",
                          str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: PostgreSQL at {url} is not reachable")
    assert "Start PostgreSQL on 127.0.0.1:1" in out.stderr and "--backend-store-uri" in out.stderr


def test_a_server_config_without_postgres_is_rejected():
    with pytest.raises(ServerError, match="keeps runs in PostgreSQL"):
        ServerConfig(backend_store_uri="sqlite:///mlflow.db")
    url = "postgresql+psycopg://lab:s3cret@db:5432/mlflow"
    assert hide_password(url) == "postgresql+psycopg://lab:***@db:5432/mlflow"


def test_a_missing_tracking_server_is_named_with_the_fix():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable, match=f"no MLflow tracking server answers at {uri}.*`lab-server`"):
        ensure_store(uri, wait_s=1)
