"""Shared fixtures. The shared/ folder sits beside the repository (../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared folder not found at {SHARED} (set RXGATE_SHARED_DIR)")
    return SHARED


# --- databases for the SQL store and audit tests (workers/store/) -------------------------

PG_ADMIN_URL = os.environ.get("RXGATE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin_connect():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                           connect_timeout=3)


def postgres_unreachable_reason() -> str | None:
    try:
        with _pg_admin_connect():
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL unreachable at {PG_ADMIN_URL}: {str(exc).strip().splitlines()[0] if str(exc) else exc}"


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database rxgate_test_<random>, dropped afterwards."""
    import secrets

    reason = postgres_unreachable_reason()
    if reason:
        pytest.skip(reason)
    name = f"rxgate_test_{secrets.token_hex(6)}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'db' / 'rxgate.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test on SQLite and on the machine's PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    """An SQL store on SQLite and on the real PostgreSQL (via db_url), disposed after the test."""
    from workers.store import open_sql_store

    s = open_sql_store(db_url, create=True)
    yield s
    s.dispose()
