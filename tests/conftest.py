"""Shared fixtures. The shared/ folder sits beside the repository (../shared)."""

from __future__ import annotations

import functools
import os
import queue
import secrets
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.paths import ROOT, SHARED


def pytest_configure(config) -> None:
    """Hypothesis keeps its example database and its Unicode tables in ./.hypothesis: here, under a tmp dir
    (set before any test module builds a strategy at import)."""
    import tempfile

    from hypothesis.configuration import set_hypothesis_home_dir

    config.rxgate_hypothesis_home = tempfile.mkdtemp(prefix="rxgate-hypothesis-")
    set_hypothesis_home_dir(config.rxgate_hypothesis_home)


def pytest_unconfigure(config) -> None:
    shutil.rmtree(getattr(config, "rxgate_hypothesis_home", ""), ignore_errors=True)


TEST_AUDIT_KEY = "rxgate-test-audit-key-0123456789abcdef"  # the audit chain's key in every test process

# What pytest, Python and pip write into the repository by themselves (all in .gitignore).
TOOLING = ("__pycache__", ".pytest_cache", ".venv", ".egg-info", ".ruff_cache")


def repository_files() -> set[str] | None:
    """Untracked and ignored paths of the repository (`git status --porcelain --ignored`), None without git."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None
    paths = {line[3:] for line in out.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(part in p for part in TOOLING)}


@pytest.fixture(scope="session", autouse=True)
def writes_only_under_tmp(tmp_path_factory):
    """Tests write only under temporary directories, even when run from the folder of a running service.

    The settings that name places (RXGATE_VAR_DIR: database, embedded Redis, its URL file; RXGATE_METRICS_DIR)
    point into a session tmp dir, and so does the working directory (subprocesses started without `cwd`,
    relative paths, hypothesis' example database). PROMETHEUS_MULTIPROC_DIR is removed: a shell of a running
    service may export its live directory, and this process counts in its own memory (workers/metrics.py);
    processes the tests start choose theirs from RXGATE_METRICS_DIR (or their own RXGATE_VAR_DIR).
    At the end, the repository must hold no new file (`var/` above all): the session fails otherwise.
    """
    home = tmp_path_factory.mktemp("rxgate-home")
    before = repository_files()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RXGATE_VAR_DIR", str(home / "var"))
        mp.setenv("RXGATE_METRICS_DIR", str(home / "var" / "metrics"))
        # the audit chain's HMAC key (the service refuses to start without one): a fixed test key
        mp.setenv("RXGATE_AUDIT_KEY", TEST_AUDIT_KEY)
        mp.delenv("RXGATE_AUDIT_KEY_FILE", raising=False)
        mp.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        mp.delenv("prometheus_multiproc_dir", raising=False)
        mp.chdir(home)
        yield home
    after = repository_files()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, f"the tests wrote into the repository {ROOT}: {new[:20]}"


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


@functools.cache
def postgres_unreachable_reason() -> str | None:
    try:
        with _pg_admin_connect():
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL unreachable at {PG_ADMIN_URL}: {str(exc).strip().splitlines()[0] if str(exc) else exc}"


class PgDatabases:
    """Databases rxgate_test_<random> of one test session (one per pytest process under xdist).

    `empty()` is a new, empty database; `migrated()` a copy of a template migrated once per session
    (CREATE DATABASE ... TEMPLATE: ~0.1 s instead of ~1 s of migrations per test). `drop()` hands a
    database to a background thread (a DROP takes ~0.8 s); `close()` waits for the drops, then drops the
    template.
    """

    def __init__(self) -> None:
        self.base = PG_ADMIN_URL.rsplit("/", 1)[0]
        self.template: str | None = None
        self.drops: queue.Queue[str | None] = queue.Queue()
        self.dropper = threading.Thread(target=self._drop_all, name="pg-dropper", daemon=True)
        self.dropper.start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def empty(self, template: str | None = None) -> str:
        name = f"rxgate_test_{secrets.token_hex(6)}"
        with _pg_admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def migrated(self) -> str:
        if self.template is None:
            from workers.store import open_sql_store

            template = self.empty()
            open_sql_store(self.url(template), create=True).dispose()  # no connection may stay open on a template
            self.template = template
        return self.empty(self.template)

    def drop(self, name: str) -> None:
        self.drops.put(name)

    def _drop_all(self) -> None:
        while (name := self.drops.get()) is not None:
            try:
                with _pg_admin_connect() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:  # noqa: BLE001 - a database left behind is named by its prefix; never fail a test
                pass

    def close(self) -> None:
        if self.template is not None:
            self.drops.put(self.template)
        self.drops.put(None)
        self.dropper.join(120)


@pytest.fixture(scope="session")
def pg_databases():
    reason = postgres_unreachable_reason()
    if reason:
        pytest.skip(reason)
    databases = PgDatabases()
    yield databases
    databases.close()


@pytest.fixture
def pg_url(pg_databases):
    """A PostgreSQL database with rxgate's schema (a copy of the session's migrated template), dropped after."""
    name = pg_databases.migrated()
    yield pg_databases.url(name)
    pg_databases.drop(name)


@pytest.fixture
def empty_pg_url(pg_databases):
    """A new, empty PostgreSQL database (no schema), dropped after: for the migrations themselves."""
    name = pg_databases.empty()
    yield pg_databases.url(name)
    pg_databases.drop(name)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'db' / 'rxgate.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test on SQLite and on the machine's PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path):
    """db_url without the schema: a new SQLite file, an empty PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("empty_pg_url")


@pytest.fixture
def store(db_url):
    """An SQL store on SQLite and on the real PostgreSQL (via db_url), disposed after the test."""
    from workers.store import open_sql_store

    s = open_sql_store(db_url, create=True)
    yield s
    s.dispose()


@pytest.fixture
def filled_audit_db(tmp_path, monkeypatch) -> str:
    """A SQLite audit log filled by tests.builders.fill_audit_store, read in New York time."""
    from tests.builders import fill_audit_store

    monkeypatch.setenv("RXGATE_TIMEZONE", "America/New_York")
    monkeypatch.delenv("RXGATE_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    fill_audit_store(url)
    return url
