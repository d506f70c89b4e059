"""go.hsct — a planned HSCT/conditioning is at least `hsct.min_days_after_last_dose` days after the last GO dose.

A planned date is the value (DT/TS in OBX-5) of an OBX recognised by
`hsct.match`, or the start of an order (in this message, or accepted in the
course history) whose code or text matches it. The last GO dose is this dose,
or a later accepted GO dose in the course history. A planned time less than the
minimum (an exact duration) after that dose's start gives a finding of severity `hsct.severity`
(warning in the seed: "wait at least 2 months"). A planned date before this GO
dose is reported the same way. A date before the message time is a past
transplant, not a planned one: `info`. No HSCT record: no finding. An HSCT date
is usually a date without a time: it is judged at its start (00:00 in the
service's time zone), the reading nearest the last dose.

Flagged (conditioning planned 2027-01-15, 45 days after the 2026-12-01 dose)::

    OBX|8|DT|HSCTDATE^Planned HSCT date^L||20270115||||||F|||20261130060000

Accepted (planned 2027-02-15, 76 days after)::

    OBX|8|DT|HSCTDATE^Planned HSCT date^L||20270215||||||F|||20261130060000
"""

from __future__ import annotations

from datetime import date, datetime

from ..drugs import drug_matches, is_protocol_drug
from ..findings import Finding, finding, info
from ..hl7time import parse_datetime
from ..model import Location
from ..observations import matches
from ..protocol import DrugMatch
from .base import DoseContext, Rule
from .labs import SECONDS_PER_DAY, duration_text, exact_duration, num, when

RULE_ID = "go.hsct"


def _records(ctx: DoseContext) -> tuple[list[tuple[str, datetime, Location | None]], list[Finding]]:
    """(what, planned date, location) of each HSCT record; `info` for a matching OBX whose value is not a date."""
    match = ctx.protocol.hsct.match
    records: list[tuple[str, datetime, Location | None]] = []
    notes: list[Finding] = []
    for obs in ctx.observations:
        if not matches(obs, match):
            continue
        raw = obs.raw_value.split(" ")[0] if obs.raw_value else ""
        planned = parse_datetime(raw, ctx.tz) if raw else None
        if planned is None:
            notes.append(info(RULE_ID, f"{obs.code.label()!r} value {obs.raw_value!r} is not a date (DT/TS): "
                              "the HSCT timing cannot be checked", obs.location))
            continue
        records.append((f"HSCT record {obs.code.label()!r}", planned, obs.location))
    as_drug = DrugMatch(local_codes=match.codes, text_contains=match.text_contains)
    for order in ctx.message_orders:
        if (order.index == ctx.dose.index or order.timing.start is None
                or not order.is_new
                or is_protocol_drug(order.drug, ctx.protocol)
                or not drug_matches(order.drug, as_drug, ctx.protocol)):
            continue
        records.append((f"HSCT order {order.placer_number or order.drug_label()!r}", order.timing.start,
                        order.timing.start_location or order.drug_location))
    for entry in ctx.history:
        if entry.protocol_order or entry.start is None or not drug_matches(entry.drug, as_drug, ctx.protocol):
            continue
        records.append((f"accepted HSCT order {entry.placer_number or entry.drug.label()!r}", entry.start, None))
    return records, notes


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.hsct
    if ctx.start is None:
        return []  # go.schedule reports the missing start
    records, findings = _records(ctx)
    if not records:
        return findings
    # The last GO dose: this one, or a later accepted dose of the course history.
    later = [h for h in ctx.history if h.protocol_order and h.start is not None and h.start > ctx.start]
    this_start = ctx.dose.timing.start_latest or ctx.start  # the reading nearest a later HSCT date
    last_start = max([this_start] + [h.start for h in later if h.start is not None])
    last_label = "this GO dose" if last_start == this_start else "the last accepted GO dose"
    last_day: date = last_start.astimezone(ctx.tz).date()
    this_day: date = ctx.start.astimezone(ctx.tz).date()
    today = (ctx.order_set.message_time or ctx.received_at).astimezone(ctx.tz).date()
    minimum = num(params.min_days_after_last_dose)
    seen: set[tuple[str, date]] = set()
    for what, planned, where in records:
        planned_day = planned.astimezone(ctx.tz).date()
        if (what, planned_day) in seen:
            continue
        seen.add((what, planned_day))
        if planned_day < today:
            findings.append(info(RULE_ID, f"{what} dated {planned_day} is before the message date {today}: a past "
                                 "transplant, not a planned one", where))
            continue
        days_after = (planned_day - last_day).days
        gap = planned - last_start
        ctx.computed["hsct_planned_date"] = planned_day.isoformat()
        if planned_day < this_day:
            findings.append(finding(RULE_ID, params.severity,
                                    f"{what} plans HSCT/conditioning on {planned_day}, before this GO dose "
                                    f"({when(ctx.start, ctx.tz)}); the protocol asks for at least {minimum} days "
                                    "after the last GO dose", where, days_after_last_dose=days_after))
        elif gap < exact_duration(params.min_days_after_last_dose, SECONDS_PER_DAY):
            findings.append(finding(RULE_ID, params.severity,
                                    f"{what} plans HSCT/conditioning on {planned_day}, "
                                    f"{duration_text(gap, in_days=True)} after the start of {last_label} "
                                    f"({when(last_start, ctx.tz)}); the protocol asks for at least {minimum} days",
                                    where, days_after_last_dose=days_after))
    return findings


RULE = Rule(RULE_ID, check, ("hsct.min_days_after_last_dose", "hsct.match", "hsct.severity"), __doc__ or "")
