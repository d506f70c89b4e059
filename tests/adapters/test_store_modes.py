"""Opening the store with an explicit mode (workers/store/engine.py `open_engine`), on SQLite.

The service and `rxgate check --db` create and migrate; `rxgate audit …` and the HTTP API never
create a database (docs/interfaces.md §5 "Access"): a wrong URL is an error (exit 2), never an
empty log verified as intact. The same on an empty PostgreSQL database: tests/integration/test_sqlstore.py.
"""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from tests.paths import ROOT
from workers.bootstrap import open_store
from workers.cli import main
from workers.http.app import create_app
from workers.store import SqlStore, StoreMissing, StoreUnavailable, open_sql_store, verify_chain


@pytest.mark.parametrize("argv", [["audit", "verify"], ["audit"], ["audit", "head"]],
                         ids=["verify", "list", "head"])
def test_audit_commands_refuse_a_missing_sqlite_file_and_create_nothing(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RXGATE_DATABASE_URL", raising=False)
    code = main([*argv, "--db", "sqlite:///var/typo.db"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no rxgate audit log at sqlite:///var/typo.db (file does not exist)" in err
    assert "Traceback" not in err and "intact" not in err
    assert not (tmp_path / "var").exists()  # neither the file nor its directory


def test_audit_default_database_is_not_created_either(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RXGATE_DATABASE_URL", raising=False)
    assert main(["audit", "verify"]) == 2
    assert "no rxgate audit log at sqlite:///var/rxgate.db (file does not exist)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_http_app_factory_refuses_a_missing_database_at_start_up(tmp_path):
    path = tmp_path / "var" / "typo.db"
    with pytest.raises(StoreMissing, match="file does not exist"):
        create_app(f"sqlite:///{path}", "0" * 64)
    assert not path.exists() and not path.parent.exists()


def test_reader_refuses_a_sqlite_file_without_rxgate_tables(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    for path in (empty, other):
        with pytest.raises(StoreMissing, match=r"no rxgate audit log at .*\(no rxgate tables\)"):
            open_sql_store(f"sqlite:///{path}", create=False)
    with sqlite3.connect(other) as conn:  # nothing was added to it
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]
    with pytest.raises(StoreMissing, match="no rxgate tables"):
        open_sql_store("sqlite://", create=False)  # in memory: never a log to read


def test_reader_refuses_a_partial_schema_naming_the_missing_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    open_sql_store(url, create=True).dispose()
    with sqlite3.connect(tmp_path / "rx.db") as conn:
        conn.execute("DROP TABLE responses")
    with pytest.raises(StoreMissing, match=r"\(rxgate tables missing: responses\)"):
        open_sql_store(url, create=False)


def test_reader_refuses_an_unknown_or_older_migration_revision(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    open_sql_store(url, create=True).dispose()
    with sqlite3.connect(tmp_path / "rx.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreMissing, match=r"unknown migration revision 9999: written by a newer rxgate"):
        open_sql_store(url, create=False)
    with sqlite3.connect(tmp_path / "rx.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
    # as if this code had a newer migration than the database: the reader must not migrate it
    monkeypatch.setattr(ScriptDirectory, "get_heads", lambda self: ["0002"])
    with pytest.raises(StoreMissing, match=r"schema at revision 0001, this rxgate needs 0002"):
        open_sql_store(url, create=False)
    with sqlite3.connect(tmp_path / "rx.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]


def test_reader_opens_an_existing_log_without_changing_its_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'rx.db'}"
    open_sql_store(url, create=True).dispose()
    store = open_sql_store(url, create=False)
    try:
        assert isinstance(store, SqlStore)
        assert verify_chain(store).intact and store.head() is None
    finally:
        store.dispose()


def test_missing_is_not_transient(tmp_path):
    """A wrong URL does not heal by waiting: never retried as a busy database would be."""
    from workers.bootstrap import is_transient

    with pytest.raises(StoreMissing) as exc:
        open_sql_store(f"sqlite:///{tmp_path / 'nope.db'}", create=False)
    assert not is_transient(exc.value)


def test_service_store_that_cannot_be_opened_is_a_start_up_error_naming_the_url():
    """No fallback to an in-memory store (no audit log, no de-duplication)."""
    with pytest.raises(StoreUnavailable) as exc:
        open_store("postgresql://rx:sekret@127.0.0.1:1/rxgate")
    assert "cannot open database postgresql://rx:***@127.0.0.1:1/rxgate" in str(exc.value)
    assert "sekret" not in str(exc.value)


def test_service_store_creates_a_new_sqlite_log_and_its_directories(tmp_path):
    path = tmp_path / "a" / "b" / "rx.db"
    store = open_store(f"sqlite:///{path}")
    try:
        assert isinstance(store, SqlStore) and path.exists()
    finally:
        store.dispose()


def _import_fallbacks(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                if names & {"ImportError", "ModuleNotFoundError"}:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_import_fallbacks_in_product_code():
    """A missing part is a start-up error naming it, never a quiet substitute (house rules)."""
    assert _import_fallbacks(ROOT / "workers") + _import_fallbacks(ROOT / "validator") == []


def test_database_errors_keep_their_retry_class_and_lose_their_text():
    """A busy or unreachable database is waited out, a refused statement is not; neither keeps its text."""
    import sqlite3 as driver

    from sqlalchemy.exc import IntegrityError, OperationalError

    from workers.bootstrap import is_transient
    from workers.store import StoreRefused
    from workers.store.errors import safe_database_error

    busy = safe_database_error(OperationalError("INSERT ...", {"mrn": "ZQMRN77"}, driver.OperationalError("locked")),
                               "sqlite:///x.db")
    refused = safe_database_error(IntegrityError("INSERT ...", ("ZQMRN77",), driver.IntegrityError("ZQMRN77")),
                                  "sqlite:///x.db")
    assert isinstance(busy, StoreUnavailable) and is_transient(busy)
    assert isinstance(refused, StoreRefused) and not is_transient(refused)
    assert str(busy) == "database sqlite:///x.db unavailable: OperationalError (sqlite3.OperationalError)"
    assert "ZQMRN77" not in str(refused) and "sqlite3.IntegrityError" in str(refused)


def test_health_reports_a_missing_sqlite_file_as_down_and_creates_nothing(tmp_path):
    from workers.health import check_database

    result = check_database(f"sqlite:///{tmp_path / 'var' / 'typo.db'}")
    assert result["ok"] is False
    assert "no database file" in result["detail"]
    assert not (tmp_path / "var").exists()
    (tmp_path / "rx.db").touch()
    assert check_database(f"sqlite:///{tmp_path / 'rx.db'}")["ok"] is True
