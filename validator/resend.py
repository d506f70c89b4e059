"""The same order, sent again (docs/protocol.md, "The same order, sent again").

A new order (ORC-1 `NW`, or empty) with a non-empty ORC-2 whose identity — patient, sender, processing
id (all three in the course history it is judged on) and ORC-2 entity id + namespace — is that of an
accepted order still in the course (neither cancelled nor replaced) is either a resend (every value a
rule reads is equal after normalisation: `OK`, info `go.resent`, not judged or counted again) or a
different order under a taken identity (`go.duplicate_order`, refused).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .history import HistoryEntry
from .model import Coded, Order, Quantity
from .units import unit_key

RESENT_RULE = "go.resent"
DUPLICATE_RULE = "go.duplicate_order"
RESEND_CONTROLS = ("NW", "")  # XO/RP replace an order by its identity: never a resend


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _coded(value: Coded | None, *, unit: bool = False) -> list[str] | None:
    if value is None:
        return None
    norm = unit_key if unit else str.strip
    return [norm(value.code), norm(value.text), value.system.strip().upper()]


def _quantity(value: Quantity | None) -> list[Any] | None:
    if value is None:
        return None
    return [_amount(value.value), _coded(value.unit, unit=True), value.comparator]


def order_content(order: Order) -> dict[str, Any]:
    """Every value a rule reads from the order, normalised: codes with their system, amounts as
    Decimal, units case- and space-insensitive, times as UTC instants."""
    timing = order.timing
    return {
        "drug": _coded(order.drug),
        "amount": _amount(order.amount),
        "amount_raw_unreadable": order.amount_raw.strip() if order.amount is None else "",
        "amount_max": _amount(order.amount_max),
        "amount_max_raw_unreadable": order.amount_max_raw.strip() if order.amount_max is None else "",
        "amount_units": _coded(order.amount_units, unit=True),
        "route": _coded(order.route),
        "start": _instant(timing.start),
        "start_latest": _instant(timing.start_latest),
        "start_has_time": timing.start_has_time,
        "end": _instant(timing.end),
        "end_latest": _instant(timing.end_latest),
        "service_duration": _quantity(timing.service_duration),
        "several_starts": timing.several_starts,
        "priority": timing.priority.strip().upper(),
        "condition": timing.condition.strip(),
        "rate": _amount(order.rate_amount),
        "rate_units": _coded(order.rate_units, unit=True),
        "components": [_quantity(c) for c in order.components],
        "rx_components": [[c.kind.strip().upper(), _coded(c.drug), _amount(c.amount),
                           c.amount_raw.strip() if c.amount is None else "", _coded(c.units, unit=True)]
                          for c in order.rx_components],
        "indication": _coded(order.indication),
        "placer_group": order.placer_group,
        "notes": [n.strip() for n in order.notes],
        "override_notes": [n.text.strip() for n in order.give_notes],
        "verified_by": order.verified_by,
    }


def order_fingerprint(order: Order) -> str:
    """SHA-256 of `order_content`: kept with the accepted order in the course history."""
    return hashlib.sha256(json.dumps(order_content(order), sort_keys=True).encode("utf-8")).hexdigest()


def accepted_with_identity(order: Order, sender: str, course: list[HistoryEntry]) -> HistoryEntry | None:
    """The accepted order of the course with this order's identity, when the order can be a resend."""
    if order.control not in RESEND_CONTROLS or not order.placer_number:
        return None
    return next(
        (h for h in course
         if h.sender == sender and h.placer_number == order.placer_number
         and h.placer_namespace == order.placer_namespace),
        None,
    )
