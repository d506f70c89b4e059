"""Overrides with a reason (docs/protocol.md, "Overrides with a reason").

A protocol may mark rules `overridable` and list who may verify an override
(`override_verifiers`, ORC-11 ids). A GO order overrides such a rule with an NTE that
directly follows its own RXE (or RXO), NTE-3 `RXGATE-OVERRIDE <rule id>: <reason>`, and
an ORC-11 id in `override_verifiers`. Its error findings of that rule then become warnings
of the same rule, prefixed "overridden by <ORC-11 id>: <reason> —". An override never
accepts a premedication above its maximum (such findings carry `above_maximum`) and never
waives `go.orderset`. An override of a rule that is not overridable, without a listed
verifier, or without a reason is itself an error (`go.override`).

Refused (go.cd33 cannot be overridden)::

    NTE|1||RXGATE-OVERRIDE go.cd33: result phoned through by the lab

Accepted when the protocol marks go.dose overridable and lists PHARM17::

    ORC|NW|ORD1001||GRP501|||||20261201083000||PHARM17^SMITH^ANNA
    RXE||1294580^gemtuzumab ozogamicin^RXNORM|16.9||mg
    NTE|1||RXGATE-OVERRIDE go.dose: weight from today's bed scale
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .findings import Finding, error
from .model import Location, Order
from .protocol import Protocol

RULE_ID = "go.override"
PREFIX = "RXGATE-OVERRIDE"
_NOTE = re.compile(r"^\s*RXGATE-OVERRIDE\b\s*(?P<rest>.*)$", re.I | re.S)
_RULE_AND_REASON = re.compile(r"^(?P<rule>[a-z0-9_.]+)\s*:\s*(?P<reason>.*)$", re.I | re.S)


@dataclass(frozen=True)
class Override:
    rule: str
    reason: str
    verified_by: str
    location: Location

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "verified_by": self.verified_by, "reason": self.reason}


def requested(order: Order, protocol: Protocol) -> tuple[list[Override], list[Finding]]:
    """The valid overrides the order asks for, and a `go.override` error for each invalid one."""
    valid: list[Override] = []
    problems: list[Finding] = []
    for note in order.give_notes:
        m = _NOTE.match(note.text)
        if not m:
            continue
        parsed = _RULE_AND_REASON.match(m.group("rest").strip())
        if parsed is None:
            problems.append(error(RULE_ID, f"override note {note.text.strip()!r} does not read "
                                  f"'{PREFIX} <rule id>: <reason>'", note.location))
            continue
        rule, reason = parsed.group("rule").strip(), " ".join(parsed.group("reason").split())
        who = order.verified_by
        orc11 = order.orc_location.model_copy(update={"field": 11}) if order.orc_location else note.location
        if rule not in protocol.overridable:
            marked = ", ".join(protocol.overridable) or "none"
            problems.append(error(RULE_ID, f"override of {rule}: the rule is not overridable under protocol "
                                  f"{protocol.id} (overridable: {marked})", note.location))
        elif not reason:
            problems.append(error(RULE_ID, f"override of {rule} gives no reason after '{PREFIX} {rule}:'",
                                  note.location))
        elif not who:
            problems.append(error(RULE_ID, f"override of {rule} has no verifier: ORC-11 (verified by) is empty",
                                  orc11))
        elif who not in protocol.override_verifiers:
            problems.append(error(RULE_ID, f"override of {rule}: {who!r} (ORC-11) is not one of the protocol's "
                                  "override_verifiers", orc11))
        else:
            valid.append(Override(rule, reason, who, note.location))
    return valid, problems


def apply(findings: list[Finding], overrides: list[Override]) -> list[Finding]:
    """The findings with each overridden rule's errors as warnings (premeds above their maximum stay errors)."""
    by_rule = {o.rule: o for o in overrides}
    out: list[Finding] = []
    for f in findings:
        override = by_rule.get(f.rule)
        if override is None or f.severity != "error" or f.values.get("above_maximum"):
            out.append(f)
            continue
        out.append(f.model_copy(update={
            "severity": "warning",
            "message": f"overridden by {override.verified_by}: {override.reason} — {f.message}",
            "values": {**f.values, "overridden_by": override.verified_by, "override_reason": override.reason},
        }))
    return out
