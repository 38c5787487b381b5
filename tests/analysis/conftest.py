"""A migrated, empty MLflow SQLite store made once per session; each test module copies it (a copy skips MLflow's
schema migrations, ~5 s per new store on this machine)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the store
    return path


@pytest.fixture(scope="session")
def new_sqlite_store(empty_store_file) -> Callable[[Path], str]:
    """new_sqlite_store(directory) -> the URI of a fresh, empty MLflow store in that directory."""

    def make(directory: Path) -> str:
        path = directory / "mlflow.db"
        shutil.copyfile(empty_store_file, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture(scope="session")
def new_experiment(new_sqlite_store) -> Callable[[Path, str], tuple[str, object, str]]:
    """new_experiment(directory, name) -> (uri, MlflowClient, experiment id) of a fresh store in that directory
    with one experiment, its artifacts kept beside it."""

    def make(directory: Path, name: str) -> tuple[str, object, str]:
        from mlflow import MlflowClient

        uri = new_sqlite_store(directory)
        client = MlflowClient(uri)
        return uri, client, client.create_experiment(name, artifact_location=(directory / "artifacts").as_uri())

    return make
