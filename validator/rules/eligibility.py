"""go.eligibility — the patient is old enough for the protocol at the planned GO start.

Age is in completed years on the calendar date of the planned start (PID-7 vs
TQ1-7). No birth date, or a partial one (no day), cannot be shown eligible.
Patients under `eligibility.pediatric_below_years` get the pediatric
premedication doses.

Refused::

    PID|1||MRN1^^^H^MR||DOE^BABY||20250601|F      (1 year old at a 2026-12-01 start)

Accepted::

    PID|1||MRN1^^^H^MR||DOE^JANE||19660412|F
"""

from __future__ import annotations

from datetime import date, datetime, tzinfo

from ..findings import Finding, finding
from ..model import Location
from .base import DoseContext, Rule

RULE_ID = "go.eligibility"


def age_in_years(birth: date | None, start: datetime | None, tz: tzinfo) -> int | None:
    if birth is None or start is None:
        return None
    # The start's date in the service's zone, and as sent with its own UTC offset: where the two
    # differ (an evening start near a birthday), the lower age is the safe reading.
    dates = {start.astimezone(tz).date(), start.date()}
    return min(on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day)) for on in dates)


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.eligibility
    patient = ctx.order_set.patient
    where = Location(segment="PID", occurrence=1, field=7)
    if patient.birth_date is None:
        seen = f"birth date {patient.birth_raw!r} is partial or invalid" if patient.birth_raw else "no birth date (PID-7)"
        return [finding(RULE_ID, params.severity, f"{seen}: age at the GO start cannot be verified "
                        f"(minimum {params.min_age_years} years)", where)]
    if ctx.start is None:
        return []  # go.schedule reports the missing start
    ctx.computed["age_years"] = ctx.age_years
    if ctx.age_years is not None and ctx.age_years < params.min_age_years:
        return [finding(RULE_ID, params.severity, f"patient is {ctx.age_years} {'year' if ctx.age_years == 1 else 'years'} old on {ctx.start_date}; "
                        f"the protocol requires at least {params.min_age_years} years", where,
                        age_years=ctx.age_years)]
    return []


RULE = Rule(RULE_ID, check, ("eligibility.min_age_years", "eligibility.pediatric_below_years"), __doc__ or "")
