"""The SQL store: course history, message keys, deliveries and the tamper-evident audit log.

Implements `validator.history.Store` with SQLAlchemy 2 on SQLite (default, a file under ./var/)
or PostgreSQL (production). The schema is created and migrated with Alembic
(`workers/store/migrations/`) when the store is opened.

Tables (one audit record = one row of `audit_chain` + `messages` + `verdicts` + `responses`
+ its `findings`, all with the same id = the record's sequence number):

- `audit_chain`  seq (gapless, 1, 2, 3...), prev_hash, hash: the hash chain.
- `messages`     id = seq; received/answered times (UTC), sender, MSH-3, MSH-4, control id,
                 message type, patient id / key, SHA-256 of the normalised message, raw text.
- `verdicts`     message_id; ack code, protocol id + version hash, computed values (JSON),
                 the full JSON result (docs/interfaces.md §1).
- `findings`     message_id, position; order index / placer number, rule, severity, location, message.
- `responses`    message_id; the HL7 response (ER7) sent.
- `message_keys` (MSH-3, MSH-4, MSH-10) unique, content SHA-256, the stored answer (docs/interfaces.md §3).
- `deliveries`   one row per delivery of a keyed message (the first included).
- `course_history` every accepted order (drug, start, placer number, sender), `cancelled_by`
                 set (never deleted) when a cancellation removes it from the course.
- `cancellations` every CA/DC request applied, with `leaves_history`.

The hash of record N is SHA-256 over the canonical JSON (sorted keys, no spaces, UTF-8) of
`{"content": <record content>, "prev_hash": <hash of N-1>, "seq": N}`; record 1 links to 64 zeros.
The content is rebuilt from the rows above (see `record_content`), so an UPDATE of any audited
column, a deleted or an inserted row breaks the chain at that record. Appends are serialised:
`pg_advisory_xact_lock` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite. The service never updates or
deletes audit rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from validator.history import HistoryChanged as CoreHistoryChanged
from validator.history import HistoryEntry, KeyTaken, MessageKey, ProcessedMessage, StoredAnswer

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's own busy handler alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("rxgate.store")

GENESIS_HASH = "0" * 64
CHAIN_LOCK_KEY = 0x72786761  # 'rxga': pg_advisory_xact_lock key serialising audit appends
MIGRATION_LOCK_KEY = 0x7278676D  # 'rxgm': serialises concurrent first-time migrations


class StoreUnavailable(Exception):
    """The database cannot be reached or opened (said plainly, password hidden)."""


class HistoryChanged(StoreUnavailable, CoreHistoryChanged):
    """The patient's course history changed between reading it and saving the verdict (concurrent workers).

    The core judges again at once (validator.service); should that keep losing the race, it is
    transient by design (a StoreUnavailable): the bridge and the Celery task retry.
    """


# ---------------------------------------------------------------------------------------------
# canonical JSON and the chain hash


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, non-ASCII kept: the exact text the chain hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def chain_hash(content: dict[str, Any], seq: int, prev_hash: str) -> str:
    payload = canonical_json({"content": content, "prev_hash": prev_hash, "seq": seq})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _utc_iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _key_matches(key: MessageKey) -> tuple:
    """WHERE clauses selecting the message_keys row of (MSH-3, MSH-4, MSH-10)."""
    return (
        MessageKeyRow.sending_application == _clean(key.sending_application),
        MessageKeyRow.sending_facility == _clean(key.sending_facility),
        MessageKeyRow.control_id == _clean(key.control_id),
    )


def _clean(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: replace it (the raw message itself is kept as bytes)."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _encode_raw(text_: str) -> bytes:
    return text_.encode("utf-8", "surrogatepass")


def _decode_raw(data: bytes) -> str:
    return bytes(data).decode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------
# models


class UTCDateTime(TypeDecorator):
    """Aware datetimes stored as UTC (naive UTC on SQLite), read back as aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ChainRow(Base):
    __tablename__ = "audit_chain"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    answered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sender: Mapped[str] = mapped_column(String(500), default="")
    sending_application: Mapped[str] = mapped_column(String(500), default="")
    sending_facility: Mapped[str] = mapped_column(String(500), default="")
    control_id: Mapped[str | None] = mapped_column(String(500), nullable=True, index=True)
    message_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(500), nullable=True, index=True)
    patient_key: Mapped[str] = mapped_column(String(1000), default="", index=True)
    content_sha256: Mapped[str] = mapped_column(String(64))
    raw_message: Mapped[bytes] = mapped_column(LargeBinary)


class VerdictRow(Base):
    __tablename__ = "verdicts"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    ack_code: Mapped[str] = mapped_column(String(2), index=True)
    protocol_id: Mapped[str] = mapped_column(String(200), default="")
    protocol_version: Mapped[str] = mapped_column(String(200), default="")
    computed: Mapped[str] = mapped_column(Text)  # canonical JSON
    result: Mapped[str] = mapped_column(Text)  # canonical JSON of the docs/interfaces.md §1 result


class FindingRow(Base):
    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("message_id", "position", name="uq_findings_message_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    order_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    placer_number: Mapped[str | None] = mapped_column(String(500), nullable=True)
    rule: Mapped[str] = mapped_column(String(100), index=True)
    severity: Mapped[str] = mapped_column(String(10))
    location: Mapped[str | None] = mapped_column(String(50), nullable=True)
    message: Mapped[str] = mapped_column(Text)


class ResponseRow(Base):
    __tablename__ = "responses"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    response: Mapped[str] = mapped_column(Text)


class MessageKeyRow(Base):
    __tablename__ = "message_keys"
    __table_args__ = (
        UniqueConstraint("sending_application", "sending_facility", "control_id", name="uq_message_keys_sender_control"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sending_application: Mapped[str] = mapped_column(String(500))
    sending_facility: Mapped[str] = mapped_column(String(500))
    control_id: Mapped[str] = mapped_column(String(500))
    content_sha256: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    result: Mapped[str] = mapped_column(Text)  # the answer as first given, JSON


class DeliveryRow(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_key_id: Mapped[int] = mapped_column(ForeignKey("message_keys.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class HistoryRow(Base):
    __tablename__ = "course_history"
    __table_args__ = (Index("ix_course_history_match", "patient_key", "sender", "placer_number", "placer_namespace"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_key: Mapped[str] = mapped_column(String(1000))
    sender: Mapped[str] = mapped_column(String(1000))
    placer_number: Mapped[str] = mapped_column(String(500))
    placer_namespace: Mapped[str] = mapped_column(String(500), default="")
    control_id: Mapped[str] = mapped_column(String(500))
    drug_code: Mapped[str] = mapped_column(String(500), default="")
    drug_text: Mapped[str] = mapped_column(String(1000), default="")
    protocol_order: Mapped[bool] = mapped_column(Boolean)
    start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    entry: Mapped[str] = mapped_column(Text)  # the HistoryEntry as JSON, read back exactly (offsets kept)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    cancelled_by: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CancellationRow(Base):
    __tablename__ = "cancellations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    patient_key: Mapped[str] = mapped_column(String(1000))
    sender: Mapped[str] = mapped_column(String(1000))
    placer_number: Mapped[str] = mapped_column(String(500))
    placer_namespace: Mapped[str] = mapped_column(String(500), default="")
    control: Mapped[str] = mapped_column(String(2))
    leaves_history: Mapped[bool] = mapped_column(Boolean)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    entries_removed: Mapped[int] = mapped_column(Integer, default=0)


# ---------------------------------------------------------------------------------------------
# the audit record's content (hashed), rebuilt from the rows


def record_content(
    message: MessageRow, verdict: VerdictRow | None, response: ResponseRow | None, findings: list[FindingRow]
) -> dict[str, Any]:
    """What the chain hashes for one record: every audited column of its rows.

    Verification calls this on rows read back from the database, the writer on the rows it is
    about to insert, so both see the same values.
    """
    return {
        "message": {
            "id": message.id,
            "received_at": _utc_iso(message.received_at),
            "answered_at": _utc_iso(message.answered_at),
            "sender": message.sender,
            "sending_application": message.sending_application,
            "sending_facility": message.sending_facility,
            "control_id": message.control_id,
            "message_type": message.message_type,
            "patient_id": message.patient_id,
            "patient_key": message.patient_key,
            "content_sha256": message.content_sha256,
            "raw_message": _decode_raw(message.raw_message),
        },
        "verdict": None
        if verdict is None
        else {
            "message_id": verdict.message_id,
            "ack_code": verdict.ack_code,
            "protocol_id": verdict.protocol_id,
            "protocol_version": verdict.protocol_version,
            "computed": verdict.computed,
            "result": verdict.result,
        },
        "response": None if response is None else {"message_id": response.message_id, "response": response.response},
        "findings": [
            {
                "message_id": f.message_id,
                "position": f.position,
                "order_index": f.order_index,
                "placer_number": f.placer_number,
                "rule": f.rule,
                "severity": f.severity,
                "location": f.location,
                "message": f.message,
            }
            for f in sorted(findings, key=lambda f: (f.position, f.id or 0))
        ],
    }


def _finding_rows(seq: int, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The `findings` rows (column values) of one record."""
    orders = result.get("orders") or []
    rows = []
    for position, f in enumerate(result.get("findings") or []):
        order_index = next((i for i, o in enumerate(orders) if f in (o.get("findings") or [])), None)
        rows.append(
            dict(
                message_id=seq,
                position=position,
                order_index=order_index,
                placer_number=_clean(orders[order_index].get("placer_order_number")) if order_index is not None else None,
                rule=_clean(str(f.get("rule") or "")),
                severity=_clean(str(f.get("severity") or "")),
                location=_clean(f.get("location")),
                message=_clean(str(f.get("message") or "")),
            )
        )
    # order findings that the message-level list does not repeat (it should hold them all)
    listed = result.get("findings") or []
    for i, order in enumerate(orders):
        for f in order.get("findings") or []:
            if f not in listed:
                rows.append(
                    dict(
                        message_id=seq, position=len(rows), order_index=i,
                        placer_number=_clean(order.get("placer_order_number")),
                        rule=_clean(str(f.get("rule") or "")), severity=_clean(str(f.get("severity") or "")),
                        location=_clean(f.get("location")), message=_clean(str(f.get("message") or "")),
                    )
                )
    return rows


# ---------------------------------------------------------------------------------------------
# engine and migrations


def _driver_url(url: str):
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return "<unparseable URL>"


def make_engine(url: str) -> Engine:
    try:
        parsed = _driver_url(url)
    except Exception as exc:
        raise StoreUnavailable(f"not a database URL ({exc}); use sqlite:///path.db or postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60, "check_same_thread": False,
                                                   "factory": QueuedWriterConnection}}
        if database in ("", ":memory:"):
            kwargs["poolclass"] = StaticPool
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        _sqlite_events(engine, in_memory=database in ("", ":memory:"))
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise StoreUnavailable(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://")
    return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})


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
        if self._queue_path is None or self._queued or fcntl is None:
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


def migrate(engine: Engine) -> None:
    """Alembic upgrade to head (idempotent; concurrent starters on PostgreSQL wait for each other)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# ---------------------------------------------------------------------------------------------
# the store


class SqlStore:
    """`validator.history.Store` on SQL, plus read access for the auditors' queries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_engine = engine.execution_options(rxgate_read_only=True)
        self._reader = sessionmaker(self._read_engine, expire_on_commit=False)
        self._seen = threading.local()  # per thread: patient key -> history row ids of its last orders_for
        self._wal: bool | None = None  # SQLite: journal_mode is WAL (read once)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def read_session(self) -> Session:
        """A session for queries (on SQLite a deferred transaction that does not block writers)."""
        return self._reader()

    def dispose(self) -> None:
        self.engine.dispose()

    # --- the port

    # The two reads of every message use a plain connection, not an ORM session: a third of the
    # cost per message (BENCHMARKS.md).
    def answer_for(self, key: MessageKey) -> StoredAnswer | None:
        with self._reading() as conn:
            row = conn.execute(
                select(MessageKeyRow.content_sha256, MessageKeyRow.result).where(*_key_matches(key))
            ).first()
            if row is None:
                return None
            return StoredAnswer(content_sha256=row.content_sha256, result=json.loads(row.result))

    def orders_for(self, patient_key: str) -> list[HistoryEntry]:
        with self._reading() as s:
            rows = s.execute(
                select(HistoryRow.id, HistoryRow.entry)
                .where(HistoryRow.patient_key == _clean(patient_key), HistoryRow.cancelled_by.is_(None))
                .order_by(HistoryRow.id)
            ).all()
            # the history this thread judged on, re-checked under the chain lock by save_all (HistoryChanged)
            self._snapshots()[patient_key] = tuple(r.id for r in rows)
            return [HistoryEntry.model_validate_json(r.entry) for r in rows]

    @contextmanager
    def reads_together(self) -> Iterator[None]:
        """This thread's reads share one connection until the block ends (the bridge's batch: no pool
        checkout, ping and rollback per read, half the cost of a read on PostgreSQL). A write by this
        thread ends that connection's read transaction, so the reads after it see the write."""
        if not self._reads_can_share:
            yield
            return
        with self._read_engine.connect() as conn:
            self._seen.reads = conn
            try:
                yield
            finally:
                self._seen.reads = None

    @property
    def _reads_can_share(self) -> bool:
        """PostgreSQL, or SQLite in WAL mode. In SQLite's rollback-journal mode (or in memory, one
        connection for all) an open read transaction would block this thread's own commit."""
        if self.dialect != "sqlite":
            return True
        if self._wal is None:
            with self._read_engine.connect() as conn:
                self._wal = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower() == "wal"
        return self._wal

    def _reading(self):
        shared = getattr(self._seen, "reads", None)
        return nullcontext(shared) if shared is not None else self._read_engine.connect()

    def _snapshots(self) -> dict[str, tuple[int, ...]]:
        """Per thread: patient key -> the history row ids its last `orders_for` returned."""
        snapshots = getattr(self._seen, "snapshots", None)
        if snapshots is None:
            snapshots = self._seen.snapshots = {}
        return snapshots

    def _changed_patients(self, s: Session, seen: dict[str, tuple[int, ...]]) -> list[str]:
        """The patients whose current history differs from what this thread read (one query for all)."""
        if not seen:
            return []
        now: dict[str, list[int]] = {k: [] for k in seen}
        rows = s.execute(
            select(HistoryRow.patient_key, HistoryRow.id)
            .where(HistoryRow.patient_key.in_([_clean(k) for k in seen]), HistoryRow.cancelled_by.is_(None))
            .order_by(HistoryRow.id)
        ).all()
        cleaned = {_clean(k): k for k in seen}
        for row in rows:
            now[cleaned[row.patient_key]].append(row.id)
        return [k for k, ids in seen.items() if tuple(now[k]) != ids]

    def save(self, processed: ProcessedMessage) -> None:
        self.save_all([processed])
        self._snapshots().clear()  # one message at a time: nothing else of this thread is in flight

    def save_all(self, batch: list[ProcessedMessage], deliveries: list[tuple[MessageKey, datetime]] = ()) -> None:
        """Write the records of several messages (and deliveries of answered ones) in ONE transaction.

        One chain lock, one history re-check, one commit (one fsync) for the whole batch, every
        table's rows inserted together: under a backlog this is what lets two workers share the
        append lock (`BatchedStore` in validator/history.py). All or nothing: a `KeyTaken` or a
        `HistoryChanged` anywhere writes none of the batch.
        """
        if not batch and not deliveries:
            return
        snapshots = self._snapshots()
        # the history each message was judged on (patients read by this thread; a message that is
        # not judged against a history, e.g. an AR, has none to re-check)
        seen = {p.patient_key: snapshots.pop(p.patient_key) for p in batch
                if p.patient_key and p.patient_key in snapshots}
        try:
            with self._sessions.begin() as s:
                if batch:
                    self._lock_chain(s)
                if self._changed_patients(s, seen):
                    # another worker changed a patient's course since it was read: the verdict may be
                    # stale (two day-1 doses judged at once would both pass go.schedule). Nothing is
                    # written; the service judges again (a StoreUnavailable: the callers' retry if not).
                    raise HistoryChanged("the patient's course history changed while the message was judged")
                seq, prev_hash = self._chain_head(s) if batch else (0, GENESIS_HASH)
                records = []
                for processed in batch:
                    seq += 1
                    record = _Record(seq, prev_hash, processed)
                    prev_hash = record.hash
                    records.append(record)
                if records:
                    self._insert_records(s, records)
                for key, received_at in deliveries:
                    key_id = s.execute(select(MessageKeyRow.id).where(*_key_matches(key))).scalar_one_or_none()
                    if key_id is None:
                        log.warning("delivery of an unknown message key control_id=%s not recorded", key.control_id)
                        continue
                    s.add(DeliveryRow(message_key_id=key_id, received_at=received_at))
            shared = getattr(self._seen, "reads", None)
            if shared is not None and shared.in_transaction():
                shared.rollback()  # the shared read connection's next read sees what was just written
        except IntegrityError:
            # a message key stored by another worker after this one looked (the unique key decides)
            taken = [p.key for p in batch if p.key is not None and self.answer_for(p.key) is not None]
            if taken:
                raise KeyTaken(taken[0].control_id) from None
            raise

    def record_delivery(self, key: MessageKey, received_at: datetime) -> None:
        self.save_all([], [(key, received_at)])

    # --- helpers

    def _insert_records(self, s: Session, records: list[_Record]) -> None:
        """Every table's rows of the batch in one multi-row INSERT each (bulk INSERTs, no unit of work:
        the ORM's flush machinery was half the cost of a write). Cancellations are applied before the
        history rows of their own message (a replacement XO carries the placer number it replaces)."""
        s.execute(insert(MessageRow), [r.message for r in records])
        s.execute(insert(VerdictRow), [r.verdict for r in records])
        s.execute(insert(ResponseRow), [r.response for r in records])
        findings = [f for r in records for f in r.findings]
        if findings:
            s.execute(insert(FindingRow), findings)
        s.execute(insert(ChainRow), [r.chain for r in records])
        keyed = [r for r in records if r.key is not None]
        if keyed:
            ids = s.execute(
                insert(MessageKeyRow).returning(MessageKeyRow.id, sort_by_parameter_order=True), [r.key for r in keyed]
            ).scalars().all()
            s.execute(insert(DeliveryRow), [{"message_key_id": key_id, "received_at": r.message["received_at"]}
                                            for key_id, r in zip(ids, keyed, strict=True)])
        if any(r.processed.cancellations for r in records):
            for r in records:
                self._apply_cancellations(s, r.seq, r.processed)
                if r.history:
                    s.execute(insert(HistoryRow), r.history)
        else:
            history = [h for r in records for h in r.history]
            if history:
                s.execute(insert(HistoryRow), history)

    def _lock_chain(self, s: Session) -> None:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})
        # SQLite: the session's BEGIN IMMEDIATE already holds the database's write lock.

    @staticmethod
    def _chain_head(s: Session) -> tuple[int, str]:
        """(seq, hash) of the last record; (0, 64 zeros) for an empty chain."""
        head = s.execute(select(ChainRow.seq, ChainRow.hash).order_by(ChainRow.seq.desc()).limit(1)).first()
        return (0, GENESIS_HASH) if head is None else (head.seq, head.hash)

    @staticmethod
    def _apply_cancellations(s: Session, seq: int, processed: ProcessedMessage) -> None:
        for cancel in processed.cancellations:
            removed = 0
            if cancel.leaves_history:
                rows = s.execute(
                    select(HistoryRow).where(
                        HistoryRow.patient_key == _clean(cancel.patient_key),
                        HistoryRow.sender == _clean(cancel.sender),
                        HistoryRow.placer_number == _clean(cancel.placer_number),
                        HistoryRow.placer_namespace == (_clean(cancel.placer_namespace) or ""),
                        HistoryRow.cancelled_by.is_(None),
                    )
                ).scalars().all()
                for row in rows:
                    row.cancelled_by = seq
                    row.cancelled_at = cancel.requested_at
                removed = len(rows)
            s.add(
                CancellationRow(
                    message_id=seq,
                    patient_key=_clean(cancel.patient_key),
                    sender=_clean(cancel.sender),
                    placer_number=_clean(cancel.placer_number),
                    placer_namespace=_clean(cancel.placer_namespace) or "",
                    control=_clean(cancel.control),
                    leaves_history=cancel.leaves_history,
                    requested_at=cancel.requested_at,
                    entries_removed=removed,
                )
            )
        s.flush()

    def head(self) -> tuple[int, str] | None:
        with self.read_session() as s:
            row = s.execute(select(ChainRow.seq, ChainRow.hash).order_by(ChainRow.seq.desc()).limit(1)).first()
            return None if row is None else (row.seq, row.hash)

    def count(self) -> int:
        with self.read_session() as s:
            return s.execute(select(func.count()).select_from(ChainRow)).scalar_one()


class _Record:
    """The rows of audit record number `seq` (column values), its chain row linked to `prev_hash`."""

    def __init__(self, seq: int, prev_hash: str, processed: ProcessedMessage) -> None:
        self.seq = seq
        self.processed = processed
        result = json.loads(canonical_json(processed.result))
        key = processed.key
        self.message = dict(
            id=seq,
            received_at=_as_utc(processed.received_at),
            answered_at=_as_utc(processed.answered_at),
            sender=_clean(processed.sender) or "",
            sending_application=_clean(key.sending_application) if key else
            _clean(processed.sender.split("^")[0]) if processed.sender else "",
            sending_facility=_clean(key.sending_facility) if key else
            _clean(processed.sender.split("^", 1)[1]) if "^" in processed.sender else "",
            control_id=_clean(processed.control_id),
            message_type=_clean(result.get("message_type")),
            patient_id=_clean(result.get("patient_id")) or _patient_id(processed.patient_key),
            patient_key=_clean(processed.patient_key) or "",
            content_sha256=key.content_sha256 if key else _sha256_normalised(processed.raw_message),
            raw_message=_encode_raw(processed.raw_message),
        )
        self.verdict = dict(
            message_id=seq,
            ack_code=_clean(processed.ack_code),
            protocol_id=_clean(processed.protocol_id) or "",
            protocol_version=_clean(processed.protocol_version) or "",
            computed=canonical_json(processed.computed),
            result=canonical_json(result),
        )
        self.response = dict(message_id=seq, response=_clean(processed.response))
        self.findings = _finding_rows(seq, result)
        # the writer hashes exactly what the rows will read back (verification rebuilds it from them)
        content = record_content(SimpleNamespace(**self.message), SimpleNamespace(**self.verdict),
                                 SimpleNamespace(**self.response), [SimpleNamespace(id=None, **f) for f in self.findings])
        self.hash = chain_hash(content, seq, prev_hash)
        self.chain = dict(seq=seq, prev_hash=prev_hash, hash=self.hash)
        self.key = None if key is None else dict(
            sending_application=_clean(key.sending_application),
            sending_facility=_clean(key.sending_facility),
            control_id=_clean(key.control_id),
            content_sha256=key.content_sha256,
            message_id=seq,
            # key order kept: a redelivery's JSON reads like the first answer
            result=json.dumps(processed.result, ensure_ascii=False, default=_json_default),
        )
        self.history = [
            dict(
                patient_key=_clean(entry.patient_key),
                sender=_clean(entry.sender),
                placer_number=_clean(entry.placer_number),
                placer_namespace=_clean(entry.placer_namespace) or "",
                control_id=_clean(entry.control_id),
                drug_code=_clean(entry.drug.code),
                drug_text=_clean(entry.drug.text),
                protocol_order=entry.protocol_order,
                start=entry.start,
                entry=entry.model_dump_json(),
                message_id=seq,
                cancelled_by=None,
                cancelled_at=None,
            )
            for entry in processed.new_orders
        ]


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _patient_id(patient_key: str) -> str | None:
    return _clean(patient_key.split("^", 1)[0]) if patient_key else None


def _sha256_normalised(raw: str) -> str:
    from validator.er7 import normalise

    return hashlib.sha256(normalise(raw).encode("utf-8", "surrogatepass")).hexdigest()


def open_sql_store(url: str) -> SqlStore:
    """The store at URL, schema created or migrated to the latest version.

    `sqlite:///path.db` creates the parent directories; an unreachable database raises
    `StoreUnavailable` naming the URL (password hidden) and the reason.
    """
    engine = make_engine(url)
    try:
        migrate(engine)
    except (OperationalError, SQLAlchemyError, OSError) as exc:
        engine.dispose()
        reason = getattr(exc, "orig", None) or exc
        first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        raise StoreUnavailable(f"cannot open database {safe_url(url)}: {first_line}") from None
    return SqlStore(engine)
