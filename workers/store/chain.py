"""The tamper-evident audit chain: what each record's hash covers, and its verification (docs/interfaces.md §4).

The hash of record N is HMAC-SHA256, with the audit key (`ChainKey`, configured outside the database:
RXGATE_AUDIT_KEY or RXGATE_AUDIT_KEY_FILE), over the canonical JSON (sorted keys, no spaces, UTF-8) of
`{"content": <record content>, "prev_hash": <hash of N-1>, "seq": N}`; record 1 links to
`GENESIS_HASH` (64 zeros). The chain row names the key by `key_id` (an HMAC of a fixed text, which
reveals nothing of the key), so a rotated key keeps verifying the records it signed. Records written
before the chain was keyed (`key_id` NULL) were hashed with plain SHA-256 and carry the older content
(without the message key, course history and cancellations); they are accepted only as the chain's
oldest part, never after a keyed record.

The content is rebuilt from the rows (`record_content`), by the writer from the rows it is about to
insert and by `verify_chain` from the rows read back, so an UPDATE of any audited column, a deleted or
an inserted row breaks the chain at that record. A keyed record's content also holds its
`message_keys` row, the `course_history` rows it added and the `cancellations` it applied, and
verification checks every history row's `cancelled_by` against the chained cancellations: an edited
stored answer, a deleted or revived dose breaks the chain too.

`chain_hash`, `canonical_json`, `ChainKey` / `ChainKeys` and `link_problem` are table-neutral: another
append-only table (an access log, an archive file) chains its own content the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from workers.store.errors import database_errors
from workers.store.schema import (
    CancellationRow,
    ChainRow,
    FindingRow,
    HistoryRow,
    MessageKeyRow,
    MessageRow,
    ResponseRow,
    VerdictRow,
    decode_raw,
)

if TYPE_CHECKING:
    from workers.store.sqlstore import SqlStore

GENESIS_HASH = "0" * 64
KEY_ID_LEN = 16  # hex characters of a key id
MIN_KEY_CHARS = 32  # an audit key is at least this long (e.g. `python -c "import secrets; print(secrets.token_hex(32))"`)
CONTENT_VERSION = 2  # keyed records: the content holds the message key, history and cancellations too
ANCHOR_TYPE = "rxgate.anchor"  # a new database's first record: names the old head, holds the seeded rows
ANCHOR_DELIVERY = "seed:anchor"  # its delivery id: no transport writes it, so no sent message is taken for one


class ChainKeyError(ValueError):
    """No usable audit key where one is needed: a start-up error naming the setting (exit 2 in the CLI)."""


@dataclass(frozen=True)
class ChainKey:
    """One HMAC key of the chain; `key_id` names it in the chain rows without revealing it."""

    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hmac.new(self.secret, b"rxgate audit key id", hashlib.sha256).hexdigest()[:KEY_ID_LEN]


@dataclass(frozen=True)
class ChainKeys:
    """The configured keys, oldest first: the last signs new records, all verify (key rotation)."""

    keys: tuple[ChainKey, ...]

    @classmethod
    def parse(cls, text: str, source: str) -> ChainKeys:
        """Whitespace-separated keys (lines of a key file; `#` starts a comment line), each at least
        MIN_KEY_CHARS characters; `source` names the setting or file in the error."""
        tokens = [t for line in text.splitlines() if not line.lstrip().startswith("#") for t in line.split()]
        if not tokens:
            raise ChainKeyError(f"{source} holds no audit key")
        short = [i + 1 for i, t in enumerate(tokens) if len(t) < MIN_KEY_CHARS]
        if short:
            raise ChainKeyError(f"{source}: audit key {short[0]} is shorter than {MIN_KEY_CHARS} characters")
        return cls(tuple(ChainKey(t.encode("utf-8")) for t in tokens))

    @property
    def current(self) -> ChainKey:
        return self.keys[-1]

    def find(self, key_id: str | None) -> ChainKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)


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


def chain_hash(content: dict[str, Any], seq: int, prev_hash: str, key: ChainKey | None = None) -> str:
    """HMAC-SHA256 with `key` (plain SHA-256 without one: records from before the chain was keyed)."""
    payload = canonical_json({"content": content, "prev_hash": prev_hash, "seq": seq}).encode("utf-8")
    if key is None:
        return hashlib.sha256(payload).hexdigest()
    return hmac.new(key.secret, payload, hashlib.sha256).hexdigest()


def link_problem(seq: int, prev_hash: str, stored_hash: str, key_id: str | None, content: dict[str, Any],
                 keys: ChainKeys) -> str | None:
    """Why a keyed chain row does not verify (None: it does): an unknown key, or a hash that differs."""
    key = keys.find(key_id)
    if key is None:
        return "it is not signed with a configured audit key (forged, or signed with a key since removed)"
    if not hmac.compare_digest(chain_hash(content, seq, prev_hash, key), stored_hash):
        return ("its content was altered (message, verdict, findings, response, message key, course "
                "history or cancellations differ from what was recorded)")
    return None


def _utc_iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def record_content(
    message: MessageRow, verdict: VerdictRow | None, response: ResponseRow | None, findings: list[FindingRow],
    *, keyed: bool = False, message_key: MessageKeyRow | None = None, history: list[HistoryRow] = (),
    cancellations: list[CancellationRow] = (), seeded_keys: list[MessageKeyRow] | None = None,
) -> dict[str, Any]:
    """What the chain hashes for one record: every audited column of its rows.

    Verification calls this on rows read back from the database, the writer on the rows it is
    about to insert, so both see the same values. `keyed` (every record written since the chain is
    keyed): the content also holds the delivery id, the record's message key row, the course history
    rows it added (without `cancelled_by`, which a later record sets) and its cancellations.
    """
    content = _base_content(message, verdict, response, findings)
    if keyed:
        content["v"] = CONTENT_VERSION
        content["message"]["delivery_id"] = message.delivery_id
        content["message_key"] = None if message_key is None else {
            "sending_application": message_key.sending_application,
            "sending_facility": message_key.sending_facility,
            "control_id": message_key.control_id,
            "content_sha256": message_key.content_sha256,
            "message_id": message_key.message_id,
            "result": message_key.result,
        }
        content["history"] = sorted((history_content(h) for h in history), key=canonical_json)
        content["cancellations"] = sorted((cancellation_content(c) for c in cancellations), key=canonical_json)
        if seeded_keys is not None:  # an anchor record (workers/store/seed.py): every message key copied
            content["seeded_keys"] = sorted((seeded_key_content(k) for k in seeded_keys), key=canonical_json)
    return content


def is_anchor(message: MessageRow) -> bool:
    """The first record of a seeded database (`rxgate audit seed`): its content holds every copied message key."""
    return message.id == 1 and message.message_type == ANCHOR_TYPE and message.delivery_id == ANCHOR_DELIVERY


def seeded_key_content(k: MessageKeyRow) -> dict[str, Any]:
    return {"processing_id": k.processing_id, "sending_application": k.sending_application,
            "sending_facility": k.sending_facility, "control_id": k.control_id,
            "content_sha256": k.content_sha256, "result": k.result}


def history_content(h: HistoryRow) -> dict[str, Any]:
    return {
        "patient_key": h.patient_key, "sender": h.sender, "placer_number": h.placer_number,
        "placer_namespace": h.placer_namespace, "control_id": h.control_id, "drug_code": h.drug_code,
        "drug_text": h.drug_text, "protocol_order": bool(h.protocol_order), "start": _utc_iso(h.start),
        "entry": h.entry, "message_id": h.message_id,
    }


def cancellation_content(c: CancellationRow) -> dict[str, Any]:
    return {
        "patient_key": c.patient_key, "sender": c.sender, "placer_number": c.placer_number,
        "placer_namespace": c.placer_namespace, "control": c.control, "leaves_history": bool(c.leaves_history),
        "requested_at": _utc_iso(c.requested_at), "message_id": c.message_id,
    }


def _base_content(
    message: MessageRow, verdict: VerdictRow | None, response: ResponseRow | None, findings: list[FindingRow]
) -> dict[str, Any]:
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
    """Where verification is: the next expected sequence number and the hash it must link to, and what
    the keyed records imply for the course history (checked once the chain is walked)."""

    keys: ChainKeys
    expected: int = 1
    prev_hash: str = GENESIS_HASH
    checked: int = 0
    keyed_from: int | None = None  # the first keyed record; plain ones may only come before it
    # (patient key, sender, placer number, namespace) -> [(seq, requested at)] of keyed cancellations
    cancels: dict[tuple, list[tuple[int, str | None]]] = field(default_factory=lambda: defaultdict(list))
    removed: dict[int, int] = field(default_factory=dict)  # keyed record -> history rows its cancellations removed


@database_errors
def verify_chain(store: SqlStore, anchor: tuple[int, str] | None = None, batch: int = 500,
                 keys: ChainKeys | None = None) -> Verification:
    """Recompute every record's hash from its rows and the previous hash; stop at the first bad one.

    Detected: an edited audited column (content hash differs), a removed record (sequence gap or a
    previous-hash link that no longer matches), an inserted record (a link or hash that does not match,
    a hash not made with a configured key, or a message row without a chain entry), a message key, a
    course history row or a cancellation edited, removed, added, revived or cancelled. Cutting off the
    newest records leaves a valid shorter chain: only a comparison with an anchor recorded elsewhere
    (`rxgate audit head`) reveals it; pass it as `anchor=(seq, hash)`. `keys`: else the store's
    (RXGATE_AUDIT_KEY / RXGATE_AUDIT_KEY_FILE; `ChainKeyError` without one).
    """
    walk = _Walk(keys or store.chain_keys())
    try:
        with store.read_session() as s:
            _walk_chain(s, walk, batch)
            orphan = s.execute(
                select(func.min(MessageRow.id)).where(~exists().where(ChainRow.seq == MessageRow.id))
            ).scalar_one_or_none()
            if orphan is not None:
                raise _Broken(orphan, "a message row without a chain entry was inserted")
            _check_cancelled(s, walk, batch)
            head_seq = walk.expected - 1 if walk.checked else None
            if anchor is not None:
                _check_anchor(s, anchor, head_seq)
    except _Broken as broken:
        return Verification(False, checked=walk.checked, first_bad_seq=broken.seq, reason=broken.reason)
    return Verification(True, checked=walk.checked, head_seq=head_seq,
                        head_hash=walk.prev_hash if walk.checked else None)


def _by_message(s: Session, row_type, lo: int, hi: int) -> dict[int, list]:
    rows: dict[int, list] = defaultdict(list)
    for r in s.execute(select(row_type).where(row_type.message_id >= lo, row_type.message_id <= hi)).scalars():
        rows[r.message_id].append(r)
    return rows


def _walk_chain(s: Session, walk: _Walk, batch: int) -> None:
    """Every chain row in sequence order, `batch` records (and their rows) read at a time."""
    last_seq = 0
    while True:
        chain = list(
            s.execute(select(ChainRow).where(ChainRow.seq > last_seq).order_by(ChainRow.seq).limit(batch)).scalars()
        )
        if not chain:
            return
        records = read_records(s, chain[0].seq, chain[-1].seq)
        for row in chain:
            _check_record(walk, row, *records.of(row.seq))
        last_seq = chain[-1].seq


def _check_record(walk: _Walk, row: ChainRow, message: MessageRow | None, verdict: VerdictRow | None,
                  response: ResponseRow | None, parts: dict[str, list]) -> None:
    if row.seq != walk.expected:
        raise _Broken(walk.expected, f"record {walk.expected} is missing (the next record is {row.seq})")
    if row.prev_hash != walk.prev_hash:
        raise _Broken(row.seq, "its link to the previous record does not match "
                               "(a record before it was removed, inserted or rewritten)")
    if message is None:
        raise _Broken(row.seq, "its message row was removed")
    if row.key_id is None:
        _check_plain_record(walk, row, record_content(message, verdict, response, parts["findings"]))
    else:
        _check_keyed_record(walk, row, message, verdict, response, parts)
    walk.prev_hash = row.hash
    walk.expected += 1
    walk.checked += 1


def _check_plain_record(walk: _Walk, row: ChainRow, content: dict[str, Any]) -> None:
    """A record from before the chain was keyed: plain SHA-256, and only before every keyed record."""
    if walk.keyed_from is not None:
        raise _Broken(row.seq, "it is not signed with the audit key but follows signed records "
                               "(inserted with a recomputed plain hash)")
    if chain_hash(content, row.seq, walk.prev_hash) != row.hash:
        raise _Broken(row.seq, "its content was altered (message, verdict, findings or "
                               "response differ from what was recorded)")


@dataclass(frozen=True)
class Records:
    """The rows of records lo..hi, read at once: `of(seq)` gives one record's (message, verdict, response, parts)."""

    messages: dict[int, MessageRow]
    verdicts: dict[int, VerdictRow]
    responses: dict[int, ResponseRow]
    parts: dict[str, dict[int, list]]

    def of(self, seq: int) -> tuple[MessageRow | None, VerdictRow | None, ResponseRow | None, dict[str, list]]:
        return (self.messages.get(seq), self.verdicts.get(seq), self.responses.get(seq),
                {name: rows.get(seq, []) for name, rows in self.parts.items()})


def read_records(s: Session, lo: int, hi: int) -> Records:
    """Every row a chain row's hash covers, for the records lo..hi (verification and archives)."""
    return Records(
        messages={m.id: m for m in s.execute(
            select(MessageRow).where(MessageRow.id >= lo, MessageRow.id <= hi)).scalars()},
        verdicts={v.message_id: v for v in s.execute(
            select(VerdictRow).where(VerdictRow.message_id >= lo, VerdictRow.message_id <= hi)).scalars()},
        responses={r.message_id: r for r in s.execute(
            select(ResponseRow).where(ResponseRow.message_id >= lo, ResponseRow.message_id <= hi)).scalars()},
        parts=read_parts(s, lo, hi))


def read_parts(s: Session, lo: int, hi: int) -> dict[str, dict[int, list]]:
    """The rows of records lo..hi besides message, verdict and response, by record: what a keyed
    record's content holds (`chained_content`)."""
    return {name: _by_message(s, row_type, lo, hi) for name, row_type in
            (("findings", FindingRow), ("keys", MessageKeyRow), ("history", HistoryRow),
             ("cancellations", CancellationRow))}


def chained_content(key_id: str | None, message: MessageRow, verdict: VerdictRow | None,
                    response: ResponseRow | None, parts: dict[str, list]) -> dict[str, Any]:
    """The content a chain row's hash covers: keyed (key_id set) or from before the chain was keyed."""
    if key_id is None:
        return record_content(message, verdict, response, parts["findings"])
    keys = parts["keys"]
    if is_anchor(message):
        return record_content(message, verdict, response, parts["findings"], keyed=True, history=parts["history"],
                              cancellations=parts["cancellations"], seeded_keys=keys)
    return record_content(message, verdict, response, parts["findings"], keyed=True,
                          message_key=keys[0] if keys else None, history=parts["history"],
                          cancellations=parts["cancellations"])


def _check_keyed_record(walk: _Walk, row: ChainRow, message: MessageRow, verdict: VerdictRow | None,
                        response: ResponseRow | None, parts: dict[str, list]) -> None:
    if walk.keyed_from is None:
        walk.keyed_from = row.seq
    if len(parts["keys"]) > 1 and not is_anchor(message):
        raise _Broken(row.seq, "it has more than one message key row (one was inserted)")
    content = chained_content(row.key_id, message, verdict, response, parts)
    problem = link_problem(row.seq, walk.prev_hash, row.hash, row.key_id, content, walk.keys)
    if problem:
        raise _Broken(row.seq, problem)
    for c in parts["cancellations"]:
        if c.leaves_history:
            walk.cancels[_identity(c)].append((row.seq, _utc_iso(c.requested_at)))
    walk.removed[row.seq] = sum(c.entries_removed or 0 for c in parts["cancellations"])


def _identity(row: HistoryRow | CancellationRow) -> tuple:
    """What a cancellation matches a history row by (as the writer does: workers/store/sqlstore.py)."""
    return (row.patient_key, row.sender, row.placer_number, row.placer_namespace or "")


def _check_cancelled(s: Session, walk: _Walk, batch: int) -> None:
    """Every course history row is cancelled exactly as the keyed records' cancellations imply: by the
    first later record cancelling its order, at that request's time, and by no other. (A row cancelled by
    a record from before the chain was keyed cannot be checked and is taken as it is.)"""
    if walk.keyed_from is None:
        return
    removed_by: dict[int, int] = defaultdict(int)
    last_id = 0
    while True:
        rows = list(s.execute(select(HistoryRow).where(HistoryRow.id > last_id).order_by(HistoryRow.id)
                              .limit(batch)).scalars())
        if not rows:
            break
        for h in rows:
            if h.cancelled_by is not None:
                removed_by[h.cancelled_by] += 1
            if h.cancelled_by is not None and h.cancelled_by < walk.keyed_from:
                continue
            later = [c for c in walk.cancels.get(_identity(h), []) if c[0] > h.message_id]
            expected = later[0] if later else (None, None)
            if (h.cancelled_by, _utc_iso(h.cancelled_at)) != expected:
                raise _Broken(expected[0] or h.cancelled_by or h.message_id,
                              "a course history row's cancellation differs from what the chained cancellations "
                              "imply (a dose was revived, cancelled or re-dated)")
        last_id = rows[-1].id
    for seq, count in walk.removed.items():
        if removed_by.get(seq, 0) != count:
            raise _Broken(seq, "the course history rows its cancellations removed differ from the recorded count")


def _check_anchor(s: Session, anchor: tuple[int, str], head_seq: int | None) -> None:
    a_seq, a_hash = anchor
    if head_seq is None or a_seq > head_seq:
        raise _Broken(a_seq, f"the anchored record {a_seq} is gone: the newest records were cut off")
    stored = s.get(ChainRow, a_seq)
    if stored is None or stored.hash != a_hash:
        raise _Broken(a_seq, "its hash differs from the anchor: the chain was rewritten")
