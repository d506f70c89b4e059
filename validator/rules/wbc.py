"""go.wbc — a recent blood WBC before the GO start; cytoreduction documented when it is high.

The WBC is the most recent blood result observed (OBX-14) at or before the GO
start and no more than `wbc.max_age_hours` before it (an exact duration,
inclusive: 72 h 0 s passes, 72 h 1 s does not). Results coded with
`wbc.preferred_codes` (LOINC 6690-2, 26464-8) win over text matches of the same
time, but a newer text-matched blood count is never hidden behind an older coded
one (the safe reading); of several results at the latest time the worst counts. A text match
(`wbc.text_contains` on OBX-3) counts only when neither OBX-3 nor OBX-6
mentions a `wbc.exclude_specimen_words` word (urine, CSF, fluid, stool, /HPF):
such an OBX is not a blood count and is ignored with an `info` (as is a text
match in a percent unit, e.g. "Neutrophils/100 leukocytes"). Each dose is
judged against its own start: a day-14 dose ordered with day 1 has no WBC
within 72 h of its start and is refused until its pre-dose count is sent.

Units come from `units.wbc_10e9_per_l` (10*9/L, G/L, K/uL… = 1; /uL, cells/uL
÷ 1000); an unknown or missing unit is an error naming it. A count
≥ `wbc.threshold_10e9_per_l` needs cytoreduction started before the GO start,
within `wbc.cytoreduction.within_days_before` days: a hydroxyurea order
(`drugs.is_hydroxyurea`) or a leukapheresis order / OBX
(`wbc.cytoreduction.procedure`), in this message or, as an accepted order, in
the course history. With it, a `warning` asks the pharmacist to confirm the
count fell below the threshold; without it, an error. A bound that cannot be
shown below the threshold (`>20`, `<40`) is treated as at or above it.

Refused (WBC 45 × 10⁹/L, no hydroxyurea or leukapheresis)::

    OBX|3|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN||45|10*9/L^10*9/L^UCUM|4.0-11.0|HH|||F|||20261130060000

Accepted (WBC 8.4 × 10⁹/L, 28 h before a 2026-12-01 10:00 start)::

    OBX|3|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN||8.4|10*9/L^10*9/L^UCUM|4.0-11.0|N|||F|||20261130060000
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ..drugs import drug_matches, is_hydroxyurea, is_protocol_drug
from ..findings import Finding, finding, info, warning
from ..model import Coded, Observation
from ..observations import matches
from ..protocol import DrugMatch, ObservationMatch
from ..units import factor, is_one_of, unit_label
from .base import DoseContext, Rule
from .labs import (
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    LabChoice,
    exact_duration,
    first_usable,
    limit_text,
    num,
    recent_result,
    when,
)

RULE_ID = "go.wbc"

UNIT = "× 10⁹/L"


def _mentions(coded: Coded, words: list[str]) -> str:
    """The first exclusion word OBX-3 / OBX-6 mentions; brackets dropped so `/[HPF]` mentions `/hpf`."""
    text = " ".join((coded.code, coded.text, coded.more_text)).lower().replace("[", "").replace("]", "")
    return next((w for w in words if w.lower() in text), "")


def _candidates(ctx: DoseContext) -> tuple[list[Observation], list[Observation], list[Finding]]:
    params = ctx.protocol.wbc
    preferred_codes = {c.strip().upper() for c in params.preferred_codes}
    by_text_match = ObservationMatch(text_contains=params.text_contains)
    preferred: list[Observation] = []
    by_text: list[Observation] = []
    notes: list[Finding] = []
    for obs in ctx.observations:
        if obs.code.code.strip().upper() in preferred_codes:
            preferred.append(obs)
            continue
        if not matches(obs, by_text_match):
            continue
        word = _mentions(obs.code, params.exclude_specimen_words) or _mentions(obs.units, params.exclude_specimen_words)
        if word:
            notes.append(info(RULE_ID, f"{obs.code.label()!r} (unit {unit_label(obs.units)!r}) mentions {word!r}: "
                              "not a blood WBC, ignored", obs.location.model_copy(update={"field": 3})))
            continue
        if is_one_of(obs.units, ctx.protocol.units.percent):
            # e.g. "Neutrophils/100 leukocytes": a differential percentage mentions leukocytes but is no count.
            notes.append(info(RULE_ID, f"{obs.code.label()!r} is a percentage (unit {unit_label(obs.units)!r}), "
                              "not a leukocyte count: ignored", obs.location.model_copy(update={"field": 6})))
            continue
        by_text.append(obs)
    return preferred, by_text, notes


def _severity_key(obs: Observation, table: dict[str, Decimal]) -> tuple[int, Decimal]:
    """Order equally recent WBC results: unreadable (no number, unknown unit, negative, odd comparator)
    first, then lower bounds (`>x`), then the highest count."""
    unit_factor = factor(obs.units, table)
    if obs.quantity is None or unit_factor is None or obs.quantity.value < 0:
        return (3, Decimal(0))
    comparator = obs.quantity.comparator.strip()
    if comparator not in ("", "=", "<", "<=", ">", ">="):
        return (3, Decimal(0))
    if comparator in (">", ">="):
        return (2, obs.quantity.high * unit_factor)
    return (1, obs.quantity.high * unit_factor)


def _cytoreduction(ctx: DoseContext, start: datetime) -> tuple[list[str], list[str]]:
    """(evidence, near misses): hydroxyurea / leukapheresis starting in [start − N days, start).

    Exact instants; it counts only when every reading of both times fits (a coarse or
    ambiguous time is judged at its reading outside the window).
    """
    params = ctx.protocol.wbc.cytoreduction
    start_latest = ctx.dose.timing.start_latest or start
    earliest = start_latest - exact_duration(params.within_days_before, SECONDS_PER_DAY)
    procedure = DrugMatch(local_codes=params.procedure.codes, text_contains=params.procedure.text_contains)
    evidence: list[str] = []
    misses: list[str] = []

    def consider(kind: str, label: str, at: datetime | None, at_latest: datetime | None = None) -> None:
        if at is None:
            misses.append(f"{kind} {label} has no {'observation time (OBX-14)' if 'record' in kind else 'start time'}")
        elif earliest <= at and (at_latest or at) < start:
            evidence.append(f"{kind} {label} starting {when(at, ctx.tz)}")
        elif (at_latest or at) >= start:
            misses.append(f"{kind} {label} starts {when(at, ctx.tz)}, not before the GO start")
        else:
            misses.append(f"{kind} {label} started {when(at, ctx.tz)}, more than "
                          f"{num(params.within_days_before)} days before the GO start")

    def kind_of(drug: Coded) -> str:
        if is_protocol_drug(drug, ctx.protocol):
            return ""
        if is_hydroxyurea(drug, ctx.protocol):
            return "hydroxyurea order"
        if drug_matches(drug, procedure, ctx.protocol):
            return "leukapheresis order"
        return ""

    for order in ctx.message_orders:
        kind = kind_of(order.drug)
        if kind and order.index != ctx.dose.index and order.is_new:
            consider(kind, f"{order.placer_number or order.drug_label()} (this message)", order.timing.start,
                     order.timing.start_latest)
    for entry in ctx.history:
        kind = "" if entry.protocol_order else kind_of(entry.drug)
        if kind:
            consider(kind, f"{entry.placer_number or entry.drug.label()} (accepted, message {entry.control_id})",
                     entry.start)
    for obs in ctx.observations:
        if matches(obs, params.procedure):
            consider("leukapheresis record", repr(obs.code.label()), obs.observed_at, obs.observed_latest)
    return evidence, misses


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.wbc
    if ctx.start is None:
        return []  # go.schedule reports the missing start
    threshold = f"{num(params.threshold_10e9_per_l)} {UNIT}"
    limit = limit_text(params.max_age_hours, in_days=False)
    preferred, by_text, findings = _candidates(ctx)
    window = exact_duration(params.max_age_hours, SECONDS_PER_HOUR)
    start = ctx.start

    def recent(candidates: list[Observation]) -> LabChoice:
        return recent_result(candidates, start, window, what="WBC", limit=limit, tz=ctx.tz, in_days=False,
                             start_latest=ctx.dose.timing.start_latest)

    # The most recent blood WBC counts (the safe reading of "LOINC first": a newer text-matched count
    # is not hidden behind an older coded one); coded results win only at equal times.
    coded, texted = recent(preferred), recent(by_text)
    if coded.observation is not None and texted.observation is not None:
        newer_text = texted.observation.observed_at > coded.observation.observed_at  # type: ignore[operator]
        choice = texted if newer_text else coded
    else:
        choice = first_usable(coded, texted)
    obs = choice.observation
    if obs is None:
        findings.append(finding(RULE_ID, params.severity,
                                f"{choice.problem}; a blood WBC within {limit} before the GO start is required",
                                choice.location or ctx.dose.drug_location))
        return findings
    # Several results with the same, latest time: the worst one is judged (the safe reading).
    obs = max((o for o in preferred + by_text if o.observed_at == obs.observed_at),
              key=lambda o: _severity_key(o, ctx.protocol.units.wbc_10e9_per_l))
    assert obs.observed_at is not None
    dated = when(obs.observed_at, ctx.tz)
    if obs.quantity is None:
        findings.append(finding(RULE_ID, params.severity,
                                f"WBC value {obs.raw_value!r} (observed {dated}) is not a number", obs.location))
        return findings
    unit_factor = factor(obs.units, ctx.protocol.units.wbc_10e9_per_l)
    if unit_factor is None:
        findings.append(finding(RULE_ID, params.severity,
                                f"WBC unit {unit_label(obs.units)!r} (value {obs.raw_value}, observed {dated}) is not "
                                f"a known count unit: the count cannot be compared with {threshold}",
                                obs.location.model_copy(update={"field": 6})))
        return findings
    if obs.quantity.value < 0:
        findings.append(finding(RULE_ID, params.severity,
                                f"WBC value {obs.raw_value!r} (observed {dated}) is negative: not a valid count",
                                obs.location))
        return findings
    comparator = obs.quantity.comparator.strip()
    # A range is read at its upper end (a count that may be >= the threshold needs cytoreduction).
    wbc = obs.quantity.high * unit_factor
    seen = f"WBC {comparator}{num(obs.quantity.high)} {unit_label(obs.units)}"
    if obs.quantity.upper is not None:
        seen = f"WBC {num(obs.quantity.value)}-{num(obs.quantity.upper)} {unit_label(obs.units)} (upper end read)"
    if unit_factor != 1:
        seen += f" = {comparator}{num(wbc)} {UNIT}"
    seen += f" (observed {dated})"
    ctx.computed["wbc_10e9_per_l"] = str(wbc)
    ctx.computed["wbc_observed_at"] = obs.observed_at.isoformat()
    values = {"wbc_10e9_per_l": str(wbc), "wbc_observed_at": obs.observed_at.isoformat()}
    if comparator not in ("", "=", "<", "<=", ">", ">="):
        findings.append(finding(RULE_ID, params.severity,
                                f"{seen}: comparator {comparator!r} cannot be read against {threshold}", obs.location))
        return findings
    # A bound below the threshold only counts when the whole range is below it (the safe reading).
    if comparator == "<":
        below = wbc <= params.threshold_10e9_per_l
    elif comparator in ("", "=", "<="):
        below = wbc < params.threshold_10e9_per_l
    else:
        below = False
    if below:
        return findings
    evidence, misses = _cytoreduction(ctx, ctx.start)
    days = num(params.cytoreduction.within_days_before)
    if evidence:
        findings.append(warning(RULE_ID, f"{seen} is ≥ {threshold}; cytoreduction documented: {'; '.join(evidence)}. "
                                f"Confirm the WBC fell below {threshold} before the GO infusion", obs.location, **values))
        return findings
    note = f" ({'; '.join(misses)})" if misses else ""
    findings.append(finding(RULE_ID, params.severity,
                            f"{seen} is ≥ {threshold}: cytoreduction (hydroxyurea or leukapheresis) starting "
                            f"before the GO start, within {days} days, must be documented; none found{note}",
                            obs.location, **values))
    return findings


RULE = Rule(
    RULE_ID,
    check,
    (
        "wbc.threshold_10e9_per_l",
        "wbc.max_age_hours",
        "wbc.preferred_codes",
        "wbc.text_contains",
        "wbc.exclude_specimen_words",
        "wbc.cytoreduction.hydroxyurea",
        "wbc.cytoreduction.procedure",
        "wbc.cytoreduction.within_days_before",
        "units.wbc_10e9_per_l",
    ),
    __doc__ or "",
)
