"""The SQL store: course history, message keys, deliveries and the tamper-evident audit log.

Implements `validator.history.Store` with SQLAlchemy 2 on SQLite (default, a file under ./var/)
or PostgreSQL (production). The schema is created and migrated with Alembic
(`workers/migrations/`) when the store is opened.

Tables (one audit record = one row of `audit_chain` + `messages` + `verdicts` + `responses`
+ its `findings`, all with the same id = the record's sequence number):

- `audit_chain`  seq (gapless, 1, 2, 3...), prev_hash, hash: the hash chain.
- `messages`     id = seq; received/answered times (UTC), sender, MSH-3, MSH-4, control id,
                 message type, patient id / key, SHA-256 of the normalised message, raw text.
- `verdicts`     message_id; ack code, protocol id + version hash, computed values (JSON),
                 the full JSON result (contract §1).
- `findings`     message_id, position; order index / placer number, rule, severity, location, message.
- `responses`    message_id; the HL7 response (ER7) sent.
- `message_keys` (MSH-3, MSH-4, MSH-10) unique, content SHA-256, the stored answer (contract §3).
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
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
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
    result: Mapped[str] = mapped_column(Text)  # canonical JSON of the contract §1 result


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


def _finding_rows(seq: int, result: dict[str, Any]) -> list[FindingRow]:
    orders = result.get("orders") or []
    rows = []
    for position, f in enumerate(result.get("findings") or []):
        order_index = next((i for i, o in enumerate(orders) if f in (o.get("findings") or [])), None)
        rows.append(
            FindingRow(
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
                    FindingRow(
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
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60, "check_same_thread": False}}
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
        mode = "DEFERRED" if conn.get_execution_options().get("rxgate_read_only") else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")


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
        self._reader = sessionmaker(engine.execution_options(rxgate_read_only=True), expire_on_commit=False)
        self._seen = threading.local()  # per thread: (patient key, history row ids) of the last orders_for

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def read_session(self) -> Session:
        """A session for queries (on SQLite a deferred transaction that does not block writers)."""
        return self._reader()

    def dispose(self) -> None:
        self.engine.dispose()

    # --- the port

    def answer_for(self, key: MessageKey) -> StoredAnswer | None:
        with self.read_session() as s:
            row = s.execute(select(MessageKeyRow).where(*_key_matches(key))).scalar_one_or_none()
            if row is None:
                return None
            return StoredAnswer(content_sha256=row.content_sha256, result=json.loads(row.result))

    def orders_for(self, patient_key: str) -> list[HistoryEntry]:
        with self.read_session() as s:
            rows = s.execute(
                select(HistoryRow.id, HistoryRow.entry)
                .where(HistoryRow.patient_key == _clean(patient_key), HistoryRow.cancelled_by.is_(None))
                .order_by(HistoryRow.id)
            ).all()
            # the history this thread judged on, re-checked under the chain lock by save() (HistoryChanged)
            self._seen.snapshot = (patient_key, tuple(r.id for r in rows))
            return [HistoryEntry.model_validate_json(r.entry) for r in rows]

    def _history_ids(self, s: Session, patient_key: str) -> tuple[int, ...]:
        return tuple(s.execute(
            select(HistoryRow.id)
            .where(HistoryRow.patient_key == _clean(patient_key), HistoryRow.cancelled_by.is_(None))
            .order_by(HistoryRow.id)
        ).scalars())

    def save(self, processed: ProcessedMessage) -> None:
        try:
            seen = getattr(self._seen, "snapshot", None)
            self._seen.snapshot = None
            with self._sessions.begin() as s:
                self._lock_chain(s)
                if seen is not None and processed.patient_key and seen[0] == processed.patient_key \
                        and self._history_ids(s, processed.patient_key) != seen[1]:
                    # another worker changed this patient's course since it was read: the verdict may be
                    # stale (two day-1 doses judged at once would both pass go.schedule). Nothing is
                    # written; the caller's retry (transient: a StoreUnavailable) judges again.
                    raise HistoryChanged("the patient's course history changed while the message was judged")
                key_row = None
                if processed.key is not None:
                    k = processed.key
                    taken = s.execute(select(MessageKeyRow.id).where(*_key_matches(k))).first()
                    if taken is not None:
                        raise KeyTaken((k.sending_application, k.sending_facility, k.control_id))
                seq, prev_hash = self._next_seq(s)
                result = json.loads(canonical_json(processed.result))
                message = MessageRow(
                    id=seq,
                    received_at=processed.received_at,
                    answered_at=processed.answered_at,
                    sender=_clean(processed.sender) or "",
                    sending_application=_clean(processed.key.sending_application) if processed.key else
                    _clean(processed.sender.split("^")[0]) if processed.sender else "",
                    sending_facility=_clean(processed.key.sending_facility) if processed.key else
                    _clean(processed.sender.split("^", 1)[1]) if "^" in processed.sender else "",
                    control_id=_clean(processed.control_id),
                    message_type=_clean(result.get("message_type")),
                    patient_id=_clean(result.get("patient_id")) or _patient_id(processed.patient_key),
                    patient_key=_clean(processed.patient_key) or "",
                    content_sha256=processed.key.content_sha256 if processed.key else _sha256_normalised(
                        processed.raw_message),
                    raw_message=_encode_raw(processed.raw_message),
                )
                verdict = VerdictRow(
                    message_id=seq,
                    ack_code=_clean(processed.ack_code),
                    protocol_id=_clean(processed.protocol_id) or "",
                    protocol_version=_clean(processed.protocol_version) or "",
                    computed=canonical_json(processed.computed),
                    result=canonical_json(result),
                )
                response = ResponseRow(message_id=seq, response=_clean(processed.response))
                findings = _finding_rows(seq, result)
                # the writer hashes exactly what the rows will read back
                message.received_at = _as_utc(message.received_at)
                message.answered_at = _as_utc(message.answered_at)
                content = record_content(message, verdict, response, findings)
                chain = ChainRow(seq=seq, prev_hash=prev_hash, hash=chain_hash(content, seq, prev_hash))
                s.add(message)
                s.flush()
                s.add_all([verdict, response, *findings, chain])
                if processed.key is not None:
                    k = processed.key
                    key_row = MessageKeyRow(
                        sending_application=_clean(k.sending_application),
                        sending_facility=_clean(k.sending_facility),
                        control_id=_clean(k.control_id),
                        content_sha256=k.content_sha256,
                        message_id=seq,
                        # key order kept: a redelivery's JSON reads like the first answer
                        result=json.dumps(processed.result, ensure_ascii=False, default=_json_default),
                    )
                    s.add(key_row)
                    s.flush()
                    s.add(DeliveryRow(message_key_id=key_row.id, received_at=processed.received_at))
                self._apply_cancellations(s, seq, processed)
                for entry in processed.new_orders:
                    s.add(
                        HistoryRow(
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
                        )
                    )
        except IntegrityError:
            # Only reachable if a writer bypassed the chain lock: the unique key decides.
            if processed.key is not None and self.answer_for(processed.key) is not None:
                raise KeyTaken(processed.key.control_id) from None
            raise

    def record_delivery(self, key: MessageKey, received_at: datetime) -> None:
        with self._sessions.begin() as s:
            key_id = s.execute(select(MessageKeyRow.id).where(*_key_matches(key))).scalar_one_or_none()
            if key_id is None:
                log.warning("delivery of an unknown message key control_id=%s not recorded", key.control_id)
                return
            s.add(DeliveryRow(message_key_id=key_id, received_at=received_at))

    # --- helpers

    def _lock_chain(self, s: Session) -> None:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})
        # SQLite: the session's BEGIN IMMEDIATE already holds the database's write lock.

    @staticmethod
    def _next_seq(s: Session) -> tuple[int, str]:
        head = s.execute(select(ChainRow.seq, ChainRow.hash).order_by(ChainRow.seq.desc()).limit(1)).first()
        return (1, GENESIS_HASH) if head is None else (head.seq + 1, head.hash)

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
