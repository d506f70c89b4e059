"""go.liver — liver tests before the dose are below the protocol's multiples of the upper limit of normal.

For each test in `liver.tests` (seed: total bilirubin 2 × ULN, AST and ALT
2.5 × ULN) the most recent result observed (OBX-14) at or before the GO start
and no more than `liver.max_age_hours` before it is judged. The ULN is the upper
bound of that OBX's reference range (OBX-7: `0.2-1.2` → 1.2, `<40` → 40), in
the result's own unit. A value above multiple × ULN gives a finding of severity
`liver.severity` (warning in the seed, which only says "monitor"; the US label
advises holding the dose at these levels); exactly multiple × ULN is not above
it. A missing test, an undated or too old one, or one without a usable ULN is
reported as `info`. Results coded with the test's codes are used first; a text
match counts as a whole word (so "AST" does not match "blasts").

Flagged (bilirubin 2.5 mg/dL > 2 × 1.2 = 2.4 mg/dL)::

    OBX|5|NM|1975-2^Bilirubin.total [Mass/volume] in Serum or Plasma^LN||2.5|mg/dL^mg/dL^UCUM|0.2-1.2|H|||F|||20261130060000

Accepted (bilirubin 0.8 mg/dL, ULN 1.2)::

    OBX|5|NM|1975-2^Bilirubin.total [Mass/volume] in Serum or Plasma^LN||0.8|mg/dL^mg/dL^UCUM|0.2-1.2|N|||F|||20261130060000
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation

from ..findings import Finding, finding, info
from ..model import Observation
from ..protocol import LiverTest
from ..units import unit_label
from .base import DoseContext, Rule
from .labs import (
    SECONDS_PER_HOUR,
    LabChoice,
    exact_duration,
    first_usable,
    limit_text,
    num,
    recent_result,
    text_mentions,
    when,
)

RULE_ID = "go.liver"

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_UNIT_TAIL = r"(?:\s*[A-Za-z/%µμ*^\[\]0-9.]*)?"
_UPPER_ONLY = re.compile(rf"^\s*(?:<=?|≤)\s*{_NUMBER}{_UNIT_TAIL}\s*$")
_RANGE = re.compile(rf"^\s*-?{_NUMBER}\s*(?:-|–|to)\s*{_NUMBER}{_UNIT_TAIL}\s*$", re.IGNORECASE)


def upper_limit_of_normal(reference_range: str) -> Decimal | None:
    """The upper bound of an OBX-7 reference range: `0.2-1.2` → 1.2, `<40` → 40; None when there is none."""
    m = _UPPER_ONLY.match(reference_range) or _RANGE.match(reference_range)
    if not m:
        return None
    try:
        uln = Decimal(m.groups()[-1])
    except InvalidOperation:
        return None
    return uln if uln > 0 else None


def _candidates(observations: list[Observation], test: LiverTest) -> tuple[list[Observation], list[Observation]]:
    codes = {c.strip().upper() for c in test.match.codes}
    coded = [o for o in observations if o.code.code.strip().upper() in codes]
    by_text = [
        o for o in observations
        if o not in coded
        and any(text_mentions(f"{o.code.text} {o.code.more_text}", t) for t in test.match.text_contains)
    ]
    return coded, by_text


def _judge(ctx: DoseContext, test: LiverTest, start: datetime) -> Finding | None:
    params = ctx.protocol.liver
    limit = limit_text(params.max_age_hours, in_days=False)
    window = exact_duration(params.max_age_hours, SECONDS_PER_HOUR)

    def recent(candidates: list[Observation]) -> LabChoice:
        return recent_result(candidates, start, window, what=test.name, limit=limit, tz=ctx.tz, in_days=False,
                             start_latest=ctx.dose.timing.start_latest)

    coded, by_text = _candidates(ctx.observations, test)
    choice = first_usable(recent(coded), recent(by_text))
    obs = choice.observation
    if obs is None:
        return info(RULE_ID, f"{choice.problem}; {test.name} cannot be checked against "
                    f"{num(test.max_uln_multiple)} × ULN", choice.location or ctx.dose.drug_location)
    # Several results with the same, latest time: the worst is reported (the safe reading).
    pool = coded if obs in coded else by_text
    tied = [o for o in pool if o.observed_at == obs.observed_at]
    results = [_judge_result(ctx, test, o) for o in tied]
    worst = next((i for i, r in enumerate(results) if r is not None and r.severity != "info"),
                 next((i for i, r in enumerate(results) if r is not None), None))
    if worst is not None and worst != len(tied) - 1:
        _judge_result(ctx, test, tied[worst])  # its computed values are the ones kept
    return None if worst is None else results[worst]


def _judge_result(ctx: DoseContext, test: LiverTest, obs: Observation) -> Finding | None:
    params = ctx.protocol.liver
    assert obs.observed_at is not None
    dated = when(obs.observed_at, ctx.tz)
    unit = unit_label(obs.units) if (obs.units.code or obs.units.text) else ""
    if obs.quantity is None:
        return info(RULE_ID, f"{test.name} value {obs.raw_value!r} (observed {dated}) is not a number: it cannot be "
                    f"checked against {num(test.max_uln_multiple)} × ULN", obs.location)
    uln = upper_limit_of_normal(obs.reference_range)
    if uln is None:
        return info(RULE_ID, f"{test.name} {obs.raw_value} {unit} (observed {dated}) has no upper limit of normal "
                    f"in its reference range (OBX-7 {obs.reference_range!r}): it cannot be checked against "
                    f"{num(test.max_uln_multiple)} × ULN", obs.location.model_copy(update={"field": 7}))
    value, comparator = obs.quantity.high, obs.quantity.comparator.strip()  # a range: its upper end
    maximum = test.max_uln_multiple * uln
    key = "liver_" + re.sub(r"\W+", "_", test.name.lower()).strip("_")
    ctx.computed[key] = {"value": str(value), "comparator": comparator, "uln": str(uln), "max": str(maximum),
                         "observed_at": obs.observed_at.isoformat()}
    # Exactly multiple × ULN is not above it. An upper bound (`<x`, `<=x`) is within only when x is;
    # a lower bound (`>x`) has no upper end, so it cannot be shown within (the safe reading).
    shown = f"{comparator}{num(value)} {unit}".rstrip()
    limit_shown = f"{num(test.max_uln_multiple)} × ULN {num(uln)} = {num(maximum)} {unit}".rstrip()
    if comparator in ("", "=", "<", "<="):
        if value <= maximum:
            return None
        problem = f"is above {limit_shown}"
    elif comparator in (">", ">=") and value >= maximum:
        problem = f"is above {limit_shown}"
    else:
        problem = f"cannot be shown to be within {limit_shown}"
    return finding(RULE_ID, params.severity,
                   f"{test.name} {shown} (observed {dated}) {problem}; the US label advises holding the dose "
                   "at this level", obs.location, value=str(value), uln=str(uln), max=str(maximum))


def check(ctx: DoseContext) -> list[Finding]:
    if ctx.start is None:
        return []  # go.schedule reports the missing start
    start = ctx.start
    return [f for f in (_judge(ctx, test, start) for test in ctx.protocol.liver.tests) if f is not None]


RULE = Rule(RULE_ID, check, ("liver.tests", "liver.max_age_hours", "liver.severity"), __doc__ or "")
