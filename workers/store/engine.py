"""Connecting to the database: engines, SQLite's connection set-up, migrations, and opening with a mode.

- `make_engine`: SQLAlchemy engines for `sqlite:///path.db` (a file; `sqlite://` in memory) and
  `postgresql://` (psycopg 3), with bound parameters kept out of error texts (`hide_parameters`).
- SQLite: WAL journal, foreign keys, and writers that take the write lock at BEGIN (`BEGIN
  IMMEDIATE`) after queueing on an OS file lock (`QueuedWriterConnection`), so two appends never
  read the same chain head and the next writer starts as soon as the last one commits.
- `open_engine(url, create=...)`: the service and `rxgate check --db` create and migrate the
  schema (`migrate`, Alembic); the auditors' commands and the HTTP API only accept a database that
  already holds rxgate's tables at a revision this code knows (`require_schema`), and never create
  a file (docs/interfaces.md §5 "Access").
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from workers.store.errors import StoreMissing, StoreUnavailable
from workers.store.schema import Base

MIGRATION_LOCK_KEY = 0x7278676D  # 'rxgm': pg_advisory_xact_lock key serialising concurrent first-time migrations
MIGRATIONS = Path(__file__).with_name("migrations")


def _driver_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str) -> str:
    """The URL for messages and logs: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return "<unparseable URL>"


def _sqlite_file(parsed: URL) -> Path | None:
    """The database file of a SQLite URL; None in memory."""
    database = parsed.database or ""
    return None if database in ("", ":memory:") else Path(database).expanduser()


def make_engine(url: str, *, create: bool) -> Engine:
    """An engine for URL; `create=True` also makes a SQLite file's parent directories."""
    try:
        parsed = _driver_url(url)
    except Exception as exc:
        raise StoreUnavailable(f"not a database URL ({exc}); use sqlite:///path.db or postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60, "check_same_thread": False,
                                                   "factory": QueuedWriterConnection}}
        if path is None:
            kwargs["poolclass"] = StaticPool
        elif create:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, hide_parameters=True, **kwargs)
        _sqlite_events(engine, in_memory=path is None)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise StoreUnavailable(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://")
    return create_engine(parsed, pool_pre_ping=True, hide_parameters=True, connect_args={"connect_timeout": 10})


def _sqlite_events(engine: Engine, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            try:
                cur.execute("PRAGMA journal_mode=WAL")
            except Exception:  # noqa: BLE001 - e.g. a file system without shared memory: keep the default
                pass
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the write lock at BEGIN, so two appends never read the same chain head.
        if conn.get_execution_options().get("rxgate_read_only"):
            conn.exec_driver_sql("BEGIN DEFERRED")
            return
        dbapi_conn = conn.connection.dbapi_connection
        dbapi_conn.queue_for_write()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            dbapi_conn.leave_write_queue()
            raise


class QueuedWriterConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions queue on an OS file lock (`<database>.writers`)
    before BEGIN IMMEDIATE, released at COMMIT or ROLLBACK.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries, so workers contending for
    the write lock (the chain is appended one record at a time) left the CPU idle: two bridges ran
    at 66 % of the ideal rate with 99 % of the ideal CPU (BENCHMARKS.md). Here the next writer takes
    the lock within half a millisecond of the commit. A writer that waits longer than the connection's
    timeout gets "database is locked", a transient error, as from SQLite itself.
    """

    def __init__(self, database, *args, **kwargs) -> None:
        super().__init__(database, *args, **kwargs)
        name = str(database)
        self._queue_path = None if name in ("", ":memory:") or name.startswith("file:") else f"{name}.writers"
        self._queue_fd: int | None = None
        self._queued = False
        self._wait = float(kwargs.get("timeout", 5.0))

    def queue_for_write(self) -> None:
        if self._queue_path is None or self._queued:
            return
        if self._queue_fd is None:
            self._queue_fd = os.open(self._queue_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._wait
        while True:
            try:
                fcntl.flock(self._queue_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError("database is locked (another rxgate writer holds it)") from None
                time.sleep(0.0005)
        self._queued = True

    def leave_write_queue(self) -> None:
        if self._queued:
            self._queued = False
            fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_write_queue()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_write_queue()

    def close(self) -> None:
        self.leave_write_queue()
        if self._queue_fd is not None:
            os.close(self._queue_fd)
            self._queue_fd = None
        super().close()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine) -> None:
    """Alembic upgrade to head (idempotent; concurrent starters on PostgreSQL wait for each other)."""
    cfg = _alembic_config()
    if engine.dialect.name == "sqlite":
        _migrate_sqlite(engine, cfg)
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _migrate_sqlite(engine: Engine, cfg: Config) -> None:
    """SQLite alters a table by rebuilding it (copy, drop, rename), which foreign keys pointing at it
    refuse while they are enforced: they are switched off for the upgrade (outside its transaction,
    the only place SQLite honours it), every reference is checked before the commit, and they are
    switched on again."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                if broken is not None:
                    raise StoreUnavailable(f"migration left a broken reference in table {broken[0]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def require_schema(engine: Engine, url: str) -> None:
    """rxgate's tables at the revision this code writes, read without changing anything; else StoreMissing.

    A known older revision is refused too (safe reading): the caller must not migrate, and this
    code's queries may not fit the old tables. The service or `rxgate check --db` migrates it.
    """
    with engine.execution_options(rxgate_read_only=True).connect() as conn:
        tables = set(inspect(conn).get_table_names())
        ours = set(Base.metadata.tables) | {"alembic_version"}
        missing = sorted(ours - tables)
        if missing == sorted(ours):
            raise StoreMissing(f"no rxgate audit log at {safe_url(url)} (no rxgate tables)")
        if missing:
            raise StoreMissing(f"no rxgate audit log at {safe_url(url)} (rxgate tables missing: {', '.join(missing)})")
        found = sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    script = ScriptDirectory.from_config(_alembic_config())
    heads = sorted(script.get_heads())
    if found == heads:
        return
    known = {r.revision for r in script.walk_revisions()}
    unknown = [r for r in found if r not in known]
    if unknown or not found:
        raise StoreMissing(f"no rxgate audit log at {safe_url(url)} (unknown migration revision "
                           f"{', '.join(unknown) or 'none'}: written by a newer rxgate?)")
    raise StoreMissing(f"no rxgate audit log at {safe_url(url)} readable by this rxgate (schema at revision "
                       f"{', '.join(found)}, this rxgate needs {', '.join(heads)}: start the service once to migrate it)")


def _refuse_missing_sqlite_file(url: str) -> None:
    """Checked before any connection: connecting to SQLite creates the file."""
    try:
        parsed = _driver_url(url)
    except Exception:  # noqa: BLE001 - make_engine says what is wrong with the URL
        return
    path = _sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is not None and not path.exists():
        raise StoreMissing(f"no rxgate audit log at {safe_url(url)} (file does not exist)")


def open_engine(url: str, *, create: bool) -> Engine:
    """The engine for the store at URL, schema created or migrated (`create=True`) or required to be there.

    `create=False`: a SQLite file that does not exist raises `StoreMissing` before anything could
    create it; so does any database without rxgate's tables. An unreachable database raises
    `StoreUnavailable` naming the URL (password hidden) and the driver's reason (at this point no
    statement carries patient data).
    """
    if not create:
        _refuse_missing_sqlite_file(url)
    engine = make_engine(url, create=create)
    try:
        if create:
            migrate(engine)
        else:
            require_schema(engine, url)
    except StoreMissing:
        engine.dispose()
        raise
    except (SQLAlchemyError, OSError) as exc:
        engine.dispose()
        reason = getattr(exc, "orig", None) or exc
        first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        raise StoreUnavailable(f"cannot open database {safe_url(url)}: {first_line}") from None
    return engine
