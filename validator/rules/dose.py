"""go.dose — the ordered GO dose is `dose.mg_per_m2` × BSA within `dose.tolerance_percent`.

The dose is RXE-3 with units RXE-5 (RXO-2 / RXO-4 when the order has no RXE).
Mass units are converted to mg with `units.mass_mg` (µg, g…); a dose ordered
per m² (`units.per_m2_dose`, e.g. `mg/m2`) is compared with `dose.mg_per_m2`
directly, but a BSA is still required to state the mg. An RXE-4 maximum that
differs from RXE-3 must pass the same check. With `dose.max_mg_per_dose` set
(the 2017 label: one 4.5 mg vial) the expected dose is min(mg/m² × BSA, cap)
and any dose above the cap is refused.

BSA (docs/protocol.md, "How values are chosen"): Mosteller √(height cm × weight
kg / 3600), unrounded, from the most recent height and weight at or before the
dose start (an undated one counts as current but loses to a dated one). A BSA
OBX (8277-6) is then only cross-checked: more than `dose.bsa_crosscheck_percent`
away is an error at that OBX. With only a BSA OBX, it is used. With neither,
the dose cannot be verified. Deviations are quantised to 1e-6 and the
tolerance is inclusive (exactly 5 % over is accepted, 5.1 % is refused);
an under-dose beyond the tolerance is refused too.

Refused (165 cm, 62 kg: 9 mg/m² × 1.69 m² = 15.2 mg; 18.5 mg is +22 %)::

    RXE||1294580^gemtuzumab ozogamicin^RXNORM|18.5||mg^milligram^UCUM
    OBX|1|NM|8302-2^Body height^LN||165|cm^centimeter^UCUM|||||F|||20261130090000
    OBX|2|NM|29463-7^Body weight^LN||62|kg^kilogram^UCUM|||||F|||20261130090000

Accepted::

    RXE||1294580^gemtuzumab ozogamicin^RXNORM|15.2||mg^milligram^UCUM
    OBX|1|NM|8302-2^Body height^LN||165|cm^centimeter^UCUM|||||F|||20261130090000
    OBX|2|NM|29463-7^Body weight^LN||62|kg^kilogram^UCUM|||||F|||20261130090000
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from ..findings import Finding, finding
from ..model import Coded, Location
from ..observations import Measure, bsa_observed_m2, height_cm, mosteller_m2, percent_off, weight_kg
from ..protocol import Dose
from ..units import factor, is_one_of, unit_label
from .base import DoseContext, Rule

RULE_ID = "go.dose"


# --- display (messages only; arithmetic stays unrounded) ---------------------------------------

def _plain(value: Decimal) -> str:
    """A protocol or computed Decimal without exponent or trailing zeros: 9, 16.4, 100."""
    return format(value.normalize(), "f")


def _sent(value: Decimal) -> str:
    """A value as sent (normalize() would round it to the context precision)."""
    return format(value, "f")


def _round(value: Decimal, places: str) -> Decimal:
    """Rounded for display; an absurdly large value (too many digits to quantise) is kept as is."""
    try:
        return value.quantize(Decimal(places), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return value


def _fixed(value: Decimal, places: str) -> str:
    return format(_round(value, places), "f")


def _deviation(value: Decimal, expected: Decimal) -> Decimal:
    """`percent_off`, which cannot quantise a deviation of more than ~10^21 %: then unquantised."""
    try:
        return percent_off(value, expected)
    except InvalidOperation:
        return (value - expected) / expected * 100


def _percent(deviation: Decimal, tolerance: Decimal) -> str:
    """+13%, +5.1%, -4.9%; more digits when rounding would hide that a value is past the tolerance."""
    places = ["1", "0.1", "0.01", "0.001", "0.0001", "0.00001", "0.000001"][0 if abs(deviation) >= 10 else 1:]
    for place in places:
        shown = _round(deviation, place)
        if (abs(deviation) > tolerance) == (abs(shown) > tolerance):
            break
    sign = "+" if shown > 0 else ""
    return f"{sign}{_plain(shown)}%"


# --- BSA ---------------------------------------------------------------------------------------

@dataclass
class Bsa:
    m2: Decimal | None
    source: str = ""  # "mosteller" or "observation"
    height_cm: Decimal | None = None
    weight_kg: Decimal | None = None


def _measure_problem(measure: Measure, what: str) -> str:
    """Why a present observation cannot be used as an exact positive value ("" when it can)."""
    if measure.observation is None:
        return ""
    if measure.problem:
        return measure.problem
    quantity = measure.observation.quantity
    if quantity is not None and quantity.comparator not in ("", "="):
        # A bound (SN `>^180`) is not a measurement: the safe reading is that it cannot be used.
        return f"{what} {quantity.comparator}{_sent(quantity.value)} is a bound, not a measured value"
    if measure.value is None or measure.value <= 0:
        return f"{what} {measure.observation.raw_value!r} is not a positive value"
    return ""


def _obx_location(measure: Measure) -> Location | None:
    return measure.observation.location if measure.observation else None


def body_surface(ctx: DoseContext, cannot_verify: str, where: Location | None) -> tuple[Bsa, list[Finding]]:
    """The BSA for this dose, with the findings of choosing it (docs/protocol.md, BSA)."""
    params = ctx.protocol.dose
    severity = params.severity
    obs, protocol, at = ctx.observations, ctx.protocol, ctx.start
    height = height_cm(obs, protocol, at)
    weight = weight_kg(obs, protocol, at)
    sent_bsa = bsa_observed_m2(obs, protocol, at)
    problems = [(m, _measure_problem(m, what)) for m, what in ((height, "height"), (weight, "weight"))]
    bad = [(m, p) for m, p in problems if p]
    if bad:
        # A height or weight that is present but unusable is not replaced by a sent BSA: that BSA
        # could then not be cross-checked (safe reading of "only a BSA OBX").
        return Bsa(None), [
            finding(RULE_ID, severity, f"{p}: BSA cannot be computed; {cannot_verify}", _obx_location(m) or where)
            for m, p in bad
        ]
    if height.value is not None and weight.value is not None:
        bsa = Bsa(mosteller_m2(height.value, weight.value), "mosteller", height.value, weight.value)
        findings: list[Finding] = []
        if sent_bsa.observation is not None:
            findings += _cross_check(bsa.m2, sent_bsa, params)  # type: ignore[arg-type]
        return bsa, findings
    if sent_bsa.observation is not None:
        problem = _measure_problem(sent_bsa, "BSA")
        if problem:
            return Bsa(None), [finding(RULE_ID, severity, f"{problem}; {cannot_verify}", _obx_location(sent_bsa))]
        return Bsa(sent_bsa.value, "observation"), []
    missing = " and ".join(what for m, what in ((height, "height"), (weight, "weight")) if m.observation is None)
    codes = "/".join(protocol.observations.bsa.codes) or "BSA"
    return Bsa(None), [finding(
        RULE_ID, severity,
        f"no {missing} observation at or before the dose start and no BSA observation ({codes}): "
        f"BSA cannot be computed; {cannot_verify}",
        where,
    )]


def _cross_check(computed_m2: Decimal, sent: Measure, params: Dose) -> list[Finding]:
    problem = _measure_problem(sent, "BSA")
    if problem:
        # A sent BSA that cannot be read cannot be cross-checked: refused (safe reading).
        return [finding(RULE_ID, params.severity, f"{problem}; it cannot be cross-checked against the "
                        f"computed {_fixed(computed_m2, '0.01')} m² (Mosteller)", _obx_location(sent))]
    off = _deviation(sent.value, computed_m2)  # type: ignore[arg-type]
    if abs(off) > params.bsa_crosscheck_percent:
        return [finding(
            RULE_ID, params.severity,
            f"sent BSA {_sent(sent.value)} m² differs from the computed {_fixed(computed_m2, '0.01')} m² "  # type: ignore[arg-type]
            f"(Mosteller from height and weight) by {_percent(off, params.bsa_crosscheck_percent)} "
            f"(limit {_plain(params.bsa_crosscheck_percent)}%)",
            _obx_location(sent), bsa_sent_m2=str(sent.value), bsa_m2=str(computed_m2), bsa_deviation_percent=str(off),
        )]
    return []


# --- the dose ------------------------------------------------------------------------------------

@dataclass
class Judged:
    dose_mg: Decimal | None
    expected_mg: Decimal | None
    deviation: Decimal | None
    findings: list[Finding]


def _unit_kind(ctx: DoseContext, units: Coded) -> tuple[bool, Decimal | None]:
    """(per m², mg factor): the identifier of RXE-5 decides, else its text (docs/protocol.md, Units).

    `mg^mg/m2` is mg: a text must not turn a mass dose into a per-m² one (or the reverse).
    """
    # Only the identifier counts when there is one: `mg/kg^mg` is an unknown unit, never mg.
    candidate = units.code if units.code.strip() else units.text
    if candidate.strip():
        one = Coded(code=candidate)
        if is_one_of(one, ctx.protocol.units.per_m2_dose):
            return True, None
        mass = factor(one, ctx.protocol.units.mass_mg)
        if mass is not None:
            return False, mass
    return False, None


def _unit_known(ctx: DoseContext, units: Coded) -> bool:
    per_m2, mass = _unit_kind(ctx, units)
    return per_m2 or mass is not None


def _judge_amount(
    label: str, amount: Decimal, units: Coded, where: Location | None, bsa: Decimal | None, ctx: DoseContext
) -> Judged:
    """One ordered amount (RXE-3, or the RXE-4 maximum) against the protocol dose."""
    params = ctx.protocol.dose
    severity, tolerance, cap = params.severity, params.tolerance_percent, params.max_mg_per_dose
    unit = unit_label(units)
    per_m2, mass_factor = _unit_kind(ctx, units)
    per_m2_text = f"{_plain(params.mg_per_m2)} mg/m²"
    if not _unit_known(ctx, units):
        return Judged(None, None, None, [finding(
            RULE_ID, severity,
            f"{label} unit {unit!r} is not known (expected a mass unit such as mg, or mg/m2); "
            f"the dose cannot be verified against {per_m2_text}",
            where.model_copy(update={"field": 5 if where.segment == "RXE" else 4}) if where else None,
        )])
    seen = f"{label} {_sent(amount)} {unit}"
    if bsa is None:
        if per_m2:
            # Still compare mg/m² with the protocol, so that every problem is reported at once.
            deviation = _deviation(amount, params.mg_per_m2)
            if abs(deviation) > tolerance:
                verb = "exceeds" if deviation > 0 else "is below"
                return Judged(None, None, deviation, [finding(
                    RULE_ID, severity,
                    f"{seen} {verb} {per_m2_text} ({_percent(deviation, tolerance)}, tolerance {_plain(tolerance)}%)",
                    where, deviation_percent=str(deviation),
                )])
        return Judged(None, None, None, [])

    full_mg = params.mg_per_m2 * bsa
    capped = cap is not None and full_mg > cap
    expected_mg = cap if capped else full_mg
    assert expected_mg is not None
    bsa_text = f"{_fixed(bsa, '0.01')} m²"
    formula = f"{per_m2_text} × {bsa_text} = {_fixed(full_mg, '0.1')} mg"
    if capped:
        formula += f", capped at {_plain(cap)} mg per dose"  # type: ignore[arg-type]
    if per_m2:
        dose_mg = amount * bsa
        seen += f" ({_fixed(dose_mg, '0.1')} mg at {bsa_text})"
        # mg/m² is compared with the protocol's mg/m² directly, unless the cap sets the dose.
        deviation = _deviation(dose_mg, expected_mg) if capped else _deviation(amount, params.mg_per_m2)
    else:
        dose_mg = amount * mass_factor  # type: ignore[operator]
        if mass_factor != 1:
            seen += f" ({_sent(dose_mg)} mg)"
        deviation = _deviation(dose_mg, expected_mg)
    values = dict(dose_mg=str(dose_mg), expected_dose_mg=str(expected_mg), bsa_m2=str(bsa),
                  deviation_percent=str(deviation))
    findings: list[Finding] = []
    if cap is not None and dose_mg > cap:
        findings.append(finding(
            RULE_ID, severity,
            f"{seen} exceeds the protocol maximum of {_plain(cap)} mg per dose ({formula})", where, **values,
        ))
    elif abs(deviation) > tolerance:
        verb = "exceeds" if deviation > 0 else "is below"
        findings.append(finding(
            RULE_ID, severity,
            f"{seen} {verb} {formula} ({_percent(deviation, tolerance)}, tolerance {_plain(tolerance)}%)",
            where, **values,
        ))
    return Judged(dose_mg, expected_mg, deviation, findings)


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.dose
    order = ctx.dose
    where = order.amount_location or Location(segment="RXE", occurrence=1, field=3)
    field = where.short()
    findings: list[Finding] = []
    if order.amount is None:
        seen = f"dose {order.amount_raw!r} ({field}) is not a number" if order.amount_raw else f"no dose amount ({field})"
        findings.append(finding(RULE_ID, params.severity,
                                f"{seen}: expected {_plain(params.mg_per_m2)} mg/m² × BSA", where))
        cannot_verify = "the dose cannot be verified"
    else:
        cannot_verify = (f"the dose of {_sent(order.amount)} {unit_label(order.amount_units)} cannot be verified "
                         f"against {_plain(params.mg_per_m2)} mg/m²")

    bsa, bsa_findings = body_surface(ctx, cannot_verify, where)
    findings += bsa_findings
    if bsa.m2 is not None:
        ctx.computed["bsa_m2"] = str(bsa.m2)
        ctx.computed["bsa_source"] = bsa.source
        if bsa.height_cm is not None:
            ctx.computed["height_cm"] = str(bsa.height_cm)
            ctx.computed["weight_kg"] = str(bsa.weight_kg)
    if order.amount is None:
        return findings

    judged = _judge_amount("dose", order.amount, order.amount_units, where, bsa.m2, ctx)
    findings += judged.findings
    if judged.expected_mg is not None:
        ctx.computed["expected_dose_mg"] = str(judged.expected_mg)
    if judged.dose_mg is not None:
        ctx.computed["dose_mg"] = str(judged.dose_mg)
    if judged.deviation is not None:
        ctx.computed["dose_deviation_percent"] = str(judged.deviation)

    if order.amount_max is None and order.amount_max_raw.strip():
        # An RXE-4 maximum that is sent but is not a number cannot be shown to pass (safe reading: refuse).
        max_where = where.model_copy(update={"field": where.field + 1})
        findings.append(finding(RULE_ID, params.severity,
                                f"maximum dose {order.amount_max_raw!r} ({max_where.short()}) is not a number; "
                                f"expected {_plain(params.mg_per_m2)} mg/m² × BSA", max_where))
    if order.amount_max is not None and order.amount_max != order.amount and _unit_known(ctx, order.amount_units):
        # RXE-4 (RXO-3): the order allows up to this amount, so it must pass as well.
        max_where = where.model_copy(update={"field": where.field + 1})
        judged_max = _judge_amount(f"maximum dose ({max_where.short()})", order.amount_max, order.amount_units,
                                   max_where, bsa.m2, ctx)
        findings += judged_max.findings
        if judged_max.dose_mg is not None:
            ctx.computed["dose_max_mg"] = str(judged_max.dose_mg)
    return findings


RULE = Rule(
    RULE_ID,
    check,
    (
        "dose.mg_per_m2", "dose.tolerance_percent", "dose.max_mg_per_dose", "dose.bsa_crosscheck_percent",
        "dose.severity", "observations.height", "observations.weight", "observations.bsa",
        "units.mass_mg", "units.per_m2_dose", "units.height_cm", "units.weight_kg", "units.bsa_m2",
    ),
    __doc__ or "",
)
