"""go.infusion — GO is infused over `infusion.minutes` (seed: 4 hours) ± `infusion.tolerance_minutes`.

Every available source of the duration is computed and judged (bounds inclusive):

- the service duration TQ1-6 (`240^min`, `4^h`; in v2.3/2.4 the TQ duration `M240`,
  `H4`), converted with `units.duration_seconds`; an unknown unit is refused;
- the planned end minus the planned start, TQ1-8 − TQ1-7;
- a rate RXE-23 in `infusion.rate_units` (mL/h) with a known volume: the RXC
  component amounts in `infusion.volume_units` (mL), else the give amount when
  RXE-5 is mL; minutes = volume / rate × 60. A rate in other units, or without a
  known volume, is not a source (an `info` says so). In an admixture (GO as RXC
  components of a base solution) RXE-3 in mL is the bag's volume and gives a
  second rate source beside the RXC volumes.

Two sources more than `infusion.max_source_disagreement_minutes` apart are an
error (the order is ambiguous even when each is inside the tolerance); an order
with no source at all is refused.

Refused (2 hours, the current label, not this protocol's 4)::

    TQ1|1|||||120^min|20261201100000|20261201120000

Accepted::

    TQ1|1|||||240^min|20261201100000|20261201140000
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from ..findings import Finding, finding, info
from ..hl7time import gap_bounds, seconds_of
from ..model import Location
from ..units import factor, is_one_of, unit_label
from .base import DoseContext, Rule

RULE_ID = "go.infusion"

SECONDS_PER_MINUTE = Decimal(60)  # unit arithmetic, not a protocol value
MINUTES_PER_HOUR = Decimal(60)


@dataclass
class Source:
    key: str  # stable name in ctx.computed["infusion_minutes"]
    label: str  # how the message names it, with its HL7 fields
    minutes: Decimal
    location: Location | None


_seconds = seconds_of


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _minutes(value: Decimal, low: Decimal | None = None, high: Decimal | None = None) -> str:
    """Minutes for display (2 decimals at most), unrounded when rounding would hide which side of
    [low, high] the value is on."""
    try:
        shown = value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return _plain(value)
    if low is not None and high is not None and (low <= shown <= high) != (low <= value <= high):
        shown = value
    return _plain(shown)


def _default_location(field: int) -> Location:
    return Location(segment="TQ1", occurrence=1, field=field)


def sources(ctx: DoseContext) -> tuple[list[Source], list[Finding]]:
    """Every duration source the order gives, with findings about the ones that cannot be used."""
    params = ctx.protocol.infusion
    order = ctx.dose
    timing = order.timing
    found: list[Source] = []
    findings: list[Finding] = []

    duration = timing.service_duration
    if duration is not None:
        where = timing.duration_location or _default_location(6)
        seconds_per_unit = factor(duration.unit, ctx.protocol.units.duration_seconds)
        if seconds_per_unit is None:
            findings.append(finding(
                RULE_ID, params.severity,
                f"infusion duration {_plain(duration.value)} {unit_label(duration.unit)!r} ({where.short()}): "
                f"unit {unit_label(duration.unit)!r} is not known; expected {_plain(params.minutes)} min",
                where,
            ))
        else:
            found.append(Source(
                "service_duration", f"service duration {where.short()} = {_plain(duration.value)} "
                f"{unit_label(duration.unit)}", duration.value * seconds_per_unit / SECONDS_PER_MINUTE, where,
            ))

    elif timing.duration_location is not None:
        # TQ1-6 was sent but is not a quantity: it may contradict the other sources (safe reading: refuse)
        findings.append(finding(
            RULE_ID, params.severity,
            f"service duration ({timing.duration_location.short()}) cannot be read as a quantity such as "
            f"240^min; expected {_plain(params.minutes)} min", timing.duration_location,
        ))
    for sent, value, what in ((timing.start_location, timing.start, "planned start"),
                              (timing.end_location, timing.end, "planned end")):
        if sent is not None and value is None:  # sent but not a date/time: refused, never silently skipped
            findings.append(finding(
                RULE_ID, params.severity,
                f"{what} ({sent.short()}) cannot be read as a date/time; expected {_plain(params.minutes)} min "
                "between planned start and end", sent,
            ))

    if timing.start is not None and timing.end is not None:
        # Exact instants; a skipped, repeated or coarse time gives a shortest and a longest reading,
        # and the one further from the protocol's duration is judged (the less favourable to accepting).
        shortest, longest = gap_bounds(timing.start, timing.end, earlier_latest=timing.start_latest,
                                       later_latest=timing.end_latest)
        delta = max((shortest, longest), key=lambda d: abs(_seconds(d) / SECONDS_PER_MINUTE - params.minutes))
        seconds = _seconds(delta)
        start_where = timing.start_location or _default_location(7)
        end_where = timing.end_location or _default_location(8)
        if start_where.short() == end_where.short():  # v2.3/2.4: both in one TQ field (ORC-7, RXE-1)
            label = f"planned end − start ({end_where.short()})"
        else:
            label = f"planned end − start ({end_where.short()} − {start_where.short()})"
        found.append(Source("end_minus_start", label, seconds / SECONDS_PER_MINUTE, end_where))

    rate_where = order.rate_location or Location(segment="RXE", occurrence=1, field=23)
    if order.rate_amount is None and order.rate_location is not None:
        # A rate was sent but cannot be read: it may contradict the other sources (safe reading: refuse).
        findings.append(finding(
            RULE_ID, params.severity,
            f"infusion rate ({rate_where.short()}) is not a number; expected {_plain(params.minutes)} min",
            rate_where,
        ))
    elif order.rate_amount is not None:
        rate_unit = unit_label(order.rate_units)
        rate_text = f"rate {_plain(order.rate_amount)} {rate_unit}"
        if not is_one_of(order.rate_units, params.rate_units):
            findings.append(info(
                RULE_ID, f"{rate_text} ({rate_where.short()}) is not in {params.rate_units[0]}: "
                "not used as an infusion duration source", rate_where,
            ))
        else:
            volumes = [c.value for c in order.components if is_one_of(c.unit, params.volume_units)]
            volume: Decimal | None = None
            volume_text = ""
            if volumes:
                volume = sum(volumes, Decimal(0))
                volume_text = f"RXC volume {_plain(volume)} mL"
            elif order.amount is not None and is_one_of(order.amount_units, params.volume_units):
                volume = order.amount
                volume_text = f"give amount {_plain(volume)} {unit_label(order.amount_units)}"
            if volume is None:
                findings.append(info(
                    RULE_ID, f"{rate_text} ({rate_where.short()}): no volume in mL (RXC or the give amount), "
                    "so it gives no infusion duration", rate_where,
                ))
            elif order.rate_amount <= 0:
                findings.append(finding(
                    RULE_ID, params.severity,
                    f"{rate_text} ({rate_where.short()}) is not a positive rate; expected "
                    f"{_plain(volume)} mL over {_plain(params.minutes)} min", rate_where,
                ))
            else:
                found.append(Source(
                    "rate", f"{volume_text} at {rate_text} ({rate_where.short()})",
                    volume / order.rate_amount * MINUTES_PER_HOUR, rate_where,
                ))
                bag = order.give_volume
                if order.admixture and bag is not None and volumes and is_one_of(bag.unit, params.volume_units):
                    # An admixture's RXE-3 is the bag's volume: its own rate source, which must agree too.
                    found.append(Source(
                        "rate_give_volume", f"give amount {_plain(bag.value)} {unit_label(bag.unit)} (RXE-3) at "
                        f"{rate_text} ({rate_where.short()})", bag.value / order.rate_amount * MINUTES_PER_HOUR,
                        rate_where,
                    ))
    return found, findings


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.infusion
    found, findings = sources(ctx)
    ctx.computed["infusion_minutes"] = {s.key: str(s.minutes) for s in found}
    low, high = params.minutes - params.tolerance_minutes, params.minutes + params.tolerance_minutes
    expected = f"{_plain(params.minutes)} ± {_plain(params.tolerance_minutes)} min"

    if not found:
        if not any(f.severity == "error" for f in findings):
            timing = ctx.dose.timing
            findings.append(finding(
                RULE_ID, params.severity,
                "no infusion duration: no service duration (TQ1-6), no planned end and start (TQ1-8, TQ1-7), "
                f"and no rate in mL/h with a known volume (RXE-23); expected {expected}",
                timing.duration_location or timing.start_location or _default_location(6),
            ))
        return findings

    for source in found:
        if not low <= source.minutes <= high:
            findings.append(finding(
                RULE_ID, params.severity,
                f"infusion duration {_minutes(source.minutes, low, high)} min ({source.label}) is outside "
                f"{expected} ({_plain(low)}–{_plain(high)} min)",
                source.location, infusion_minutes=str(source.minutes), source=source.key,
            ))

    shortest = min(found, key=lambda s: s.minutes)
    longest = max(found, key=lambda s: s.minutes)
    apart = longest.minutes - shortest.minutes
    if apart > params.max_source_disagreement_minutes:
        # Reported at the source furthest from the protocol duration: the likelier typo.
        worst = max((shortest, longest), key=lambda s: abs(s.minutes - params.minutes))
        findings.append(finding(
            RULE_ID, params.severity,
            f"infusion duration sources disagree: {_minutes(shortest.minutes)} min ({shortest.label}) vs "
            f"{_minutes(longest.minutes)} min ({longest.label}), "
            f"{_minutes(apart, Decimal(0), params.max_source_disagreement_minutes)} min apart "
            f"(at most {_plain(params.max_source_disagreement_minutes)} min allowed)",
            worst.location, apart_minutes=str(apart),
        ))
    return findings


RULE = Rule(
    RULE_ID,
    check,
    (
        "infusion.minutes", "infusion.tolerance_minutes", "infusion.max_source_disagreement_minutes",
        "infusion.rate_units", "infusion.volume_units", "infusion.severity", "units.duration_seconds",
    ),
    __doc__ or "",
)
