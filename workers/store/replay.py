"""Replay: the recorded messages judged again against a scratch history (docs/interfaces.md §5 "Operators").

`replay(store, protocols, tz, ...)` reads the audit log (never writes it) and judges each recorded
HL7 message again, in sequence order (the order they were written), at its recorded received time,
against an in-memory store (`validator.InMemoryStore`) seeded with what the live store held before
the first replayed record: the course history (orders not cancelled by then) and the message keys.
Nothing reaches the live history, message keys or audit chain.

Not replayed (counted as skipped): records that are not a judged HL7 message — CDS Hooks calls and
feedback (message type `CDS …`, they never enter the course history) and operator records such as a
dropped dead letter (no protocol).

A verdict changes when the ack code or the set of rule ids (errors and warnings) differs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import func, or_, select

from validator import InMemoryStore, process_text
from validator.history import HistoryEntry, MessageKey, StoredAnswer
from workers.store.errors import database_errors
from workers.store.schema import HistoryRow, MessageKeyRow, MessageRow, VerdictRow, decode_raw
from workers.store.sqlstore import SqlStore


@dataclass(frozen=True)
class Change:
    id: int
    received_at: str
    control_id: str | None
    old_ack: str
    old_rules: list[str]
    new_ack: str
    new_rules: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "received_at": self.received_at, "control_id": self.control_id,
                "old": {"ack": self.old_ack, "rules": self.old_rules},
                "new": {"ack": self.new_ack, "rules": self.new_rules}}


@dataclass
class Summary:
    replayed: int = 0
    changed: int = 0
    skipped: int = 0
    other_protocol_version: int = 0  # records judged with a protocol version other than the one replayed with
    transitions: Counter = field(default_factory=Counter)  # "AA->AE": n

    def as_json(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "changed": self.changed, "skipped": self.skipped,
                "judged_with_another_protocol_version": self.other_protocol_version,
                "transitions": dict(sorted(self.transitions.items()))}


def verdict_rules(result: dict[str, Any]) -> list[str]:
    """The rule ids of a result's errors and warnings, sorted, each once."""
    return sorted({f["rule"] for f in result.get("findings") or [] if f.get("severity") != "info"})


def _start_utc(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(UTC)


@database_errors
def first_seq(store: SqlStore, since: date | None, tz: tzinfo) -> int:
    """The first record received on or after `since` (1 without it)."""
    if since is None:
        return 1
    with store.read_session() as s:
        found = s.execute(select(func.min(MessageRow.id)).where(MessageRow.received_at >= _start_utc(since, tz)))
        return found.scalar() or (s.execute(select(func.max(MessageRow.id))).scalar() or 0) + 1


@database_errors
def scratch_store(store: SqlStore, before_seq: int) -> InMemoryStore:
    """An in-memory store holding the live history and message keys as they were before record `before_seq`."""
    scratch = InMemoryStore()
    with store.read_session() as s:
        rows = s.execute(
            select(HistoryRow.entry).where(
                HistoryRow.message_id < before_seq,
                or_(HistoryRow.cancelled_by.is_(None), HistoryRow.cancelled_by >= before_seq),
            ).order_by(HistoryRow.id)
        ).scalars()
        for entry_json in rows:
            entry = HistoryEntry.model_validate_json(entry_json)
            scratch.orders.setdefault(entry.patient_key, []).append(entry)
        for key in s.execute(select(MessageKeyRow).where(MessageKeyRow.message_id < before_seq)).scalars():
            mk = MessageKey(sending_application=key.sending_application, sending_facility=key.sending_facility,
                            control_id=key.control_id, content_sha256=key.content_sha256)
            scratch.answers[scratch._slot(mk)] = StoredAnswer(content_sha256=key.content_sha256,
                                                              result=json.loads(key.result))
    return scratch


@database_errors
def recorded(store: SqlStore, start: int, until: date | None, patient: str | None, tz: tzinfo,
             batch: int = 500) -> Iterator[tuple[MessageRow, VerdictRow | None]]:
    """The records from `start` on, in sequence order, read `batch` at a time."""
    conds = [MessageRow.id >= start]
    if until is not None:
        conds.append(MessageRow.received_at < _start_utc(until + timedelta(days=1), tz))
    if patient:
        conds.append(or_(MessageRow.patient_id == patient, MessageRow.patient_key == patient))
    last = start - 1
    with store.read_session() as s:
        while True:
            rows = s.execute(
                select(MessageRow, VerdictRow).outerjoin(VerdictRow, VerdictRow.message_id == MessageRow.id)
                .where(*conds, MessageRow.id > last).order_by(MessageRow.id).limit(batch)
            ).all()
            yield from ((m, v) for m, v in rows)
            if len(rows) < batch:
                return
            last = rows[-1][0].id


@database_errors
def count_recorded(store: SqlStore, start: int, until: date | None, patient: str | None, tz: tzinfo) -> int:
    conds = [MessageRow.id >= start]
    if until is not None:
        conds.append(MessageRow.received_at < _start_utc(until + timedelta(days=1), tz))
    if patient:
        conds.append(or_(MessageRow.patient_id == patient, MessageRow.patient_key == patient))
    with store.read_session() as s:
        return s.execute(select(func.count()).select_from(MessageRow).where(*conds)).scalar_one()


def _replayable(message: MessageRow, verdict: VerdictRow | None) -> bool:
    if verdict is None or not verdict.protocol_id:
        return False  # not a judged message (an operator's record: a dropped dead letter)
    return not (message.message_type or "").startswith("CDS")


def replay(store: SqlStore, protocols, tz: tzinfo, *, since: date | None = None, until: date | None = None,
           patient: str | None = None, limits=None,
           progress: Callable[[int, int], None] | None = None, progress_every: int = 1000,
           ) -> Iterator[Change | Summary]:
    """Yields each `Change`, then the `Summary`. `progress(done, total)` every `progress_every` records."""
    start = first_seq(store, since, tz)
    scratch = scratch_store(store, start)
    total = count_recorded(store, start, until, patient, tz) if progress else 0
    summary = Summary()
    kwargs = {"limits": limits} if limits is not None else {}
    done = 0
    for message, verdict in recorded(store, start, until, patient, tz):
        done += 1
        if progress and done % progress_every == 0:
            progress(done, total)
        if not _replayable(message, verdict):
            summary.skipped += 1
            continue
        received_at = message.received_at.replace(tzinfo=message.received_at.tzinfo or UTC)
        outcome = process_text(decode_raw(message.raw_message), scratch, protocols, tz=tz,
                               received_at=received_at, **kwargs)[0]
        summary.replayed += 1
        if verdict.protocol_version != protocols.version and verdict.protocol_id == protocols.id:
            summary.other_protocol_version += 1
        old_rules = verdict_rules(json.loads(verdict.result))
        new_rules = verdict_rules(outcome.result)
        if (verdict.ack_code, old_rules) != (outcome.ack_code, new_rules):
            summary.changed += 1
            summary.transitions[f"{verdict.ack_code}->{outcome.ack_code}"] += 1
            yield Change(message.id, received_at.astimezone(tz).isoformat(timespec="seconds"), message.control_id,
                         verdict.ack_code, old_rules, outcome.ack_code, new_rules)
    if progress and done % progress_every:
        progress(done, total)
    yield summary
