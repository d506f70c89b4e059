"""Admixtures: a drug sent as RXC components of a base solution (docs/protocol.md, "Admixtures").

An order whose give code (RXE-2) is a base solution, but whose RXC components (RXC-1 `A` additive
or `B` base, HL7 table 0166) include GO, is a GO order: it is judged as the GO it holds. The amount
and units are the sum of the GO components' RXC-3 / RXC-4; RXE-3/RXE-4 are the bag's volume, never
the dose (RXE-3 in mL stays a volume source for `go.infusion`). A premedication sent as an RXC
component is recognised the same way. The judged view keeps the order's position, placer number
and echoed segments, so the answer is about the order as sent.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from .model import Coded, Component, Order, Quantity
from .units import factor

ADMIXTURE_KINDS = ("A", "B")  # HL7 table 0166: additive, base


def admixture_view(order: Order, is_drug: Callable[[Coded], bool], mass_mg: dict[str, Decimal]) -> Order | None:
    """The order as the drug its RXC components hold (None when the give code is the drug itself, or no
    component is). Several components of the drug are summed in mg; one is kept as sent."""
    if is_drug(order.drug):
        return None
    parts = [c for c in order.rx_components if c.kind in ADMIXTURE_KINDS and is_drug(c.drug)]
    if not parts:
        return None
    amount, amount_raw, units = _total(parts, mass_mg)
    volume = Quantity(value=order.amount, unit=order.amount_units) if order.amount is not None else None
    return order.model_copy(update={
        "drug": parts[0].drug,
        "drug_location": parts[0].location.model_copy(update={"field": 2}) if parts[0].location else None,
        "amount": amount, "amount_raw": amount_raw, "amount_units": units,
        "amount_max": None, "amount_max_raw": "",
        "amount_location": parts[0].location,
        "give_volume": volume,
        "admixture": True,
    })


def _total(parts: list[Component], mass_mg: dict[str, Decimal]) -> tuple[Decimal | None, str, Coded]:
    """(amount, as sent, units) of the drug's components: one as sent; several in mg (None when one
    has no readable amount or unit, which the dose rule then refuses)."""
    if len(parts) == 1:
        return parts[0].amount, parts[0].amount_raw, parts[0].units
    raw = " + ".join(f"{p.amount_raw} {p.units.code or p.units.text}".strip() for p in parts)
    total = Decimal(0)
    for part in parts:
        unit_factor = factor(part.units, mass_mg)
        if part.amount is None or unit_factor is None:
            return None, raw, part.units if part.amount is not None else Coded(code="mg")
        total += part.amount * unit_factor
    return total, raw, Coded(code="mg", text="milligram")
