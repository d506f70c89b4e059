"""go.route — GO is given intravenously (RXR-1, HL7 table 0162).

The route is read by code first: RXR-1's code counts when its coding system
(RXR-1.3) is table 0162 (`code_systems.route_table`) or empty; a code of another
system counts only through the protocol's `route_codes` map (SNOMED 47625008 →
IV), else the route is unreadable (refused). The text counts only when the code
is empty (`route.text_contains`): `PO^Intravenous` is PO, refused. An order with
no RXR fails.

Refused::

    RXR|PO^Oral^HL70162

Accepted::

    RXR|IV^Intravenous^HL70162
"""

from __future__ import annotations

from ..findings import Finding, finding
from ..model import Coded, Location
from ..protocol import Protocol
from .base import DoseContext, Rule

RULE_ID = "go.route"


def read_route(route: Coded, protocol: Protocol, text_routes: dict[str, str]) -> tuple[str | None, str]:
    """(table 0162 code, "") that RXR-1 stands for, or (None, why it cannot be read) — by code first.

    A code counts when its coding system (RXR-1.3) is table 0162 (`code_systems.route_table`) or
    empty; a code of another system only through `route_codes`. The text counts only when the
    code is empty, through `text_routes` (fragment → code): `PO^Intravenous` is PO.
    """
    code = route.code.strip().upper()
    system = route.system.strip().upper()
    if code:
        if not system or system in {s.upper() for s in protocol.code_systems.route_table}:
            return code, ""
        for entry in protocol.route_codes:
            if entry.code.strip().upper() == code and system in {s.upper() for s in entry.systems}:
                return entry.route.strip().upper(), ""
        return None, (f"route code {route.code.strip()!r} of coding system {route.system.strip()!r} is not in the "
                      "protocol's route map (route_codes), so the route cannot be read")
    text = f"{route.text} {route.more_text}".lower()
    for fragment, mapped in text_routes.items():
        if fragment.lower() in text:
            return mapped.strip().upper(), ""
    return None, f"route {route.label()!r} is not a known route"


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.route
    expected = "/".join(params.codes)
    route = ctx.dose.route
    if route is None or not (route.code or route.text):
        where = ctx.dose.route_location or Location(segment="RXR", occurrence=1, field=1)
        return [finding(RULE_ID, params.severity, f"no route (RXR-1) on the GO order; expected {expected}", where)]
    code, problem = read_route(route, ctx.protocol, {t: params.codes[0] for t in params.text_contains})
    if code is None:
        return [finding(RULE_ID, params.severity, f"{problem}; expected {expected} for GO", ctx.dose.route_location)]
    if code not in {c.upper() for c in params.codes}:
        return [finding(RULE_ID, params.severity,
                        f"route {route.label()!r} is not allowed for GO; expected {expected}",
                        ctx.dose.route_location)]
    return []


RULE = Rule(RULE_ID, check, ("route.codes", "route.text_contains", "route_codes", "code_systems.route_table"),
            __doc__ or "")
