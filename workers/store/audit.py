"""Auditors' queries over the SQL audit log: filters, the list, one record's detail, daily stats (docs/interfaces.md §4).

Used by `rxgate audit` (workers/cli/audit.py) and the HTTP API (workers/http/app.py), so both
apply the same filters the same way:

- patient: PID-3 identifier as sent, or the history key `ID^authority`;
- since/until: inclusive calendar dates in the service's time zone, on the received time;
- outcome: the message's ack code AA, AE or AR;
- rule: messages with at least one finding of that rule id (any severity);
- overridden: messages with at least one order overridden with a reason (docs/protocol.md);
- control_id: the input's MSH-10.

Verification of the hash chain is in workers/store/chain.py (`verify_chain`).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import and_, exists, func, or_, select

from workers.store.errors import database_errors
from workers.store.schema import (
    RULE_ID_LEN,
    ChainRow,
    FindingRow,
    MessageRow,
    OverrideRow,
    ResponseRow,
    VerdictRow,
    decode_raw,
)
from workers.store.sqlstore import SqlStore

OUTCOMES = ("AA", "AE", "AR")
_RULE_RE = re.compile(rf"^[A-Za-z0-9_.\-]{{1,{RULE_ID_LEN}}}$")
MAX_LIMIT = 1000


class FilterError(ValueError):
    """A filter value that cannot be used (the CLI exits 2, the API answers 422)."""


@dataclass
class AuditFilter:
    patient: str | None = None
    since: date | None = None
    until: date | None = None
    outcome: str | None = None
    rule: str | None = None
    control_id: str | None = None
    overridden: bool = False  # only messages with an order overridden with a reason

    def check(self) -> AuditFilter:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise FilterError(f"outcome must be one of AA, AE, AR (got {self.outcome!r})")
        if self.since and self.until and self.since > self.until:
            raise FilterError(f"since ({self.since}) is after until ({self.until})")
        if self.rule is not None and not _RULE_RE.match(self.rule):
            raise FilterError(f"rule must be a rule id such as go.dose (got {self.rule!r})")
        return self


def parse_date(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{name} must be a date YYYY-MM-DD (got {value!r})") from None


def parse_filter(
    patient: str | None = None, since: str | None = None, until: str | None = None, outcome: str | None = None,
    rule: str | None = None, control_id: str | None = None, overridden: bool = False,
) -> AuditFilter:
    """Strings as typed (CLI) to a checked filter; raises FilterError naming the bad value."""
    return AuditFilter(
        patient=patient or None,
        since=parse_date(since, "since"),
        until=parse_date(until, "until"),
        outcome=outcome.upper() if outcome else None,
        rule=rule or None,
        control_id=control_id or None,
        overridden=overridden not in (False, None, "", "0", "false"),
    ).check()


def _day_start_utc(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(UTC)


def _conditions(flt: AuditFilter, tz: tzinfo) -> list:
    conds = []
    if flt.patient:
        conds.append(or_(MessageRow.patient_id == flt.patient, MessageRow.patient_key == flt.patient))
    if flt.since:
        conds.append(MessageRow.received_at >= _day_start_utc(flt.since, tz))
    if flt.until:
        conds.append(MessageRow.received_at < _day_start_utc(flt.until + timedelta(days=1), tz))
    if flt.outcome:
        conds.append(VerdictRow.ack_code == flt.outcome)
    if flt.rule:
        conds.append(exists().where(and_(FindingRow.message_id == MessageRow.id, FindingRow.rule == flt.rule)))
    if flt.control_id:
        conds.append(MessageRow.control_id == flt.control_id)
    if flt.overridden:
        conds.append(exists().where(OverrideRow.message_id == MessageRow.id))
    return conds


def _local_iso(value: datetime | None, tz: tzinfo) -> str | None:
    return None if value is None else value.astimezone(tz).isoformat(timespec="seconds")


def _finding_json(f: FindingRow) -> dict[str, Any]:
    return {"rule": f.rule, "severity": f.severity, "location": f.location, "message": f.message,
            "order_index": f.order_index, "placer_order_number": f.placer_number}


def _override_json(o: OverrideRow) -> dict[str, Any]:
    return {"order_index": o.order_index, "placer_order_number": o.placer_number, "rule": o.rule,
            "reason": o.reason, "verified_by": o.verified_by}


def _summary(m: MessageRow, v: VerdictRow | None, findings: list[FindingRow], tz: tzinfo,
             overrides: list[OverrideRow] = ()) -> dict[str, Any]:
    rules: list[str] = []
    for f in findings:
        if f.severity != "info" and f.rule not in rules:
            rules.append(f.rule)
    return {
        "id": m.id,
        "received_at": _local_iso(m.received_at, tz),
        "answered_at": _local_iso(m.answered_at, tz),
        "sender": m.sender,
        "control_id": m.control_id,
        "message_type": m.message_type,
        "patient_id": m.patient_id,
        "outcome": v.ack_code if v else None,
        "rules": rules,
        "findings": [_finding_json(f) for f in findings],
        "overrides": [_override_json(o) for o in overrides],
        "protocol": {"id": v.protocol_id, "version": v.protocol_version} if v else None,
    }


@database_errors
def query_messages(
    store: SqlStore, flt: AuditFilter, tz: tzinfo, limit: int | None = None, offset: int = 0
) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, the page of summaries in sequence order)."""
    conds = _conditions(flt, tz)
    with store.read_session() as s:
        base = select(MessageRow, VerdictRow).outerjoin(VerdictRow, VerdictRow.message_id == MessageRow.id)
        if conds:
            base = base.where(*conds)
        total = s.execute(select(func.count()).select_from(base.subquery())).scalar_one()
        page = base.order_by(MessageRow.id).offset(offset)
        if limit is not None:
            page = page.limit(limit)
        rows = s.execute(page).all()
        ids = [m.id for m, _ in rows]
        by_message: dict[int, list[FindingRow]] = defaultdict(list)
        overrides_of: dict[int, list[OverrideRow]] = defaultdict(list)
        for chunk in _chunks(ids, 500):
            for f in s.execute(
                select(FindingRow).where(FindingRow.message_id.in_(chunk)).order_by(FindingRow.message_id,
                                                                                   FindingRow.position)
            ).scalars():
                by_message[f.message_id].append(f)
            for o in s.execute(
                select(OverrideRow).where(OverrideRow.message_id.in_(chunk)).order_by(OverrideRow.id)
            ).scalars():
                overrides_of[o.message_id].append(o)
        return total, [_summary(m, v, by_message[m.id], tz, overrides_of[m.id]) for m, v in rows]


def iter_messages(store: SqlStore, flt: AuditFilter, tz: tzinfo, batch: int = 500):
    """Every matching summary, fetched page by page (for CLI exports of a large log)."""
    offset = 0
    while True:
        _total, page = query_messages(store, flt, tz, limit=batch, offset=offset)
        yield from page
        if len(page) < batch:
            return
        offset += batch


@database_errors
def get_message(store: SqlStore, message_id: int, tz: tzinfo) -> dict[str, Any] | None:
    """One record in full: summary, findings, raw message, response, computed values, chain link."""
    with store.read_session() as s:
        m = s.get(MessageRow, message_id)
        if m is None:
            return None
        v = s.get(VerdictRow, message_id)
        r = s.get(ResponseRow, message_id)
        c = s.get(ChainRow, message_id)
        findings = list(
            s.execute(select(FindingRow).where(FindingRow.message_id == message_id).order_by(FindingRow.position))
            .scalars()
        )
        overridden = list(s.execute(select(OverrideRow).where(OverrideRow.message_id == message_id)
                                    .order_by(OverrideRow.id)).scalars())
        detail = _summary(m, v, findings, tz, overridden)
        result = json.loads(v.result) if v else {}
        detail.update(
            {
                "sending_application": m.sending_application,
                "sending_facility": m.sending_facility,
                "patient_key": m.patient_key,
                "content_sha256": m.content_sha256,
                "raw_message": decode_raw(m.raw_message),
                "response": r.response if r else None,
                "computed": json.loads(v.computed) if v else {},
                "orders": result.get("orders", []),
                "chain": {"seq": c.seq, "prev_hash": c.prev_hash, "hash": c.hash} if c else None,
            }
        )
        return detail


@database_errors
def stats(store: SqlStore, flt: AuditFilter, tz: tzinfo) -> list[dict[str, Any]]:
    """Per local day: message count, counts by outcome, counts of messages by rule (error/warning)."""
    conds = _conditions(flt, tz)
    days: dict[str, dict[str, Any]] = {}
    with store.read_session() as s:
        q = select(MessageRow.id, MessageRow.received_at, VerdictRow.ack_code).outerjoin(
            VerdictRow, VerdictRow.message_id == MessageRow.id
        )
        if conds:
            q = q.where(*conds)
        day_of: dict[int, str] = {}
        for mid, received, ack in s.execute(q.order_by(MessageRow.id)):
            day = received.astimezone(tz).date().isoformat()
            day_of[mid] = day
            entry = days.setdefault(day, {"date": day, "messages": 0, "outcomes": Counter(), "rules": Counter()})
            entry["messages"] += 1
            entry["outcomes"][ack or "?"] += 1
        ids = list(day_of)
        for chunk in _chunks(ids, 500):
            pairs = s.execute(
                select(FindingRow.message_id, FindingRow.rule)
                .where(FindingRow.message_id.in_(chunk), FindingRow.severity != "info")
                .distinct()
            ).all()
            for mid, rule in pairs:
                days[day_of[mid]]["rules"][rule] += 1
    out = []
    for day in sorted(days):
        e = days[day]
        out.append({
            "date": day,
            "messages": e["messages"],
            "outcomes": {k: e["outcomes"].get(k, 0) for k in OUTCOMES},
            "rules": dict(sorted(e["rules"].items(), key=lambda kv: (-kv[1], kv[0]))),
        })
    return out


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
