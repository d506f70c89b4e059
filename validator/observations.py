"""Choosing the observation a rule uses (docs/protocol.md, "How values are chosen").

Only final or corrected results count; an observation dated after the message
time plus the protocol's tolerance is invalid (reported once per message by
`go.observation_time`); for each dose the most recent observation at or before
its planned start is used. Height and weight without OBX-14 count as current
but lose to a dated one; labs without OBX-14 cannot be shown recent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from functools import lru_cache

from .findings import Finding, warning
from .model import Observation, OrderSet
from .protocol import ObservationMatch, Protocol
from .units import factor, unit_label

RULE_OBSERVATION_TIME = "go.observation_time"


@lru_cache(maxsize=512)
def _upper_set(values: tuple[str, ...]) -> frozenset[str]:
    return frozenset(v.upper() for v in values)


@lru_cache(maxsize=512)
def _lower_list(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.lower() for v in values)


def matches(obs: Observation, match: ObservationMatch) -> bool:
    # the protocol's code and text lists, case-folded once per distinct list (cached by value)
    code = obs.code.code.strip().upper()
    if code and code in _upper_set(tuple(match.codes)):
        return True
    text = f"{obs.code.text} {obs.code.code}".lower()
    return any(t in text for t in _lower_list(tuple(match.text_contains)))


def usable_observations(
    order_set: OrderSet, protocol: Protocol, received_at: datetime
) -> tuple[list[Observation], list[Finding]]:
    """Final/corrected observations not dated in the future; a warning for each future-dated one."""
    limit = (order_set.message_time or received_at) + timedelta(
        seconds=float(protocol.observations.future_tolerance_minutes * 60)
    )
    kept: list[Observation] = []
    findings: list[Finding] = []
    for obs in order_set.observations:
        if not obs.final:
            continue
        # Exact instants; an OBX-14 that may name a time past the limit (coarse, or a repeated or
        # skipped wall-clock time) is invalid data: a result that cannot be shown valid is not used.
        if obs.observed_at is not None and (obs.observed_latest or obs.observed_at) > limit:
            findings.append(
                warning(
                    RULE_OBSERVATION_TIME,
                    f"{obs.code.label() or 'observation'} dated {obs.observed_at:%Y-%m-%d %H:%M} is after the "
                    f"message time plus {protocol.observations.future_tolerance_minutes} min; ignored as invalid data",
                    obs.location.model_copy(update={"field": 14}),
                )
            )
            continue
        kept.append(obs)
    return kept, findings


def latest_at(observations: list[Observation], at: datetime | None, *, undated_counts: bool) -> Observation | None:
    """The most recent observation at or before `at`; undated ones only when no dated one qualifies."""
    dated = [o for o in observations if o.observed_at is not None and (at is None or o.observed_at <= at)]
    if dated:
        return max(dated, key=lambda o: o.observed_at)  # type: ignore[arg-type,return-value]
    if undated_counts:
        undated = [o for o in observations if o.observed_at is None]
        if undated:
            return undated[-1]
    return None


@dataclass
class Measure:
    """A body measure in its base unit, or why there is none."""

    value: Decimal | None
    observation: Observation | None
    problem: str = ""


def _body_measure(
    observations: list[Observation], match: ObservationMatch, table: dict[str, Decimal], at: datetime | None, what: str
) -> Measure:
    candidates = [o for o in observations if matches(o, match)]
    obs = latest_at(candidates, at, undated_counts=True)
    if obs is None:
        return Measure(None, None, f"no {what} observation")
    if obs.quantity is None:
        return Measure(None, obs, f"{what} value {obs.raw_value!r} is not a number")
    if obs.quantity.upper is not None:
        return Measure(None, obs, f"{what} value {obs.raw_value!r} is a range, not a measured value")
    unit_factor = factor(obs.units, table)
    if unit_factor is None:
        return Measure(None, obs, f"{what} unit {unit_label(obs.units)!r} is not known")
    return Measure(obs.quantity.value * unit_factor, obs)


def weight_kg(observations: list[Observation], protocol: Protocol, at: datetime | None) -> Measure:
    return _body_measure(observations, protocol.observations.weight, protocol.units.weight_kg, at, "weight")


def height_cm(observations: list[Observation], protocol: Protocol, at: datetime | None) -> Measure:
    return _body_measure(observations, protocol.observations.height, protocol.units.height_cm, at, "height")


def bsa_observed_m2(observations: list[Observation], protocol: Protocol, at: datetime | None) -> Measure:
    return _body_measure(observations, protocol.observations.bsa, protocol.units.bsa_m2, at, "BSA")


def mosteller_m2(height: Decimal, weight: Decimal) -> Decimal:
    """Mosteller BSA √(height cm × weight kg / 3600), unrounded, in Decimal."""
    with localcontext() as ctx:
        ctx.prec = 28
        return (height * weight / Decimal(3600)).sqrt()


def percent_off(value: Decimal, expected: Decimal) -> Decimal:
    """Signed deviation in percent, quantised to 1e-6 (docs/protocol.md, Arithmetic).

    An absurd value (an 80-digit dose) cannot be quantised within the context's
    precision; its unquantised deviation is still far outside any tolerance.
    """
    deviation = (value - expected) / expected * 100
    try:
        return deviation.quantize(Decimal("0.000001"))
    except InvalidOperation:
        return deviation
