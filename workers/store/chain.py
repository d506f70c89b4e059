"""The tamper-evident audit chain: what each record's hash covers, and its verification (docs/interfaces.md §4).

The hash of record N is SHA-256 over the canonical JSON (sorted keys, no spaces, UTF-8) of
`{"content": <record content>, "prev_hash": <hash of N-1>, "seq": N}`; record 1 links to
`GENESIS_HASH` (64 zeros). The content is rebuilt from the rows (`record_content`), by the writer
from the rows it is about to insert and by `verify_chain` from the rows read back, so an UPDATE of
any audited column, a deleted or an inserted row breaks the chain at that record.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from workers.store.errors import database_errors
from workers.store.schema import ChainRow, FindingRow, MessageRow, ResponseRow, VerdictRow, decode_raw

if TYPE_CHECKING:
    from workers.store.sqlstore import SqlStore

GENESIS_HASH = "0" * 64


def json_default(value: Any) -> Any:
    """JSON for the values a result or computed dict holds (Decimal doses, dates, sets, models)."""
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
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=json_default)


def chain_hash(content: dict[str, Any], seq: int, prev_hash: str) -> str:
    payload = canonical_json({"content": content, "prev_hash": prev_hash, "seq": seq})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _utc_iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


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
            "raw_message": decode_raw(message.raw_message),
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


# ---------------------------------------------------------------------------------------------
# verification


@dataclass
class Verification:
    intact: bool
    checked: int = 0
    first_bad_seq: int | None = None
    reason: str = ""
    head_seq: int | None = None
    head_hash: str | None = None
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.intact:
            if not self.checked:
                return "audit chain intact: the log is empty"
            return f"audit chain intact: {self.checked} records, head seq {self.head_seq} hash {self.head_hash}"
        return f"audit chain BROKEN at sequence number {self.first_bad_seq}: {self.reason}"


class _Broken(Exception):
    """Verification stops at the first bad record (internal: becomes a `Verification`)."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.reason = seq, reason


@dataclass
class _Walk:
    """Where verification is: the next expected sequence number and the hash it must link to."""

    expected: int = 1
    prev_hash: str = GENESIS_HASH
    checked: int = 0


@database_errors
def verify_chain(store: SqlStore, anchor: tuple[int, str] | None = None, batch: int = 500) -> Verification:
    """Recompute every record's hash from its rows and the previous hash; stop at the first bad one.

    Detected: an edited audited column (content hash differs), a removed record (sequence gap or a
    previous-hash link that no longer matches), an inserted record (a link or hash that does not match,
    or a message row without a chain entry). Cutting off the newest records leaves a valid shorter chain:
    only a comparison with an anchor recorded elsewhere (`rxgate audit head`) reveals it; pass it as
    `anchor=(seq, hash)`.
    """
    walk = _Walk()
    try:
        with store.read_session() as s:
            _walk_chain(s, walk, batch)
            orphan = s.execute(
                select(func.min(MessageRow.id)).where(~exists().where(ChainRow.seq == MessageRow.id))
            ).scalar_one_or_none()
            if orphan is not None:
                raise _Broken(orphan, "a message row without a chain entry was inserted")
            head_seq = walk.expected - 1 if walk.checked else None
            if anchor is not None:
                _check_anchor(s, anchor, head_seq)
    except _Broken as broken:
        return Verification(False, checked=walk.checked, first_bad_seq=broken.seq, reason=broken.reason)
    return Verification(True, checked=walk.checked, head_seq=head_seq,
                        head_hash=walk.prev_hash if walk.checked else None)


def _walk_chain(s: Session, walk: _Walk, batch: int) -> None:
    """Every chain row in sequence order, `batch` records (and their rows) read at a time."""
    last_seq = 0
    while True:
        chain = list(
            s.execute(select(ChainRow).where(ChainRow.seq > last_seq).order_by(ChainRow.seq).limit(batch)).scalars()
        )
        if not chain:
            return
        lo, hi = chain[0].seq, chain[-1].seq
        messages = {m.id: m for m in s.execute(
            select(MessageRow).where(MessageRow.id >= lo, MessageRow.id <= hi)).scalars()}
        verdicts = {v.message_id: v for v in s.execute(
            select(VerdictRow).where(VerdictRow.message_id >= lo, VerdictRow.message_id <= hi)).scalars()}
        responses = {r.message_id: r for r in s.execute(
            select(ResponseRow).where(ResponseRow.message_id >= lo, ResponseRow.message_id <= hi)).scalars()}
        findings: dict[int, list[FindingRow]] = defaultdict(list)
        for f in s.execute(select(FindingRow).where(FindingRow.message_id >= lo, FindingRow.message_id <= hi)):
            findings[f[0].message_id].append(f[0])
        for row in chain:
            _check_record(walk, row, messages.get(row.seq), verdicts.get(row.seq), responses.get(row.seq),
                          findings[row.seq])
        last_seq = hi


def _check_record(walk: _Walk, row: ChainRow, message: MessageRow | None, verdict: VerdictRow | None,
                  response: ResponseRow | None, findings: list[FindingRow]) -> None:
    if row.seq != walk.expected:
        raise _Broken(walk.expected, f"record {walk.expected} is missing (the next record is {row.seq})")
    if row.prev_hash != walk.prev_hash:
        raise _Broken(row.seq, "its link to the previous record does not match "
                               "(a record before it was removed, inserted or rewritten)")
    if message is None:
        raise _Broken(row.seq, "its message row was removed")
    content = record_content(message, verdict, response, findings)
    if chain_hash(content, row.seq, walk.prev_hash) != row.hash:
        raise _Broken(row.seq, "its content was altered (message, verdict, findings or "
                               "response differ from what was recorded)")
    walk.prev_hash = row.hash
    walk.expected += 1
    walk.checked += 1


def _check_anchor(s: Session, anchor: tuple[int, str], head_seq: int | None) -> None:
    a_seq, a_hash = anchor
    if head_seq is None or a_seq > head_seq:
        raise _Broken(a_seq, f"the anchored record {a_seq} is gone: the newest records were cut off")
    stored = s.get(ChainRow, a_seq)
    if stored is None or stored.hash != a_hash:
        raise _Broken(a_seq, "its hash differs from the anchor: the chain was rewritten")
