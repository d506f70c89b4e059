"""Judging an order set: run the rules on each GO dose, decide each order, cascade to premeds."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from pydantic import BaseModel

from . import overrides
from .admixture import admixture_view
from .drugs import is_protocol_drug, premedication_for
from .findings import Finding, error, info
from .history import Cancellation, HistoryEntry
from .model import Location, Observation, Order, OrderSet
from .observations import usable_observations
from .protocol import Protocol, ProtocolSet
from .resend import DUPLICATE_RULE, RESENT_RULE, accepted_with_identity, order_fingerprint
from .rules import DOSE_RULES
from .rules.base import DoseContext
from .rules.eligibility import age_in_years
from .rules.premedication import belonging_premedications

CANCEL_CONTROLS = {"CA": ("CR", "UC"), "DC": ("DR", "UD")}


class OrderVerdict(BaseModel):
    order: Order
    protocol_order: bool
    control: str  # response ORC-1: OK, UA, CR, DR, UC, UD
    findings: list[Finding] = []
    computed: dict[str, Any] = {}

    @property
    def accepted(self) -> bool:
        return self.control in ("OK", "CR", "DR")


class Judgement(BaseModel):
    order_set: OrderSet
    protocol_id: str
    protocol_version: str
    orders: list[OrderVerdict]
    message_findings: list[Finding] = []
    new_orders: list[HistoryEntry] = []
    cancellations: list[Cancellation] = []

    @property
    def ack_code(self) -> str:
        return "AA" if all(v.accepted for v in self.orders) else "AE"

    @property
    def findings(self) -> list[Finding]:
        """Every finding of the message, order-level ones included, in order."""
        out = list(self.message_findings)
        for verdict in self.orders:
            out.extend(verdict.findings)
        return out


def judge(
    order_set: OrderSet,
    history: list[HistoryEntry],
    protocol: Protocol | ProtocolSet,
    *,
    tz: tzinfo,
    received_at: datetime,
) -> Judgement:
    """Decide every order of the message. Pure: the caller persists `new_orders` and `cancellations`.

    With a `ProtocolSet`, each GO order is judged under the protocol it names (else the default).
    """
    protocols = protocol if isinstance(protocol, ProtocolSet) else ProtocolSet(protocol)
    protocol = protocols.default
    order_set = _with_admixtures(order_set, protocols)
    verdicts = [
        OrderVerdict(
            order=o, protocol_order=any(is_protocol_drug(o.drug, p) for p in protocols.protocols), control="OK"
        )
        for o in order_set.orders
    ]
    patient_key = order_set.course_key
    cancellations: list[Cancellation] = []

    # Order control codes first: cancellations and unknown codes are not judged as orders.
    to_judge: list[OrderVerdict] = []
    for verdict in verdicts:
        control = verdict.order.control
        if control in CANCEL_CONTROLS:
            cancellation = _cancel(verdict, order_set, history, received_at)
            if cancellation is not None:
                cancellations.append(cancellation)
        elif verdict.order.is_new and not verdict.order.has_give:
            verdict.control = "UA"
            verdict.findings.append(_at(error(
                "hl7.structure",
                "order group has an ORC but no RXE or RXO: there is no drug order to validate",
                verdict.order.orc_location,
            ), verdict))
        elif not verdict.order.is_new:
            verdict.control = "UA"
            verdict.findings.append(
                _at(error(
                    "hl7.order_control",
                    f"order control {control!r} is not processed (NW, XO, RP new orders; CA, DC cancellations)",
                    verdict.order.orc_location,
                ), verdict)
            )
        else:
            to_judge.append(verdict)

    # Replacements (XO/RP) take the place of the accepted order they name, and this message's
    # cancellations of not-yet-started doses apply before its new orders are judged (a message
    # may cancel a day-1 dose and order its new day 1 together).
    # A GO dose that has already started stays counted whatever replaces it (a partly given dose counts).
    requested_at = order_set.message_time or received_at
    replaced = {(v.order.placer_number, v.order.placer_namespace) for v in to_judge if v.order.control in ("XO", "RP")}
    replaced |= {(c.placer_number, c.placer_namespace) for c in cancellations if c.leaves_history}
    course = [
        h for h in history
        if not (
            h.sender == order_set.sender
            and (h.placer_number, h.placer_namespace) in replaced
            and not _started(h, requested_at)
        )
    ]

    # The same order sent again (validator/resend.py): answered without judging, never counted twice.
    to_judge = [v for v in to_judge if not _resent_or_duplicate(v, order_set, course)]

    # The protocol of each GO order governs everything about it, its observation validity window included.
    dose_protocols = {v.order.index: p for v in to_judge if v.protocol_order and (p := protocols.for_order(v.order))}
    observations_by_protocol, message_findings = _usable_observations(
        order_set, [protocol, *dose_protocols.values()], received_at)
    go_doses = sorted(
        (v for v in to_judge if v.protocol_order),
        key=lambda v: (v.order.timing.start is None, v.order.timing.start or datetime.min, v.order.index),
    )
    accepted_now: list[HistoryEntry] = []
    for verdict in go_doses:
        order = verdict.order
        if not patient_key:
            verdict.findings.append(_at(error(
                "go.patient",
                "the message has no patient identifier (PID-3): the course history cannot be checked",
                Location(segment="PID", occurrence=1, field=3),
            ), verdict))
        dose_protocol = protocols.for_order(order)
        if dose_protocol is None:
            verdict.control = "UA"
            verdict.findings.append(_at(error(
                "go.protocol",
                f"the order names protocol {protocols.requested_code(order)!r} ({protocols.field}), which this "
                f"service does not know (known: {', '.join(sorted(p.id for p in protocols.protocols))})",
                _selector_location(order, protocols.field),
            ), verdict))
            continue
        ctx = DoseContext(
            order_set=order_set,
            dose=order,
            protocol=dose_protocol,
            history=course + accepted_now,
            observations=observations_by_protocol[dose_protocol.id],
            tz=tz,
            received_at=received_at,
            age_years=age_in_years(order_set.patient.birth_date, order.timing.start, tz),
            dose_protocols=dose_protocols,
            known_protocols={p.id: p for p in protocols.protocols},
        )
        found_here: list[Finding] = []
        for rule in DOSE_RULES:
            found_here.extend(rule.check(ctx))
        # Overrides with a reason: valid ones turn their rule's errors into warnings; invalid ones refuse.
        valid_overrides, override_problems = overrides.requested(order, dose_protocol)
        for found in overrides.apply(found_here, valid_overrides) + override_problems:
            verdict.findings.append(_at(found, verdict))
        if valid_overrides:
            ctx.computed["overrides"] = [o.to_json() for o in valid_overrides]
        verdict.computed = {"protocol_id": dose_protocol.id, "protocol_version": dose_protocol.version, **ctx.computed}
        if any(f.severity == "error" for f in verdict.findings):
            verdict.control = "UA"
        else:
            accepted_now.append(_history_entry(order, order_set, dose_protocol, protocol_order=True,
                                               accepted_at=requested_at))

    # Premedications prepare one GO dose; refusing the dose refuses them too.
    # A GO order refused before judging (unprocessed ORC-1, no RXE) is a refused GO dose too.
    refused_early = [v for v in verdicts if v.protocol_order and v.control == "UA" and v not in go_doses]
    refused_doses = {v.order.index for v in go_doses + refused_early if v.control == "UA"}
    belongs = belonging_premedications(order_set, [v.order for v in go_doses + refused_early], protocol,
                                       dose_protocols)
    for verdict in to_judge:
        if verdict.protocol_order:
            continue
        dose_index = belongs.get(verdict.order.index)
        if dose_index is not None and dose_index in refused_doses:
            verdict.control = "UA"
            verdict.findings.append(_at(error(
                "go.orderset",
                f"refused because the GO order it prepares for ({_placer(order_set.orders[dose_index])}) was refused",
                verdict.order.orc_location,
            ), verdict))
        else:
            verdict.findings.append(_at(info(
                "go.scope",
                f"{verdict.order.drug_label() or 'order'} is not a GO order: accepted without protocol checks",
                verdict.order.drug_location,
            ), verdict))
    # An accepted replacement (XO/RP) takes its predecessor out of the course history.
    for verdict in to_judge:
        key = (verdict.order.placer_number, verdict.order.placer_namespace)
        if verdict.order.control in ("XO", "RP") and verdict.control == "OK" and patient_key and any(
            h.sender == order_set.sender and (h.placer_number, h.placer_namespace) == key
            and not _started(h, requested_at) for h in history
        ):
            cancellations.append(Cancellation(
                patient_key=patient_key, sender=order_set.sender, placer_number=key[0], placer_namespace=key[1],
                control=verdict.order.control, leaves_history=True,
                requested_at=order_set.message_time or received_at,
            ))
    new_orders = list(accepted_now)
    if patient_key:
        new_orders += [
            _history_entry(v.order, order_set, protocol, protocol_order=False, accepted_at=requested_at)
            for v in to_judge if not v.protocol_order and v.control == "OK"
        ]
    else:
        new_orders = []
    return Judgement(
        order_set=order_set,
        protocol_id=protocol.id,
        protocol_version=protocol.version,
        orders=verdicts,
        message_findings=message_findings,
        new_orders=new_orders,
        cancellations=cancellations,
    )


def _with_admixtures(order_set: OrderSet, protocols: ProtocolSet) -> OrderSet:
    """The order set with each admixture (GO, or a premedication, as RXC components) as the drug it holds."""
    known = protocols.protocols
    orders: list[Order] = []
    changed = False
    for order in order_set.orders:
        view = admixture_view(order, lambda drug: any(is_protocol_drug(drug, p) for p in known),
                              protocols.default.units.mass_mg)
        if view is None:
            view = admixture_view(order, lambda drug: any(premedication_for(drug, p) is not None for p in known),
                                  protocols.default.units.mass_mg)
        orders.append(view or order)
        changed = changed or view is not None
    return order_set.model_copy(update={"orders": orders}) if changed else order_set


def _usable_observations(
    order_set: OrderSet, used: list[Protocol], received_at: datetime
) -> tuple[dict[str, list[Observation]], list[Finding]]:
    """The usable observations under each protocol in use, and their `go.observation_time` warnings
    (once per observation: the first protocol's message, in the order given)."""
    by_protocol: dict[str, list[Observation]] = {}
    findings: list[Finding] = []
    reported: set[str] = set()
    for each in used:
        if each.id in by_protocol:
            continue
        by_protocol[each.id], found = usable_observations(order_set, each, received_at)
        for f in found:
            where = f.location.err2() if f.location else ""
            if where not in reported:
                reported.add(where)
                findings.append(f)
    return by_protocol, findings


def _selector_location(order: Order, field: str) -> Location | None:
    """Where the order named its protocol: RXE-27, ORC-4, or the order's ORC for an NTE tag."""
    if field == "RXE-27" and order.drug_location is not None:
        return order.drug_location.model_copy(update={"field": 27})
    if field == "ORC-4" and order.orc_location is not None:
        return order.orc_location.model_copy(update={"field": 4})
    return order.orc_location


def _started(entry: HistoryEntry, at: datetime) -> bool:
    """A GO dose whose planned start is at or before `at` has started (docs/protocol.md, Cancellations)."""
    return entry.protocol_order and entry.start is not None and entry.start <= at


def _at(found: Finding, verdict: OrderVerdict) -> Finding:
    return found.model_copy(update={"order_index": verdict.order.index})


def _placer(order: Order) -> str:
    return order.placer_number or f"order {order.index + 1}"


def _resent_or_duplicate(verdict: OrderVerdict, order_set: OrderSet, course: list[HistoryEntry]) -> bool:
    """Answer an order whose identity is taken by an accepted order: `go.resent` or `go.duplicate_order`."""
    order = verdict.order
    accepted = accepted_with_identity(order, order_set.sender, course)
    if accepted is None:
        return False
    when = f"{accepted.accepted_at:%Y-%m-%d}" if accepted.accepted_at else "an earlier date"
    location = order.orc_location.model_copy(update={"field": 2}) if order.orc_location else None
    if accepted.fingerprint and accepted.fingerprint == order_fingerprint(order):
        verdict.control = "OK"
        verdict.findings.append(_at(info(
            RESENT_RULE,
            f"order {order.placer_number} was accepted in message {accepted.control_id} on {when}: "
            "the same order sent again, not judged or counted again",
            location, accepted_control_id=accepted.control_id,
        ), verdict))
    else:
        verdict.control = "UA"
        verdict.findings.append(_at(error(
            DUPLICATE_RULE,
            f"order {order.placer_number} was accepted on {when} with other content; change it with XO or cancel it",
            location, accepted_control_id=accepted.control_id,
        ), verdict))
    return True


def _history_entry(order: Order, order_set: OrderSet, protocol: Protocol, *, protocol_order: bool,
                   accepted_at: datetime) -> HistoryEntry:
    return HistoryEntry(
        patient_key=order_set.course_key,
        sender=order_set.sender,
        placer_number=order.placer_number,
        placer_namespace=order.placer_namespace,
        control_id=order_set.control_id,
        drug=order.drug,
        protocol_order=protocol_order,
        protocol_id=protocol.id if protocol_order else "",
        start=order.timing.start,
        amount=order.amount,
        amount_max=order.amount_max,
        amount_units=order.amount_units.code or order.amount_units.text,
        route=(order.route.code or order.route.text) if order.route else "",
        as_needed=order.timing.as_needed,
        accepted_at=accepted_at,
        fingerprint=order_fingerprint(order),
    )


def _cancel(
    verdict: OrderVerdict, order_set: OrderSet, history: list[HistoryEntry], received_at: datetime
) -> Cancellation | None:
    """CA/DC: matched on patient, sender and ORC-2 of an accepted order (docs/protocol.md, Cancellations)."""
    order = verdict.order
    done, unable = CANCEL_CONTROLS[order.control]
    match = next(
        (
            h for h in history
            if h.sender == order_set.sender
            and h.placer_number == order.placer_number
            and h.placer_namespace == order.placer_namespace
            and order.placer_number
        ),
        None,
    )
    if match is None or not order_set.patient.key:
        verdict.control = unable
        verdict.findings.append(_at(error(
            "go.cancel",
            f"cannot {'cancel' if order.control == 'CA' else 'discontinue'} order {order.placer_key.rstrip('^') or '(no ORC-2)'}: "
            "no accepted order with this placer number from this sender for this patient",
            order.orc_location.model_copy(update={"field": 2}) if order.orc_location else None,
        ), verdict))
        return None
    verdict.control = done
    requested_at = order_set.message_time or received_at
    started = _started(match, requested_at)
    if started:
        verdict.findings.append(_at(info(
            "go.cancel",
            f"GO dose {match.placer_number} started {match.start:%Y-%m-%d %H:%M} before this request: "
            "it stays in the course history (a partly given dose counts)",
            order.orc_location,
        ), verdict))
    return Cancellation(
        patient_key=order_set.course_key,
        sender=order_set.sender,
        placer_number=order.placer_number,
        placer_namespace=order.placer_namespace,
        control=order.control,
        leaves_history=not started,
        requested_at=requested_at,
    )
