"""go.cd33 — leukemic blasts are CD33-positive (≥ `cd33.min_percent` %), shown by a recent result.

The result is an OBX recognised by `cd33.match` (codes, or OBX-3 text containing
"CD33"), final or corrected, observed (OBX-14) at or before the GO start and no
more than `cd33.max_age_days` before it (an exact duration: 60 days is
60 × 24 h, inclusive). The most recent such result is judged; without OBX-14 a
result cannot be shown recent and counts as missing.

The value must be a percentage: NM/SN with a percent unit (`units.percent`) or
no unit; a text value only when it holds a number with `%` (`85 %`, `>90%`).
A lower bound (`>90`, SN `>^90`) satisfies the minimum when the bound itself
does; an upper bound (`<40`) cannot show it. "positive" without a percentage
does not satisfy it. Several results with the same, latest time: qualitative
ones are set aside, and every percentage among them must pass (conflicting
percentages are refused — the safe reading).

Refused (29.9 % is below 30 %)::

    OBX|4|NM|CD33BL^CD33 positive blasts (flow cytometry)^L||29.9|%^percent^UCUM|||||F|||20261115120000

Accepted::

    OBX|4|NM|CD33BL^CD33 positive blasts (flow cytometry)^L||72|%^percent^UCUM|||||F|||20261115120000
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..findings import Finding, finding
from ..model import Location, Observation
from ..observations import matches
from ..units import is_one_of, unit_label
from .base import DoseContext, Rule
from .labs import SECONDS_PER_DAY, exact_duration, limit_text, num, recent_result, text_mentions, when

RULE_ID = "go.cd33"

NUMERIC_VALUE_TYPES = ("NM", "SN", "")
LOWER_BOUNDS = (">", ">=")
UPPER_BOUNDS = ("<", "<=")
EXACT = ("", "=")
HUNDRED_PERCENT = Decimal(100)


@dataclass
class _Assessment:
    qualitative: bool  # no percentage at all ("positive"): set aside when a percentage exists
    passes: bool
    message: str
    location: Location
    percent: Decimal | None = None


def _assess(obs: Observation, minimum: Decimal, percent_units: list[str], dated: str) -> _Assessment:
    need = f"the protocol requires ≥ {num(minimum)} %"
    shown = f"CD33 result {obs.raw_value!r} ({obs.code.label()}, observed {dated})"
    quantity = obs.quantity
    if quantity is None:
        return _Assessment(True, False, f"{shown} is not a percentage: a qualitative result does not "
                           f"show CD33 on ≥ {num(minimum)} % of blasts", obs.location)
    has_unit = bool(obs.units.code.strip() or obs.units.text.strip())
    if has_unit and not is_one_of(obs.units, percent_units):
        return _Assessment(False, False, f"{shown} is in {unit_label(obs.units)!r}, not a percentage of blasts; "
                           f"{need}", obs.location.model_copy(update={"field": 6}))
    if obs.value_type not in NUMERIC_VALUE_TYPES and "%" not in obs.raw_value:
        # docs/protocol.md, Units: a text value counts only when it holds a number with %.
        return _Assessment(True, False, f"{shown} is text without a % sign: it does not state a percentage "
                           f"of blasts; {need}", obs.location)
    value, comparator = quantity.value, quantity.comparator.strip()
    if value < 0 or value > HUNDRED_PERCENT:
        return _Assessment(False, False, f"{shown} is not a valid percentage (0–100 %); {need}", obs.location)
    if comparator in UPPER_BOUNDS:
        return _Assessment(False, False, f"{shown} is an upper bound ({comparator}{num(value)} %): it cannot show "
                           f"≥ {num(minimum)} %", obs.location, value)
    if comparator not in LOWER_BOUNDS + EXACT:
        return _Assessment(False, False, f"{shown} has comparator {comparator!r}, which cannot be read as a "
                           f"percentage; {need}", obs.location, value)
    shown_value = f"{comparator}{num(value)} %"
    if value < minimum:
        return _Assessment(False, False, f"CD33 {shown_value} (observed {dated}) is below the required "
                           f"{num(minimum)} % of blasts", obs.location, value)
    return _Assessment(False, True, f"CD33 {shown_value} (observed {dated}) meets ≥ {num(minimum)} %",
                       obs.location, value)


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.cd33
    if ctx.start is None:
        return []  # go.schedule reports the missing start
    limit = limit_text(params.max_age_days, in_days=True)
    candidates = [
        o for o in ctx.observations
        if matches(o, params.match)
        and not any(text_mentions(o.code.text, word) for word in params.exclude_text_contains)
    ]
    choice = recent_result(candidates, ctx.start, exact_duration(params.max_age_days, SECONDS_PER_DAY),
                           what="CD33", limit=limit, tz=ctx.tz, in_days=True,
                             start_latest=ctx.dose.timing.start_latest)
    if choice.observation is None:
        where = choice.location or ctx.dose.drug_location
        return [finding(RULE_ID, params.severity,
                        f"{choice.problem} (the protocol requires CD33 on ≥ {num(params.min_percent)} % of blasts)",
                        where)]
    observed_at = choice.observation.observed_at
    assert observed_at is not None
    dated = when(observed_at, ctx.tz)
    same_time = [o for o in candidates if o.observed_at == observed_at]
    assessed = [_assess(o, params.min_percent, ctx.protocol.units.percent, dated) for o in same_time]
    percentages = [a for a in assessed if not a.qualitative]
    judged = percentages or assessed
    failed = [a for a in judged if not a.passes]
    lowest = min((a.percent for a in judged if a.percent is not None), default=None)
    if lowest is not None:
        ctx.computed["cd33_percent"] = str(lowest)
    ctx.computed["cd33_observed_at"] = observed_at.isoformat()
    return [finding(RULE_ID, params.severity, a.message, a.location,
                    cd33_percent=None if a.percent is None else str(a.percent)) for a in failed]


RULE = Rule(
    RULE_ID,
    check,
    ("cd33.min_percent", "cd33.max_age_days", "cd33.match", "units.percent"),
    __doc__ or "",
)
