"""Eight worker processes training at once on one Optuna study, MLflow and Optuna both in SQLite (the default):
nothing lost, nothing twice, no "database is locked", no schema-migration race.

Every worker runs the lab-study entry point in its own process (one torch thread, one tiny trial, no pruning);
the stores are created by whichever worker comes first. The same scenario against the PostgreSQL-backed tracking
server is in tests/lab/test_server.py (it shares that module's server). Both are scenarios of
benchmarks/reliability.py; this asserts: trials == runs, each trial's MLflow run exists once and FINISHED, each
run's per-step metrics hold steps 1..S exactly once, and no worker printed a store error.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from reliability_scenarios import problems, scenario_concurrency_sqlite  # noqa: E402

WORKERS = 8


def test_eight_workers_on_sqlite_stores(tmp_path):
    result = scenario_concurrency_sqlite(tmp_path, workers=WORKERS, launch="fork")
    assert problems(result) == []
    assert result["launched"] == result["recorded"] == WORKERS
    assert WORKERS * 6 * 10 <= result["metric_steps"]["expected"] <= WORKERS * 6 * 20  # 6 per-step metrics x S
