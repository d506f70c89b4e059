"""`SqlStore`: the core's `validator.history.Store` port on SQL, and `open_sql_store`.

Course history, message keys, deliveries and the tamper-evident audit log (tables:
workers/store/schema.py; what the chain hashes: workers/store/chain.py), on SQLite (default, a
file under ./var/) or PostgreSQL (production). Appends are serialised: `pg_advisory_xact_lock` on
PostgreSQL, `BEGIN IMMEDIATE` on SQLite. The service never updates or deletes audit rows.

Every method that touches the database turns SQLAlchemy errors into `StoreUnavailable` /
`StoreRefused` carrying no statement parameters and no row values (workers/store/errors.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from validator.history import DeliveryTaken, HistoryEntry, KeyTaken, MessageKey, ProcessedMessage, StoredAnswer
from workers.store.chain import GENESIS_HASH, ChainKeys
from workers.store.engine import open_engine
from workers.store.errors import HistoryChanged, database_errors
from workers.store.records import RecordRows
from workers.store.schema import (
    CancellationRow,
    ChainRow,
    DeliveryRow,
    FindingRow,
    HistoryRow,
    MessageKeyRow,
    MessageRow,
    OverrideRow,
    ResponseRow,
    VerdictRow,
    clean_text,
)

log = logging.getLogger("rxgate.store")

CHAIN_LOCK_KEY = 0x72786761  # 'rxga': pg_advisory_xact_lock key serialising audit appends


def _key_matches(key: MessageKey) -> tuple:
    """WHERE clauses selecting the message_keys row of (MSH-11, MSH-3, MSH-4, MSH-10)."""
    return (
        MessageKeyRow.processing_id == clean_text(key.processing_id),
        MessageKeyRow.sending_application == clean_text(key.sending_application),
        MessageKeyRow.sending_facility == clean_text(key.sending_facility),
        MessageKeyRow.control_id == clean_text(key.control_id),
    )


class SqlStore:
    """`validator.history.Store` on SQL, plus read access for the auditors' queries."""

    def __init__(self, engine: Engine, keys: ChainKeys | None = None) -> None:
        self.engine = engine
        self._keys = keys  # None: from the settings when first needed (chain_keys)
        self.safe_url = engine.url.render_as_string(hide_password=True)  # for error texts
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_engine = engine.execution_options(rxgate_read_only=True)
        self._reader = sessionmaker(self._read_engine, expire_on_commit=False)
        self._seen = threading.local()  # per thread: patient key -> history row ids of its last orders_for
        self._wal: bool | None = None  # SQLite: journal_mode is WAL (read once)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def chain_keys(self) -> ChainKeys:
        """The audit chain's keys: as given, else RXGATE_AUDIT_KEY / RXGATE_AUDIT_KEY_FILE; none
        configured raises `ChainKeyError` naming them (nothing is written without the key)."""
        if self._keys is None:
            from workers.settings import Settings

            self._keys = Settings().chain_keys()
        return self._keys

    def read_session(self) -> Session:
        """A session for queries (on SQLite a deferred transaction that does not block writers)."""
        return self._reader()

    def dispose(self) -> None:
        self.engine.dispose()

    # --- the port

    # The two reads of every message use a plain connection, not an ORM session: a third of the
    # cost per message (BENCHMARKS.md).
    @database_errors
    def answer_for(self, key: MessageKey) -> StoredAnswer | None:
        with self._reading() as conn:
            row = conn.execute(
                select(MessageKeyRow.content_sha256, MessageKeyRow.result).where(*_key_matches(key))
            ).first()
            if row is None:
                return None
            return StoredAnswer(content_sha256=row.content_sha256, result=json.loads(row.result))

    @database_errors
    def answer_for_delivery(self, delivery_id: str) -> dict | None:
        """The result a delivery was given: its own record's, or (a redelivered keyed message) the stored
        answer of the key its delivery row names."""
        with self._reading() as conn:
            result = conn.execute(
                select(VerdictRow.result).join(MessageRow, MessageRow.id == VerdictRow.message_id)
                .where(MessageRow.delivery_id == clean_text(delivery_id))
            ).scalar_one_or_none()
            if result is None:
                result = conn.execute(
                    select(MessageKeyRow.result).join(DeliveryRow, DeliveryRow.message_key_id == MessageKeyRow.id)
                    .where(DeliveryRow.delivery_id == clean_text(delivery_id))
                ).scalar_one_or_none()
            return None if result is None else json.loads(result)

    @database_errors
    def orders_for(self, patient_key: str) -> list[HistoryEntry]:
        with self._reading() as s:
            rows = s.execute(
                select(HistoryRow.id, HistoryRow.entry)
                .where(HistoryRow.patient_key == clean_text(patient_key), HistoryRow.cancelled_by.is_(None))
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
        with self._connect_reads() as conn:
            self._seen.reads = conn
            try:
                yield
            finally:
                self._seen.reads = None

    @database_errors
    def _connect_reads(self):
        return self._read_engine.connect()

    @property
    @database_errors
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
            .where(HistoryRow.patient_key.in_([clean_text(k) for k in seen]), HistoryRow.cancelled_by.is_(None))
            .order_by(HistoryRow.id)
        ).all()
        cleaned = {clean_text(k): k for k in seen}
        for row in rows:
            now[cleaned[row.patient_key]].append(row.id)
        return [k for k, ids in seen.items() if tuple(now[k]) != ids]

    def save(self, processed: ProcessedMessage) -> None:
        self.save_all([processed])
        self._snapshots().clear()  # one message at a time: nothing else of this thread is in flight

    @database_errors
    def save_all(self, batch: list[ProcessedMessage], deliveries: list[tuple[MessageKey, datetime]] = ()) -> None:
        """Write the records of several messages (and deliveries of answered ones) in ONE transaction.

        One chain lock, one history re-check, one commit (one fsync) for the whole batch, every
        table's rows inserted together: under a backlog this is what lets two workers share the
        append lock (`BatchedStore` in validator/history.py). All or nothing: a `KeyTaken` or a
        `HistoryChanged` anywhere writes none of the batch.
        """
        if not batch and not deliveries:
            return
        key = self.chain_keys().current if batch else None
        snapshots = self._snapshots()
        # the history each message was judged on (patients read by this thread; a message that is
        # not judged against a history, e.g. an AR, has none to re-check)
        seen = {p.patient_key: snapshots.pop(p.patient_key) for p in batch
                if p.patient_key and p.patient_key in snapshots}
        try:
            with self._sessions.begin() as s:
                self._write(s, batch, deliveries, seen, key)
        except IntegrityError as exc:
            conflict = exc
        else:
            shared = getattr(self._seen, "reads", None)
            if shared is not None and shared.in_transaction():
                shared.rollback()  # the shared read connection's next read sees what was just written
            return
        # (outside the handler: the conflict's text, which quotes the row, is not kept as context)
        # a message key stored by another worker after this one looked (the unique key decides)
        taken = [p.key for p in batch if p.key is not None and self.answer_for(p.key) is not None]
        if taken:
            raise KeyTaken(taken[0].control_id) from None
        ids = [p.delivery_id for p in batch if p.delivery_id] + [d[2] for d in deliveries if len(d) > 2 and d[2]]
        delivered = [i for i in ids if self.answer_for_delivery(i) is not None]
        if delivered:
            raise DeliveryTaken(delivered[0]) from None
        raise conflict

    def _write(self, s: Session, batch: list[ProcessedMessage], deliveries: list[tuple[MessageKey, datetime]],
               seen: dict[str, tuple[int, ...]], key) -> None:
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
            record = RecordRows(seq, prev_hash, processed, key)
            prev_hash = record.hash
            records.append(record)
        if records:
            self._insert_records(s, records)
        for key, received_at, *delivery_id in deliveries:
            key_id = s.execute(select(MessageKeyRow.id).where(*_key_matches(key))).scalar_one_or_none()
            if key_id is None:
                log.warning("delivery of an unknown message key control_id=%s not recorded", key.control_id)
                continue
            s.add(DeliveryRow(message_key_id=key_id, received_at=received_at,
                              delivery_id=clean_text(delivery_id[0]) if delivery_id else None))

    def record_delivery(self, key: MessageKey, received_at: datetime, delivery_id: str | None = None) -> None:
        self.save_all([], [(key, received_at, delivery_id)])

    # --- helpers

    def _insert_records(self, s: Session, records: list[RecordRows]) -> None:
        """Every table's rows of the batch in one multi-row INSERT each (bulk INSERTs, no unit of work:
        the ORM's flush machinery was half the cost of a write). Cancellations are applied before the
        history rows of their own message (a replacement XO carries the placer number it replaces)."""
        s.execute(insert(MessageRow), [r.message for r in records])
        s.execute(insert(VerdictRow), [r.verdict for r in records])
        s.execute(insert(ResponseRow), [r.response for r in records])
        findings = [f for r in records for f in r.findings]
        if findings:
            s.execute(insert(FindingRow), findings)
        overridden = [o for r in records for o in r.overrides]
        if overridden:
            s.execute(insert(OverrideRow), overridden)
        s.execute(insert(ChainRow), [r.chain for r in records])
        keyed = [r for r in records if r.key is not None]
        if keyed:
            ids = s.execute(
                insert(MessageKeyRow).returning(MessageKeyRow.id, sort_by_parameter_order=True), [r.key for r in keyed]
            ).scalars().all()
            s.execute(insert(DeliveryRow), [{"message_key_id": key_id, "received_at": r.message["received_at"],
                                             "delivery_id": r.message["delivery_id"]}
                                            for key_id, r in zip(ids, keyed, strict=True)])
        if any(r.cancellations for r in records):
            for r in records:
                self._apply_cancellations(s, r.cancellations)
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
    def _apply_cancellations(s: Session, cancellations: list[dict]) -> None:
        """Each cancellation (the rows the record chains) marks the matching active history rows."""
        for cancel in cancellations:
            removed = 0
            if cancel["leaves_history"]:
                rows = s.execute(
                    select(HistoryRow).where(
                        HistoryRow.patient_key == cancel["patient_key"],
                        HistoryRow.sender == cancel["sender"],
                        HistoryRow.placer_number == cancel["placer_number"],
                        HistoryRow.placer_namespace == cancel["placer_namespace"],
                        HistoryRow.cancelled_by.is_(None),
                    )
                ).scalars().all()
                for row in rows:
                    row.cancelled_by = cancel["message_id"]
                    row.cancelled_at = cancel["requested_at"]
                removed = len(rows)
            s.add(CancellationRow(**cancel, entries_removed=removed))
        s.flush()

    @database_errors
    def head(self) -> tuple[int, str] | None:
        with self.read_session() as s:
            row = s.execute(select(ChainRow.seq, ChainRow.hash).order_by(ChainRow.seq.desc()).limit(1)).first()
            return None if row is None else (row.seq, row.hash)

    @database_errors
    def count(self) -> int:
        with self.read_session() as s:
            return s.execute(select(func.count()).select_from(ChainRow)).scalar_one()


def open_sql_store(url: str, *, create: bool, keys: ChainKeys | None = None) -> SqlStore:
    """The store at URL.

    `create=True` (the service, `rxgate check --db`): a SQLite file and its directories are made and
    the schema is created or migrated to the latest version. `create=False` (`rxgate audit`, the
    HTTP API): nothing is created or changed; no rxgate audit log at URL raises `StoreMissing`.
    An unreachable database raises `StoreUnavailable` naming the URL (password hidden) and the reason.
    `keys`: the audit chain's keys (writing and verifying need them); None: from the settings when
    first needed.
    """
    return SqlStore(open_engine(url, create=create), keys)
