"""go.route — GO is given intravenously (RXR-1, HL7 table 0162).

The route matches when its code is in `route.codes` or its text contains one of
`route.text_contains` (senders are inconsistent). An order with no RXR fails.

Refused::

    RXR|PO^Oral^HL70162

Accepted::

    RXR|IV^Intravenous^HL70162
"""

from __future__ import annotations

from ..findings import Finding, finding
from ..model import Coded, Location
from .base import DoseContext, Rule

RULE_ID = "go.route"


def route_allowed(route: Coded, codes: list[str], text_contains: list[str]) -> bool:
    code = route.code.strip().upper()
    if code and code in {c.upper() for c in codes}:
        return True
    text = f"{route.text} {route.more_text}".lower()
    return any(t.lower() in text for t in text_contains)


def check(ctx: DoseContext) -> list[Finding]:
    params = ctx.protocol.route
    expected = "/".join(params.codes)
    route = ctx.dose.route
    if route is None or not (route.code or route.text):
        where = ctx.dose.route_location or Location(segment="RXR", occurrence=1, field=1)
        return [finding(RULE_ID, params.severity, f"no route (RXR-1) on the GO order; expected {expected}", where)]
    if not route_allowed(route, params.codes, params.text_contains):
        return [finding(RULE_ID, params.severity,
                        f"route {route.label()!r} is not allowed for GO; expected {expected}", ctx.dose.route_location)]
    return []




RULE = Rule(RULE_ID, check, ("route.codes", "route.text_contains"), __doc__ or "")
