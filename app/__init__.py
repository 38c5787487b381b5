"""Streamlit dashboard over `analysis` (entry page app/Home.py, started by `lab-dashboard`)."""

import os

URI_ENV = "LAB_TRACKING_URI"
"""Environment variable naming the MLflow store the dashboard opens (lab-dashboard sets it)."""
DEFAULT_URI = "sqlite:///mlflow.db"


def default_uri() -> str:
    """The store the dashboard opens first: $LAB_TRACKING_URI, else $MLFLOW_TRACKING_URI (what tracking=server
    trains into), else ./mlflow.db."""
    return os.environ.get(URI_ENV) or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
