"""Retention: a new database seeded from the old one (docs/interfaces.md §5 "Operators", retention).

`seed_store(old, new, days, now)` writes one record into an empty audit log: the anchor record
(message type `rxgate.anchor`, ack AA, an info finding `rxgate.anchor` naming the old log's head
`SEQ:HASH`), and attaches to it copies of the old log's

- course history rows not cancelled, of orders received or starting in the last `days` days,
- message keys (with their stored answers: a resend gets the same answer) of the last `days` days.

The anchor is a keyed chain record like any other: its hash covers the copied history rows (as a
record's added history) and every copied message key (`seeded_keys`, workers/store/chain.py), so
`rxgate audit verify` on the new database checks them, and an edited, deleted or added seeded row
breaks the chain at record 1. The old database is only read; it must verify intact first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from workers.store.chain import (
    ANCHOR_DELIVERY,
    ANCHOR_TYPE,
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    record_content,
)
from workers.store.errors import database_errors
from workers.store.schema import (
    ChainRow,
    FindingRow,
    HistoryRow,
    MessageKeyRow,
    MessageRow,
    ResponseRow,
    VerdictRow,
    encode_raw,
)
from workers.store.sqlstore import SqlStore

LOOKBACK_EXTRA_DAYS = 60  # docs/interfaces.md §5: the longest course_days + 60 days are seeded


class SeedRefused(ValueError):
    """The target is not an empty audit log (or the old one is empty): said, nothing written."""


@dataclass(frozen=True)
class Seeded:
    old_head: tuple[int, str]
    history: int
    keys: int
    anchor_hash: str


def default_days(protocols) -> int:
    return max(p.schedule.course_days for p in protocols.protocols) + LOOKBACK_EXTRA_DAYS


@database_errors
def is_empty(store: SqlStore) -> bool:
    with store.read_session() as s:
        return all(s.execute(select(row.__table__.c[0]).limit(1)).first() is None
                   for row in (ChainRow, MessageRow, HistoryRow, MessageKeyRow))


@database_errors
def seeded_rows(old: SqlStore, since: datetime) -> tuple[list[HistoryRow], list[MessageKeyRow]]:
    """The old log's active history rows and message keys of records received (or orders starting) since `since`."""
    with old.read_session() as s:
        history = [_history_copy(h) for h in s.execute(
            select(HistoryRow).join(MessageRow, MessageRow.id == HistoryRow.message_id)
            .where(HistoryRow.cancelled_by.is_(None),
                   or_(MessageRow.received_at >= since, HistoryRow.start >= since))
            .order_by(HistoryRow.id)).scalars()]
        keys = [_key_copy(k) for k in s.execute(
            select(MessageKeyRow).join(MessageRow, MessageRow.id == MessageKeyRow.message_id)
            .where(MessageRow.received_at >= since).order_by(MessageKeyRow.id)).scalars()]
    return history, keys


def _history_copy(h: HistoryRow) -> HistoryRow:
    return HistoryRow(patient_key=h.patient_key, sender=h.sender, placer_number=h.placer_number,
                      placer_namespace=h.placer_namespace, control_id=h.control_id, drug_code=h.drug_code,
                      drug_text=h.drug_text, protocol_order=h.protocol_order, start=h.start, entry=h.entry,
                      message_id=1, cancelled_by=None, cancelled_at=None)


def _key_copy(k: MessageKeyRow) -> MessageKeyRow:
    return MessageKeyRow(processing_id=k.processing_id, sending_application=k.sending_application,
                         sending_facility=k.sending_facility, control_id=k.control_id,
                         content_sha256=k.content_sha256, message_id=1, result=k.result)


def anchor_rows(old_head: tuple[int, str], days: int, history: int, keys: int, now: datetime
                ) -> tuple[MessageRow, VerdictRow, ResponseRow, FindingRow]:
    note = (f"seeded from the audit log whose head is {old_head[0]}:{old_head[1]}: {history} course history "
            f"rows and {keys} message keys of the last {days} days")
    raw = canonical_json({"rxgate_anchor": 1, "old_head": f"{old_head[0]}:{old_head[1]}", "days": days})
    message = MessageRow(id=1, received_at=now, answered_at=now, sender="rxgate", sending_application="rxgate",
                         sending_facility="", control_id=None, message_type=ANCHOR_TYPE, patient_id=None,
                         patient_key="", content_sha256=hashlib.sha256(raw.encode()).hexdigest(),
                         raw_message=encode_raw(raw), delivery_id=ANCHOR_DELIVERY)
    finding = FindingRow(message_id=1, position=0, order_index=None, placer_number=None, rule=ANCHOR_TYPE,
                         severity="info", location=None, message=note)
    result = {"ack_code": "AA", "findings": [{"rule": ANCHOR_TYPE, "severity": "info", "message": note}],
              "orders": [], "response": note}
    verdict = VerdictRow(message_id=1, ack_code="AA", protocol_id="", protocol_version="", computed="{}",
                         result=canonical_json(result))
    return message, verdict, ResponseRow(message_id=1, response=note), finding


@database_errors
def seed_store(old: SqlStore, new: SqlStore, days: int, now: datetime | None = None) -> Seeded:
    """Write the anchor record with the seeded rows into `new` (refused unless it is empty)."""
    if not is_empty(new):
        raise SeedRefused(f"{new.safe_url} is not empty (a seed goes into a new database only)")
    old_head = old.head()
    if old_head is None:
        raise SeedRefused(f"{old.safe_url} holds no audit record: nothing to anchor")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    history, keys = seeded_rows(old, now - timedelta(days=days))
    message, verdict, response, finding = anchor_rows(old_head, days, len(history), len(keys), now)
    content = record_content(message, verdict, response, [finding], keyed=True, history=history,
                             seeded_keys=keys)
    key = new.chain_keys().current
    digest = chain_hash(content, 1, GENESIS_HASH, key)
    with Session(new.engine) as s, s.begin():
        if not _still_empty(s):
            raise SeedRefused(f"{new.safe_url} is not empty (written meanwhile)")
        s.add(message)
        s.flush()
        s.add_all([verdict, response, finding, ChainRow(seq=1, prev_hash=GENESIS_HASH, hash=digest,
                                                         key_id=key.key_id)])
        s.add_all(history + keys)
    return Seeded(old_head, len(history), len(keys), digest)


def _still_empty(s: Session) -> bool:
    return s.execute(select(ChainRow.seq).limit(1)).first() is None

