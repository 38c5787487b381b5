"""Fixtures for tests that need an outside service, and test data more than one package's tests read.

A test that needs PostgreSQL skips, printing why, when none answers on 127.0.0.1:5432 (trust auth, as on the
project's machines; LAB_POSTGRES_PORT moves the port); with LAB_REQUIRE_SERVICES=1 (CI with services up) it fails
instead, so a missing service is never silently green.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_HOST, PG_ADMIN_DB = "127.0.0.1", "test"
PG_PORT = int(os.environ.get("LAB_POSTGRES_PORT", "5432"))
PG_USERS = ("postgres", "root")


def service_unavailable(reason: str) -> None:
    """Skip the test, or fail it when LAB_REQUIRE_SERVICES=1."""
    if os.environ.get("LAB_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable (LAB_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test module, as a postgresql+psycopg:// URL; dropped after."""
    import psycopg

    errors = []
    for user in PG_USERS:
        try:
            admin = psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname=PG_ADMIN_DB, autocommit=True,
                                    connect_timeout=3)
            break
        except psycopg.OperationalError as err:
            errors.append(f"{user}: {' '.join(str(err).split())}")
    else:
        service_unavailable(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} ({'; '.join(errors)})")
    name = f"lab_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            # FORCE: pooled connections left open by the code under test must not keep the database alive.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def curves_csv(tmp_path_factory):
    """Four Multi-Power Law curves under cosine, constant, two-stage and WSD schedules (tests/schedule_curves.py), as
    the table lab-fit schedule --input reads."""
    from schedule_curves import write_curves_csv  # here: it imports scipy, which most tests do not need

    return write_curves_csv(tmp_path_factory.mktemp("schedule"))
