"""go.schedule — GO doses fall on the protocol's course days (seed: day 1 and day 14).

A course is a run of GO doses; doses of every protocol count in it. It follows
its day-1 dose's protocol and that protocol's `schedule.course_days`: a dose
whose start date is on or after the course's day-1 date + `course_days` starts a
new course and is its day 1; a dose of another protocol before then is refused
("patient is in a course of <protocol> started <date>; finish or cancel it first"). Inside a course, dose k (k = doses already
accepted in it) must fall on `schedule.days[k]` ± `schedule.tolerance_days`;
a course has at most `len(schedule.days)` doses, and a dose may not start
before the latest accepted dose of its course. Prior doses are the patient's
course history (earlier accepted orders) plus this message's doses already
accepted, in start order. Days are calendar dates in the service's time zone.
A GO order with no start time (no TQ1-7, no TQ start), or a start without a
time of day, cannot be placed in a course and is refused; so is a GO order that
plans more than one start (several TQ1, a TQ1-3 repeat pattern other than
`ONCE`, TQ1-14 > 1, several TQ1-4 times; in v2.3/2.4 a repeated TQ, an interval
other than `ONCE`, a duration `X`n with n > 1): one order per dose.

Refused (day 1 accepted on 2026-12-01; this dose is course day 8)::

    ORC|NW|ORD2001|||||||20261207083000
    RXE||1294580^gemtuzumab ozogamicin^RXNORM|15.2||mg^milligram^UCUM
    TQ1|1|||||240^min|20261208100000|20261208140000

Accepted (course day 14 = day-1 date + 13 days)::

    ORC|NW|ORD2001|||||||20261213083000
    RXE||1294580^gemtuzumab ozogamicin^RXNORM|15.2||mg^milligram^UCUM
    TQ1|1|||||240^min|20261214100000|20261214140000
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from ..findings import Finding, finding
from ..history import HistoryEntry
from ..model import Location
from .base import DoseContext, Rule

RULE_ID = "go.schedule"


def _prior_doses(ctx: DoseContext) -> list[HistoryEntry]:
    """Accepted GO doses of every protocol that have a start, in start order (one course across protocols)."""
    doses = [h for h in ctx.history if h.protocol_order and h.start is not None]
    return sorted(doses, key=lambda h: h.start)  # type: ignore[arg-type,return-value]


def course_days_of(protocol_id: str, ctx: DoseContext) -> int:
    """The course length of a course that a dose of `protocol_id` started.

    A protocol this service no longer knows keeps the longest course length it knows (the
    reading that keeps the patient in that course rather than starting a new one early).
    """
    if protocol_id == ctx.protocol.id:
        return ctx.protocol.schedule.course_days
    known = ctx.known_protocols.get(protocol_id)
    if known is not None:
        return known.schedule.course_days
    return max([ctx.protocol.schedule.course_days, *(p.schedule.course_days for p in ctx.known_protocols.values())])


def current_course(ctx: DoseContext) -> list[HistoryEntry]:
    """The doses of the patient's last course (empty when there is none): it follows its day-1 dose's protocol."""
    courses: list[list[HistoryEntry]] = []
    ends: date | None = None
    for entry in _prior_doses(ctx):
        on = _local_date(entry.start, ctx)  # type: ignore[arg-type]
        if ends is None or on >= ends:
            courses.append([entry])
            ends = on + timedelta(days=course_days_of(entry.protocol_id, ctx))
        else:
            courses[-1].append(entry)
    return courses[-1] if courses else []


def _local_date(at: datetime, ctx: DoseContext) -> date:
    return at.astimezone(ctx.tz).date()


def _start_location(ctx: DoseContext) -> Location:
    """TQ1-7 of the order's TQ1 (or the TQ field that gave the start); ORC-7 when the order has no TQ1."""
    timing = ctx.dose.timing
    if timing.start_location is not None:
        return timing.start_location
    for other in (timing.end_location, timing.duration_location):
        if other is not None and other.segment == "TQ1":
            return other.model_copy(update={"field": 7})
    if ctx.dose.orc_location is not None:
        return ctx.dose.orc_location.model_copy(update={"field": 7})
    return Location(segment="TQ1", occurrence=1, field=7)


def _label(entry: HistoryEntry) -> str:
    return entry.placer_number or f"message {entry.control_id}"


def _days_text(days: list[int]) -> str:
    return ", ".join(str(d) for d in days)


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.schedule
    timing = ctx.dose.timing
    where = _start_location(ctx)
    if ctx.start is None or ctx.start_date is None:
        seen = (f"the GO order's start time ({where.short()}) is not a valid date and time"
                if timing.start_location else
                "the GO order has no start time (TQ1-7, or the TQ start of RXE-1 / ORC-7)")
        return [finding(RULE_ID, params.severity, f"{seen}: its course day cannot be determined", where)]
    if timing.several_starts:
        return [finding(RULE_ID, params.severity,
                        f"one order per dose: this order plans more than one start ({timing.several_starts})", where)]
    if not timing.start_has_time:
        # A date alone covers the whole day: the premed windows, infusion and recency limits cannot
        # be judged against it (docs/protocol.md, "Times").
        return [finding(RULE_ID, params.severity,
                        f"the GO order's start ({where.short()}) is a date without a time of day: the dose's "
                        "start must be given at least to the minute", where)]
    start_date = ctx.start_date
    course = current_course(ctx)
    course_length = timedelta(days=course_days_of(course[0].protocol_id, ctx) if course else params.course_days)
    if not course or start_date >= _local_date(course[0].start, ctx) + course_length:  # type: ignore[arg-type]
        # Day 1 of a new course (the schedule's first day is day 1 by definition).
        ctx.computed["course_day"] = 1
        ctx.computed["course_day1_date"] = start_date.isoformat()
        ctx.computed["course_dose_number"] = 1
        return []

    day1_date = _local_date(course[0].start, ctx)  # type: ignore[arg-type]
    if course[0].protocol_id != ctx.protocol.id:
        return [finding(RULE_ID, params.severity,
                        f"patient is in a course of {course[0].protocol_id or 'an unnamed protocol'} started "
                        f"{day1_date}; finish or cancel it first (it ends on {day1_date + course_length}; this "
                        f"{ctx.protocol.id} dose starts {start_date})", where,
                        course_protocol=course[0].protocol_id, course_day1_date=day1_date.isoformat())]
    course_day = (start_date - day1_date).days + 1
    ctx.computed["course_day"] = course_day
    ctx.computed["course_day1_date"] = day1_date.isoformat()
    dose_number = len(course) + 1
    ctx.computed["course_dose_number"] = dose_number
    values = {"course_day": course_day, "course_day1_date": day1_date.isoformat(), "dose_number": dose_number}

    latest = course[-1]
    latest_start = latest.start or ctx.start  # never None: _prior_doses keeps dated doses only
    if ctx.start < latest_start:
        return [finding(RULE_ID, params.severity,
                        f"GO dose starting {ctx.start.astimezone(ctx.tz):%Y-%m-%d %H:%M} is before the latest "
                        f"accepted dose of the current course ({_label(latest)}, "
                        f"{latest_start.astimezone(ctx.tz):%Y-%m-%d %H:%M}; course day 1 {day1_date})",
                        where, **values)]

    if len(course) >= params.max_doses:
        next_course = day1_date + course_length
        return [finding(RULE_ID, params.severity,
                        f"GO dose on {start_date} would be dose {dose_number} of the course that started on "
                        f"{day1_date} (course day {course_day}); the protocol gives at most {params.max_doses} "
                        f"doses per course (days {_days_text(params.days)}); a new course starts on or after "
                        f"{next_course} ({params.course_days} days)", where, **values)]

    expected_day = params.days[len(course)]
    if abs(course_day - expected_day) > params.tolerance_days:
        expected_date = day1_date + timedelta(days=expected_day - 1)
        tolerance = f", tolerance ±{params.tolerance_days} days" if params.tolerance_days else ""
        return [finding(RULE_ID, params.severity,
                        f"GO dose on {start_date} is course day {course_day}; the protocol gives dose "
                        f"{dose_number} on day {expected_day} ({expected_date}{tolerance})",
                        where, expected_day=expected_day, **values)]
    return []


RULE = Rule(
    RULE_ID,
    check,
    ("schedule.days", "schedule.tolerance_days", "schedule.course_days"),
    __doc__ or "",
)
