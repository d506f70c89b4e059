"""go.premedication — each required premedication is ordered for the GO dose, at the right dose, route and time.

For every premedication in `premedication.required` (seed: acetaminophen,
diphenhydramine, methylprednisolone; equivalents listed in the protocol count
with dose × `potency_ratio`), the dose needs an order of that drug that
*belongs* to it: in this message, or an earlier accepted order in the course
history. A premed order belongs to the GO dose whose start (TQ1-7) is nearest to
its own, within `premedication.belongs_within_hours` before or after (inclusive);
one that starts after the GO start belongs to it and is an error. Premeds add
up: the totals of RXE-3 and of RXE-4 over a drug's belonging orders (message
and history, equivalents at their potency ratio; an order sent again counts
once) must meet the dose; and every belonging order must have

- a dose (RXE-3/RXE-5, units from `units.mass_mg`, by identifier first) within
  ± `premedication.dose_tolerance_percent` of the adult or pediatric rule
  (fixed mg, or mg/kg × the most recent weight OBX, capped at `max_mg`; the
  allowed range never goes above the cap, and no override accepts more);
- a route (RXR-1) in the premed's `routes`, by code first; a text mapped by
  `premedication.route_text` ("oral" → PO) only when the code is empty;
- a start between `window.min_minutes_before` and `window.max_minutes_before`
  minutes before the GO start (inclusive, between exact instants; a skipped,
  repeated or coarse time at its reading outside the window).

Orders marked as needed (TQ1-9 `PRN` or a TQ1-10 condition) are rescue orders:
neither required nor judged, and they belong to no dose.

Refused (acetaminophen given intravenously, and only 20 min before the 10:00 start)::

    ORC|NW|ORD1002||GRP501
    RXE||161^acetaminophen^RXNORM|650||mg^milligram^UCUM
    TQ1|1||||||20261201094000
    RXR|IV^Intravenous^HL70162

Accepted::

    ORC|NW|ORD1002||GRP501
    RXE||161^acetaminophen^RXNORM|650||mg^milligram^UCUM
    TQ1|1||||||20261201090000
    RXR|PO^Oral^HL70162
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from ..drugs import is_protocol_drug, premedication_for
from ..findings import Finding, finding
from ..history import HistoryEntry
from ..hl7time import gap_bounds, seconds_of
from ..model import Coded, Location, Order, OrderSet
from ..observations import percent_off, weight_kg
from ..protocol import Equivalent, Premedication, Protocol
from ..units import factor, unit_label
from .base import DoseContext, Rule
from .route import read_route

RULE_ID = "go.premedication"

# Only new orders (`Order.is_new`) are evidence: a cancellation (CA/DC) or an unknown control in
# the same message is no evidence that a premed is given.


# --- belonging ---------------------------------------------------------------------------------


_seconds = seconds_of


@dataclass(frozen=True)
class Start:
    """A start time as the earliest and latest instants it may name (validator/hl7time.py)."""

    earliest: datetime
    latest: datetime

    @classmethod
    def of(cls, at: datetime, latest: datetime | None = None) -> Start:
        return cls(at, latest or at)


def _closest_distance(a: Start, b: Start) -> Decimal:
    """The shortest distance, in seconds, between any instants the two starts may name (0 when they overlap)."""
    if a.latest < b.earliest:
        return _seconds(b.earliest - a.latest)
    if b.latest < a.earliest:
        return _seconds(a.earliest - b.latest)
    return Decimal(0)


def _nearest(start: Start, candidates: list[tuple[object, Start]], within_hours: Decimal) -> object | None:
    """The key of the GO start nearest to `start`, if within the window (inclusive).

    A premed that may fall inside a dose's window at any reading of the two times belongs to it
    (then it is judged, and refused with a refused dose: the less favourable reading).
    A tie (a premed exactly halfway between two GO starts) goes to the dose that starts
    after it: premedications are given before the dose they prepare. Then the first listed.
    """
    limit = within_hours * 3600
    best: tuple[Decimal, int, int] | None = None
    best_key: object | None = None
    for position, (key, go_start) in enumerate(candidates):
        if _closest_distance(start, go_start) > limit:
            continue
        distance = abs(_seconds(go_start.earliest - start.earliest))
        rank = (distance, 0 if go_start.earliest >= start.earliest else 1, position)
        if best is None or rank < best:
            best, best_key = rank, key
    return best_key


def _order_start(order: Order) -> Start:
    return Start.of(order.timing.start, order.timing.start_latest)  # type: ignore[arg-type]


def _is_premed_evidence(order: Order, protocol: Protocol) -> bool:
    return (
        order.is_new
        and order.timing.start is not None
        and not order.timing.as_needed  # a rescue order prepares no dose
        and not is_protocol_drug(order.drug, protocol)
        and premedication_for(order.drug, protocol) is not None
    )


def belonging_premedications(
    order_set: OrderSet, go_doses: list[Order], protocol: Protocol,
    protocol_of: Mapping[int, Protocol] | None = None,
) -> dict[int, int]:
    """Map premedication order index -> index of the GO dose it prepares.

    A premed order belongs to the nearest GO start whose protocol (`protocol_of[go index]`, else
    `protocol`) counts it as a premedication drug and whose belonging window contains it
    (docs/protocol.md: the order's protocol governs which premeds belong to it).
    GO doses without a start, and premeds without a start or marked as needed, take no part.
    """
    protocol_of = protocol_of or {}
    doses = [(go, protocol_of.get(go.index, protocol)) for go in go_doses if go.timing.start is not None]
    if not doses:
        return {}
    out: dict[int, int] = {}
    for order in order_set.orders:
        if order.timing.start is None:
            continue
        start = _order_start(order)
        evidence: dict[int, bool] = {}  # per protocol: whether it counts this order as a premed (once, not per dose)
        best: tuple[Decimal, int, int] | None = None
        for position, (go, dose_protocol) in enumerate(doses):
            counts = evidence.get(id(dose_protocol))
            if counts is None:
                counts = evidence[id(dose_protocol)] = _is_premed_evidence(order, dose_protocol)
            if not counts:
                continue
            go_start = _order_start(go)
            if _closest_distance(start, go_start) > dose_protocol.premedication.belongs_within_hours * 3600:
                continue
            rank = (abs(_seconds(go_start.earliest - start.earliest)),
                    0 if go_start.earliest >= start.earliest else 1, position)
            if best is None or rank < best:
                best, out[order.index] = rank, go.index
    return out


# --- values ------------------------------------------------------------------------------------


def _fmt(value: Decimal, places: str = "0.01") -> str:
    """A Decimal for display: rounded to `places`, without trailing zeros or exponent."""
    try:
        shown = value.quantize(Decimal(places)).normalize()
    except InvalidOperation:
        shown = value
    text = format(shown, "f")
    return "0" if text in ("-0", "") else text


@dataclass
class _Expected:
    """The allowed dose of one drug for this patient, in mg."""

    expected_mg: Decimal | None  # None: cannot be computed (no weight)
    low_mg: Decimal | None
    high_mg: Decimal | None
    description: str  # "15 mg/kg × 50 kg = 750 mg, capped at 650 mg"
    short: str  # "15 mg/kg max 650 mg (650 mg)", for a missing premed
    max_mg: Decimal | None = None  # the stated maximum, when it bounds the allowed range
    problem: str = ""  # why there is no expected dose


def _expected(ctx: DoseContext, premed: Premedication, equivalent: Equivalent | None) -> _Expected:
    params = ctx.protocol.premedication
    rule = premed.pediatric if ctx.pediatric else premed.adult
    ratio = equivalent.potency_ratio if equivalent is not None else Decimal(1)
    cap = rule.max_mg * ratio if rule.max_mg is not None else None
    group = "pediatric" if ctx.pediatric else "adult"
    if rule.mg_per_kg is not None:
        # mg/kg wins over a fixed mg when a protocol file gives both (the weight-based rule is the specific one).
        weight = weight_kg(ctx.observations, ctx.protocol, ctx.start)
        per_kg = rule.mg_per_kg * ratio
        short = f"{_fmt(per_kg)} mg/kg" + (f" max {_fmt(cap)} mg" if cap is not None else "")
        if weight.value is None:
            return _Expected(None, None, None, short, short, problem=
                             f"{weight.problem}: the {group} dose {_fmt(per_kg)} mg/kg cannot be computed")
        uncapped = per_kg * weight.value
        description = f"{_fmt(per_kg)} mg/kg × {_fmt(weight.value)} kg = {_fmt(uncapped)} mg"
    elif rule.mg is not None:
        uncapped = rule.mg * ratio
        description = short = f"{_fmt(uncapped)} mg"
    else:
        return _Expected(None, None, None, "(no dose)", "(no dose)",
                         problem=f"the protocol gives no {group} dose for {premed.name}")
    expected = uncapped
    if cap is not None and uncapped > cap:
        expected = cap
        description += f", capped at {_fmt(cap)} mg"
    if equivalent is not None:
        description += f" ({equivalent.name} = {premed.name} × {_fmt(ratio, '0.0001')})"
    tolerance = params.dose_tolerance_percent / Decimal(100)
    low = expected * (1 - tolerance)
    high = expected * (1 + tolerance)
    if cap is not None and high > cap:
        high = cap  # the tolerance never allows more than the stated maximum
    if rule.mg_per_kg is not None:
        short += f" ({_fmt(expected)} mg)"
    return _Expected(expected, low, high, description, short, max_mg=cap if high == cap else None)


def _route_code(route: Coded | None, routes: list[str], protocol: Protocol) -> tuple[str | None, str]:
    """(the allowed route code this RXR-1 stands for, or None; why it is unreadable) — by code first."""
    if route is None:
        return None, ""
    code, problem = read_route(route, protocol, protocol.premedication.route_text)
    allowed = {r.upper(): r for r in routes}
    return (allowed.get(code) if code else None), problem


def _window_text(premed: Premedication) -> str:
    w = premed.window
    return f"{_fmt(w.min_minutes_before)}–{_fmt(w.max_minutes_before)} min before the GO start"


# --- judging one premed order ------------------------------------------------------------------


@dataclass
class _Given:
    """One premed administration judged for this dose: a message order or a history entry."""

    label: str
    drug_name: str
    equivalent: Equivalent | None
    start: datetime
    start_latest: datetime | None
    amounts: list[tuple[str, Decimal | None, str]]  # (field, amount, raw) — RXE-3 and a differing RXE-4
    units: Coded
    route: Coded | None
    dose_location: Location | None
    route_location: Location | None
    window_location: Location | None


def _from_order(order: Order, drug_name: str, equivalent: Equivalent | None) -> _Given:
    amounts: list[tuple[str, Decimal | None, str]] = [("dose", order.amount, order.amount_raw)]
    if order.amount_max is not None and order.amount_max != order.amount:
        amounts.append(("maximum dose (RXE-4)", order.amount_max, str(order.amount_max)))
    placer = order.placer_number or f"order {order.index + 1}"
    return _Given(
        label=f"{drug_name} {placer}", drug_name=drug_name, equivalent=equivalent,
        start=order.timing.start,  # type: ignore[arg-type]
        start_latest=order.timing.start_latest,
        amounts=amounts, units=order.amount_units, route=order.route,
        dose_location=order.amount_location, route_location=order.route_location,
        window_location=order.timing.start_location,
    )


def _from_history(entry: HistoryEntry, drug_name: str, equivalent: Equivalent | None, ctx: DoseContext) -> _Given:
    # The values of an earlier message are not in this one: findings point at the GO order
    # (RXE-2 for dose and route, TQ1-7 for the window), the values this message brings.
    placer = entry.placer_number or "(no ORC-2)"
    return _Given(
        label=f"{drug_name} {placer} (accepted earlier, message {entry.control_id})",
        drug_name=drug_name, equivalent=equivalent, start=entry.start,  # type: ignore[arg-type]
        start_latest=None,
        amounts=[("dose", entry.amount, str(entry.amount) if entry.amount is not None else "")] + (
            [("maximum dose (RXE-4)", entry.amount_max, str(entry.amount_max))]
            if entry.amount_max is not None and entry.amount_max != entry.amount else []),
        units=Coded(code=entry.amount_units),
        route=Coded(code=entry.route, text=entry.route) if entry.route else None,
        dose_location=ctx.dose.drug_location, route_location=ctx.dose.drug_location,
        window_location=ctx.dose.timing.start_location,
    )


def _judge(ctx: DoseContext, premed: Premedication, given: _Given, audit: dict, *, dose: bool = True) -> list[Finding]:
    """Dose (unless the orders are totalled: `_judge_total`), route and window of one order."""
    params = ctx.protocol.premedication
    severity = params.severity
    out: list[Finding] = []

    # Dose.
    if dose:
        expected = _expected(ctx, premed, given.equivalent)
        audit["expected_mg"] = _fmt(expected.expected_mg, "0.0001") if expected.expected_mg is not None else None
        if expected.expected_mg is None or expected.low_mg is None or expected.high_mg is None:
            out.append(finding(RULE_ID, severity, f"{given.label}: {expected.problem}", given.dose_location))
        else:
            allowed = f"{_fmt(expected.low_mg)}–{_fmt(expected.high_mg)} mg"
            unit_factor = factor(given.units, ctx.protocol.units.mass_mg)
            for what, amount, raw in given.amounts:
                if amount is None:
                    out.append(finding(RULE_ID, severity,
                                       f"{given.label}: {what} {raw!r} is not a number; expected {expected.description} "
                                       f"(allowed {allowed})", given.dose_location))
                    continue
                if unit_factor is None:
                    out.append(finding(RULE_ID, severity,
                                       f"{given.label}: dose unit {unit_label(given.units)!r} is not a known mass unit; "
                                       f"expected {expected.description} (allowed {allowed})", given.dose_location))
                    break
                ordered_mg = amount * unit_factor
                audit.setdefault("ordered_mg", _fmt(ordered_mg, "0.0001"))
                if not (expected.low_mg <= ordered_mg <= expected.high_mg):
                    off = percent_off(ordered_mg, expected.expected_mg) if expected.expected_mg else Decimal(0)
                    shown = f"{_fmt(amount, '0.0001')} {unit_label(given.units)}"
                    if unit_factor != 1:
                        shown += f" = {_fmt(ordered_mg)} mg"
                    out.append(finding(
                        RULE_ID, severity,
                        f"{given.label}: {what} {shown} is outside the allowed {allowed}: expected "
                        f"{expected.description} ({'+' if off > 0 else ''}{_fmt(off, '0.1')}%, tolerance "
                        f"{_fmt(params.dose_tolerance_percent)}%"
                        + (f", never above {_fmt(expected.max_mg)} mg)" if expected.max_mg is not None else ")"),
                        given.dose_location,
                        ordered_mg=str(ordered_mg), expected_mg=str(expected.expected_mg),
                        low_mg=str(expected.low_mg), high_mg=str(expected.high_mg),
                        # never overridden (docs/protocol.md, "Overrides with a reason")
                        above_maximum=expected.max_mg is not None and ordered_mg > expected.max_mg,
                    ))

    # Route.
    routes = "/".join(premed.routes)
    if given.route is None or not (given.route.code or given.route.text):
        out.append(finding(RULE_ID, severity, f"{given.label}: no route (RXR-1); expected {routes}",
                           given.route_location or given.dose_location))
    elif (read := _route_code(given.route, premed.routes, ctx.protocol))[0] is None:
        why = read[1] or f"route {given.route.label()!r} is not allowed"
        out.append(finding(RULE_ID, severity, f"{given.label}: {why}; expected {routes}", given.route_location))

    # Window: minutes before the GO start, exact to the second, inclusive.
    if ctx.start is None:
        return out
    # Exact instants; a skipped, repeated or coarse time is judged at its reading outside the window.
    shortest, longest = gap_bounds(given.start, ctx.start, earlier_latest=given.start_latest,
                                   later_latest=ctx.dose.timing.start_latest)
    w = premed.window
    minutes_before = _seconds(shortest) / Decimal(60)
    if minutes_before >= w.min_minutes_before:
        minutes_before = _seconds(longest) / Decimal(60)
    audit["minutes_before"] = _fmt(minutes_before, "0.0001")
    if minutes_before < 0:
        out.append(finding(RULE_ID, severity,
                           f"{given.label} starts {_fmt(-minutes_before)} min after the GO start "
                           f"({ctx.start:%Y-%m-%d %H:%M:%S}); a premedication must start before it "
                           f"({_window_text(premed)})",
                           given.window_location, minutes_before=str(minutes_before)))
    elif not (w.min_minutes_before <= minutes_before <= w.max_minutes_before):
        out.append(finding(RULE_ID, severity,
                           f"{given.label} starts {_fmt(minutes_before)} min before the GO start "
                           f"({ctx.start:%Y-%m-%d %H:%M:%S}); expected {_window_text(premed)}",
                           given.window_location, minutes_before=str(minutes_before)))
    return out


def _judge_total(ctx: DoseContext, premed: Premedication, given: list[_Given], audit: dict) -> list[Finding]:
    """Premeds add up (docs/protocol.md, "Premedication"): the totals of RXE-3 and of RXE-4 over every
    order of the drug for this dose — message and course history, equivalents at their potency ratio —
    must be within the tolerance and never above the maximum."""
    params = ctx.protocol.premedication
    severity = params.severity
    expected = _expected(ctx, premed, None)
    labels = ", ".join(g.label for g in given)
    if expected.expected_mg is None or expected.low_mg is None or expected.high_mg is None:
        return [finding(RULE_ID, severity, f"{premed.name} ({labels}): {expected.problem}", given[0].dose_location)]
    out: list[Finding] = []
    totals = {"dose": Decimal(0), "maximum dose (RXE-4)": Decimal(0)}
    has_maximum = any(len(g.amounts) > 1 for g in given)
    for item in given:
        unit_factor = factor(item.units, ctx.protocol.units.mass_mg)
        ratio = item.equivalent.potency_ratio if item.equivalent is not None else Decimal(1)
        amounts = dict((what, amount) for what, amount, _raw in item.amounts)
        dose_amount = amounts.get("dose")
        if dose_amount is None or unit_factor is None:
            why = ("is not a number" if dose_amount is None
                   else f"has the unit {unit_label(item.units)!r}, not a known mass unit")
            out.append(finding(RULE_ID, severity, f"{item.label}: the dose {why}; the {premed.name} total for "
                               "this GO dose cannot be verified", item.dose_location))
            return out
        totals["dose"] += dose_amount * unit_factor / ratio
        maximum = amounts.get("maximum dose (RXE-4)", dose_amount)
        totals["maximum dose (RXE-4)"] += (maximum if maximum is not None else dose_amount) * unit_factor / ratio
    allowed = f"{_fmt(expected.low_mg)}–{_fmt(expected.high_mg)} mg"
    audit["expected_mg"] = _fmt(expected.expected_mg, "0.0001")
    audit["total_mg"] = _fmt(totals["dose"], "0.0001")
    for what, total in totals.items():
        if what != "dose" and not has_maximum:
            continue
        if not (expected.low_mg <= total <= expected.high_mg):
            off = percent_off(total, expected.expected_mg) if expected.expected_mg else Decimal(0)
            shown = "total" if what == "dose" else "total of the maxima (RXE-4)"
            out.append(finding(
                RULE_ID, severity,
                f"{premed.name} {shown} {_fmt(total)} mg over {len(given)} orders ({labels}) is outside the "
                f"allowed {allowed}: expected {expected.description} ({'+' if off > 0 else ''}{_fmt(off, '0.1')}%, "
                f"tolerance {_fmt(params.dose_tolerance_percent)}%"
                + (f", never above {_fmt(expected.max_mg)} mg)" if expected.max_mg is not None else ")"),
                given[0].dose_location, total_mg=str(total), expected_mg=str(expected.expected_mg),
                above_maximum=expected.max_mg is not None and total > expected.max_mg,
            ))
    return out


# --- the rule ----------------------------------------------------------------------------------


def _missing_text(ctx: DoseContext, premed: Premedication) -> str:
    dose = _expected(ctx, premed, None).short
    text = f"{premed.name} {dose} {'/'.join(premed.routes)} {_window_text(premed)} is not ordered"
    if premed.equivalents:
        text += f" (nor an equivalent: {', '.join(e.name for e in premed.equivalents)})"
    return text


def check(ctx: DoseContext) -> list[Finding]:
    if ctx.start is None:
        return []  # go.schedule reports the missing start; no window can be judged
    protocol = ctx.protocol
    params = protocol.premedication
    orders = ctx.message_orders

    # Belonging over every GO order of the message with a start, so the nearest dose wins; each
    # dose's own protocol says which drugs are its premeds and how far its window reaches.
    message_go = [o for o in orders if o.is_new
                  and (o.index in ctx.dose_protocols or is_protocol_drug(o.drug, protocol))]
    belongs = belonging_premedications(ctx.order_set, message_go, protocol,
                                       {**ctx.dose_protocols, ctx.dose.index: protocol})
    mine = [o for o in orders if belongs.get(o.index) == ctx.dose.index]

    # History premeds: the nearest GO start among this message's and the history's GO doses.
    go_starts: list[tuple[object, Start]] = [
        (("message", o.index), _order_start(o)) for o in message_go if o.timing.start is not None
    ]
    go_starts += [(("history", i), Start.of(h.start)) for i, h in enumerate(ctx.history)
                  if h.protocol_order and h.start]
    resent = {(o.placer_number, o.placer_namespace) for o in mine if o.placer_number}
    earlier: list[HistoryEntry] = [
        h for h in ctx.history
        if not h.protocol_order and not h.as_needed and h.start is not None
        and premedication_for(h.drug, protocol) is not None
        and _nearest(Start.of(h.start), go_starts, params.belongs_within_hours) == ("message", ctx.dose.index)
        # the same order sent again in this message (same sender and ORC-2) counts once, as sent now
        and not (h.placer_number and h.sender == ctx.order_set.sender
                 and (h.placer_number, h.placer_namespace) in resent)
    ]

    findings: list[Finding] = []
    computed: dict[str, list[dict]] = {}
    for premed in params.required:
        given: list[_Given] = []
        for order in mine:
            match = premedication_for(order.drug, protocol)
            if match is not None and match[0].name == premed.name:
                given.append(_from_order(order, match[1], match[2]))  # type: ignore[arg-type]
        for entry in earlier:
            match = premedication_for(entry.drug, protocol)
            if match is not None and match[0].name == premed.name:
                given.append(_from_history(entry, match[1], match[2], ctx))  # type: ignore[arg-type]
        if not given:
            text = _missing_text(ctx, premed)
            untimed = [
                o for o in orders
                if o.is_new and o.timing.start is None and not o.timing.as_needed
                and (m := premedication_for(o.drug, protocol)) is not None and m[0].name == premed.name
            ]
            if untimed:
                placers = ", ".join(o.placer_number or f"order {o.index + 1}" for o in untimed)
                text += f" ({placers} has no start time, TQ1-7, so it cannot be shown to prepare this dose)"
            findings.append(finding(RULE_ID, params.severity, text, ctx.dose.drug_location, premedication=premed.name))
            computed[premed.name] = []
            continue
        audits: list[dict] = []
        for item in given:
            audit: dict = {"order": item.label, "drug": item.drug_name}
            findings.extend(_judge(ctx, premed, item, audit, dose=len(given) == 1))
            audits.append(audit)
        if len(given) > 1:
            total_audit: dict = {"order": "total", "drug": premed.name}
            findings.extend(_judge_total(ctx, premed, given, total_audit))
            audits.append(total_audit)
        computed[premed.name] = audits
    ctx.computed["premedication"] = computed
    return findings


RULE = Rule(
    RULE_ID,
    check,
    (
        "premedication.required",
        "premedication.dose_tolerance_percent",
        "premedication.belongs_within_hours",
        "premedication.route_text",
        "premedication.severity",
        "eligibility.pediatric_below_years",
        "observations.weight",
        "units.mass_mg",
    ),
    __doc__ or "",
)
